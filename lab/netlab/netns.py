"""Small primitives over Linux network namespaces: run `ip`, run a command inside one, open a socket inside
one.

A socket belongs to the namespace it was created in for its whole life, so the lab opens sockets in a
namespace from a short-lived thread that enters it with setns(2) (a per-thread property): no subprocess per
probe, and the caller's own thread never changes namespace.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000


class NetlabError(RuntimeError):
    """The network lab could not build or change something (the message says which command and why)."""


def run(
    argv: Sequence[str], *, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a setup command (ip, nft, sysctl, ...); NetlabError with its stderr when it fails and `check`."""
    proc = subprocess.run(  # noqa: S603 - fixed tools, argv, no shell
        list(argv), input=input_text, capture_output=True, text=True, check=False, timeout=30
    )
    if check and proc.returncode != 0:
        raise NetlabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def in_netns(namespace: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside `namespace`."""
    return ["ip", "netns", "exec", namespace, *argv]


def namespaces() -> list[str]:
    """Names of the existing named network namespaces."""
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pids_in(namespace: str) -> list[int]:
    """Processes living in a named namespace (to end leftovers of a killed lab)."""
    out = run(["ip", "netns", "pids", namespace], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def socket_in(namespace: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that lives in `namespace` (its addresses, routes and firewall)."""
    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def enter_and_open() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the calling thread
            errors.append(exc)

    thread = threading.Thread(target=enter_and_open, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def missing_tools(tools: Sequence[str]) -> list[str]:
    """Which of these commands are not installed."""
    return [t for t in tools if shutil.which(t) is None and not Path(t).exists()]


def can_run() -> str | None:
    """Why the network lab cannot run here (None when it can): it needs root and `ip netns`."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, nftables, sshd)"
    if shutil.which("ip") is None:
        return "the network lab needs iproute2's `ip` command"
    probe = run(["ip", "netns", "list"], check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None
