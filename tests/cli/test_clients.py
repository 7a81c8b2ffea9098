"""Which client runs, per platform, with which arguments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jitcli.clients import check_host, check_login, rdp_launch, split_ssh_args, ssh_launch
from jitcli.errors import ClientMissing, UnsafeTarget


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


def test_ssh_ends_options_with_a_double_dash_before_the_destination(bin_dir: Path) -> None:
    install(bin_dir, "ssh")
    assert ssh_launch("198.51.100.10", 22, "azureuser").argv == ("ssh", "--", "azureuser@198.51.100.10")
    assert ssh_launch("198.51.100.10", 22, None).argv == ("ssh", "--", "198.51.100.10")
    launch = ssh_launch("127.0.0.1", 2222, "root", ["-A", "uptime"])
    assert launch.argv == ("ssh", "-p", "2222", "-A", "--", "root@127.0.0.1", "uptime")


@pytest.mark.parametrize(
    ("extra", "options", "command"),
    [
        ([], [], []),
        (["uptime"], [], ["uptime"]),
        (["-L", "8080:localhost:80"], ["-L", "8080:localhost:80"], []),
        (["-oBatchMode=yes", "-At", "ls", "-l"], ["-oBatchMode=yes", "-At"], ["ls", "-l"]),
        (["-vp", "2200", "-J", "jump", "top"], ["-vp", "2200", "-J", "jump"], ["top"]),
        (["-A", "--", "-weird-command"], ["-A"], ["-weird-command"]),
        (["-", "x"], [], ["-", "x"]),
    ],
)
def test_extra_ssh_arguments_split_into_options_and_a_remote_command(
    extra: list[str], options: list[str], command: list[str]
) -> None:
    assert split_ssh_args(extra) == (options, command)


@pytest.mark.parametrize("user", ["azureuser", "labadmin", "first.last", "svc_jit", "user@corp"])
def test_ordinary_login_names_pass(user: str) -> None:
    assert check_login(user, "the broker") == user


@pytest.mark.parametrize("user", ["-oProxyCommand=x", "-l", "a b", "tab\tname", "new\nline", "nul\x00", ""])
def test_login_names_that_could_be_options_or_hold_spaces_are_refused(user: str) -> None:
    with pytest.raises(UnsafeTarget, match="the broker"):
        check_login(user, "the broker")


@pytest.mark.parametrize(
    "host", ["198.51.100.10", "2001:db8::4", "web-01.westeurope.cloudapp.azure.com", "vm_1"]
)
def test_ip_addresses_and_dns_names_pass(host: str) -> None:
    assert check_host(host, "the broker") == host


@pytest.mark.parametrize(
    "host", ["-oProxyCommand=x", "a b", "host\n", "../../etc/x", "[::1]", "user@host", ""]
)
def test_hosts_that_are_not_addresses_or_names_are_refused(host: str) -> None:
    with pytest.raises(UnsafeTarget):
        check_host(host, "the broker")


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
