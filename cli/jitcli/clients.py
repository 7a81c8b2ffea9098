"""Which program runs a session, per platform: `ssh`; for RDP `mstsc`, a `.rdp` file + `open`, or FreeRDP."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jitcli.errors import ClientMissing

#: FreeRDP's X11, Wayland and SDL clients, newest first (FreeRDP 3 suffixes its binaries with 3).
FREERDP_CLIENTS = ("xfreerdp3", "xfreerdp", "wlfreerdp3", "wlfreerdp", "sdl-freerdp3", "sdl-freerdp")


@dataclass(frozen=True)
class Launch:
    """A client to start: its argv; `detached` when the session outlives the process (macOS `open`)."""

    argv: tuple[str, ...]
    detached: bool = False
    cleanup: Path | None = None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ssh_launch(host: str, port: int, user: str | None, extra: Sequence[str] = ()) -> Launch:
    """`ssh [-p PORT] USER@HOST extra…`; extra arguments go after the destination (options or a command)."""
    exe = shutil.which("ssh")
    if exe is None:
        raise ClientMissing(
            "no ssh client found on PATH",
            hint="install OpenSSH (Linux: apt install openssh-client; Windows: Settings > Optional features)",
        )
    argv = ["ssh"]
    if port != 22:
        argv += ["-p", str(port)]
    argv.append(f"{user}@{host}" if user else host)
    argv += list(extra)
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
