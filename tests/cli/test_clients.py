"""Which client runs, per platform, with which arguments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jitcli.clients import rdp_launch, ssh_launch
from jitcli.errors import ClientMissing


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PATH folder the test fills with stand-in executables."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


def install(folder: Path, name: str) -> None:
    exe = folder / name
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)


def test_ssh_puts_the_port_before_and_extra_arguments_after_the_destination(bin_dir: Path) -> None:
    install(bin_dir, "ssh")
    assert ssh_launch("198.51.100.10", 22, "azureuser").argv == ("ssh", "azureuser@198.51.100.10")
    launch = ssh_launch("127.0.0.1", 2222, "root", ["-A", "uptime"])
    assert launch.argv == ("ssh", "-p", "2222", "root@127.0.0.1", "-A", "uptime")


def test_missing_ssh_names_what_to_install(bin_dir: Path) -> None:
    with pytest.raises(ClientMissing) as caught:
        ssh_launch("198.51.100.10", 22, "azureuser")
    assert caught.value.hint is not None
    assert "openssh" in caught.value.hint.lower()


def test_linux_rdp_prefers_freerdp3_and_brackets_ipv6(bin_dir: Path) -> None:
    install(bin_dir, "xfreerdp")
    assert rdp_launch("198.51.100.11", 3389, "labadmin", platform="linux").argv == (
        "xfreerdp",
        "/v:198.51.100.11:3389",
        "/u:labadmin",
    )
    install(bin_dir, "xfreerdp3")
    assert rdp_launch("2001:db8::4", 3389, None, platform="linux").argv == (
        "xfreerdp3",
        "/v:[2001:db8::4]:3389",
    )


def test_linux_without_freerdp_names_what_to_install(bin_dir: Path) -> None:
    with pytest.raises(ClientMissing) as caught:
        rdp_launch("198.51.100.11", 3389, "labadmin", platform="linux")
    assert caught.value.hint is not None
    assert "freerdp" in caught.value.hint.lower()
    assert "wlfreerdp" in caught.value.message


def test_windows_uses_mstsc() -> None:
    assert rdp_launch("198.51.100.11", 3390, "labadmin", platform="win32").argv == (
        "mstsc",
        "/v:198.51.100.11:3390",
    )


def test_macos_opens_a_generated_rdp_file() -> None:
    launch = rdp_launch("198.51.100.11", 3389, "labadmin", platform="darwin")
    try:
        assert launch.detached
        assert launch.argv[0] == "open"
        assert launch.cleanup is not None
        assert launch.argv[1] == str(launch.cleanup)
        text = launch.cleanup.read_text()
        assert "full address:s:198.51.100.11:3389" in text
        assert "username:s:labadmin" in text
    finally:
        if launch.cleanup:
            launch.cleanup.unlink()
            os.rmdir(launch.cleanup.parent)
