"""Which program runs a session, per platform: `ssh`; for RDP `mstsc`, a `.rdp` file + `open`, or FreeRDP."""

from __future__ import annotations

import ipaddress
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jitcli.errors import ClientMissing, UnsafeTarget

#: FreeRDP's X11, Wayland and SDL clients, newest first (FreeRDP 3 suffixes its binaries with 3).
FREERDP_CLIENTS = ("xfreerdp3", "xfreerdp", "wlfreerdp3", "wlfreerdp", "sdl-freerdp3", "sdl-freerdp")
#: OpenSSH's option letters (ssh.c's getopt string): a letter followed by `:` takes an argument.
SSH_OPTIONS = "1246ab:c:e:fgi:kl:m:no:p:qstvxAB:CD:E:F:GI:J:KL:MNO:P:Q:R:S:TVw:W:XYy"
_DNS_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")


def check_login(user: str, origin: str) -> str:
    """A login name safe to hand to a client: not an option (`-oProxyCommand=…`), no whitespace or control
    characters (which would also split a `.rdp` file's lines); UnsafeTarget naming `origin` otherwise."""
    if not user or user.startswith("-") or any(ch.isspace() or not ch.isprintable() for ch in user):
        raise UnsafeTarget(
            f"refusing the login name {user!r} from {origin}: it could pass for a client option or hold "
            "whitespace or control characters",
            hint="pass the user to log in as with -l USER (and tell the broker's admin if it came from it)",
        )
    return user


def check_host(host: str, origin: str) -> str:
    """A host safe to hand to a client: an IP address or a DNS name (letters, digits, `-`, `.`, `_`, not
    starting with `-`); UnsafeTarget naming `origin` otherwise."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _DNS_NAME.fullmatch(host):
            raise UnsafeTarget(
                f"refusing the host {host!r} from {origin}: not an IP address or a DNS name",
                hint="pass the address to connect to with --connect-host",
            ) from None
    return host


def split_ssh_args(extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """Extra ssh arguments as (options, command): options go before the destination, the remote command after
    it. A `--` among them ends the options (it is dropped: `jit` puts its own before the destination)."""
    index = 0
    while index < len(extra):
        arg = extra[index]
        if arg == "--":
            return list(extra[:index]), list(extra[index + 1 :])
        if not arg.startswith("-") or arg == "-":
            break
        for pos, letter in enumerate(arg[1:], start=1):
            spot = SSH_OPTIONS.find(letter)
            if spot >= 0 and SSH_OPTIONS[spot + 1 : spot + 2] == ":":
                if pos == len(arg) - 1:
                    index += 1  # the option's value is the next argument
                break
        index += 1
    return list(extra[:index]), list(extra[index:])


@dataclass(frozen=True)
class Launch:
    """A client to start: its argv; `detached` when the session outlives the process (macOS `open`)."""

    argv: tuple[str, ...]
    detached: bool = False
    cleanup: Path | None = None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ssh_launch(host: str, port: int, user: str | None, extra: Sequence[str] = ()) -> Launch:
    """`ssh [-p PORT] [options…] -- USER@HOST [command…]`: the `--` keeps a destination from ever being read
    as an option; the extra arguments' options go before it, a remote command after the destination."""
    exe = shutil.which("ssh")
    if exe is None:
        raise ClientMissing(
            "no ssh client found on PATH",
            hint="install OpenSSH (Linux: apt install openssh-client; Windows: Settings > Optional features)",
        )
    options, command = split_ssh_args(extra)
    argv = ["ssh"]
    if port != 22:
        argv += ["-p", str(port)]
    argv += [*options, "--", f"{user}@{host}" if user else host, *command]
    return Launch(tuple(argv))


def rdp_launch(
    host: str, port: int, user: str | None, extra: Sequence[str] = (), *, platform: str | None = None
) -> Launch:
    """The platform's RDP client: `mstsc /v:` on Windows, a `.rdp` file opened on macOS, FreeRDP on Linux."""
    platform = platform or sys.platform
    target = _host_port(host, port)
    if platform == "win32":
        return Launch(("mstsc", f"/v:{target}", *extra))
    if platform == "darwin":
        lines = [f"full address:s:{target}", "prompt for credentials:i:1"]
        if user:
            lines.append(f"username:s:{user}")
        folder = Path(tempfile.mkdtemp(prefix="jit-"))
        rdp_file = folder / f"{host.replace(':', '_')}.rdp"
        rdp_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return Launch(("open", str(rdp_file), *extra), detached=True, cleanup=rdp_file)
    for name in FREERDP_CLIENTS:
        if shutil.which(name):
            argv = [name, f"/v:{target}"]
            if user:
                argv.append(f"/u:{user}")
            return Launch((*argv, *extra))
    raise ClientMissing(
        "no RDP client found on PATH (looked for " + ", ".join(FREERDP_CLIENTS) + ")",
        hint="install FreeRDP: apt install freerdp3-x11 (or freerdp2-x11), dnf install freerdp",
    )
