"""The broker as it runs locally: the real FastAPI app under uvicorn, plus the sweeper on its schedule.

Both run as subprocesses with exactly the settings given (the names of `local.settings.sample.json`), so the
broker's code cannot tell the lab from Azure. `python -m lab.broker sweep --interval N` is the sweeper loop.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_READY_TIMEOUT_S = 60.0


class BrokerError(RuntimeError):
    """The broker would not start; the message carries the end of its log."""


class BrokerProcess:
    """`BrokerProcess(settings).start()` → `.url`; `.stop()`; a context manager.

    `sweep_interval` (seconds) runs `run_sweep()` in a second process on that period; None runs no sweeper.
    `tls` (certificate file, key file) serves HTTPS, as Azure Functions does: the CLI sends bearer tokens only
    over https:// unless the broker is on loopback.
    """

    def __init__(
        self,
        settings: Mapping[str, str],
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        sweep_interval: float | None = 60.0,
        log_dir: Path | str | None = None,
        tls: tuple[Path | str, Path | str] | None = None,
    ) -> None:
        self.settings = dict(settings)
        self.tls = tls
        self.host = host
        self.port = port
        self.sweep_interval = sweep_interval
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="jit-broker-"))
        self._api: subprocess.Popen[bytes] | None = None
        self._sweeper: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the running broker (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def api_log(self) -> Path:
        """uvicorn's output (the broker's logs)."""
        return self.log_dir / "broker.log"

    @property
    def sweeper_log(self) -> Path:
        """The sweeper loop's output."""
        return self.log_dir / "sweeper.log"

    def start(self) -> BrokerProcess:
        """Validate the settings, start uvicorn (and the sweeper), and wait until `/api/health` answers."""
        if self._api is not None:
            return self
        from jitbroker.config import Settings

        Settings.from_env(self.settings)  # a ConfigError here reads better than a dead subprocess
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port(self.host)
        command = [sys.executable, "-m", "uvicorn", "jitbroker.runtime:app", "--host", self.host]
        command += ["--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        if self.tls is not None:
            command += ["--ssl-certfile", str(self.tls[0]), "--ssl-keyfile", str(self.tls[1])]
        self._api = self._spawn(command, self.api_log)
        self._wait_ready()
        if self.sweep_interval is not None:
            loop = [sys.executable, "-m", "lab.broker", "sweep", "--interval", str(self.sweep_interval)]
            self._sweeper = self._spawn(loop, self.sweeper_log)
        return self

    def stop(self) -> None:
        """Stop the sweeper and the API (each its own process group)."""
        for name in ("_sweeper", "_api"):
            process = getattr(self, name)
            setattr(self, name, None)
            if process is not None:
                _terminate(process)

    def kill(self) -> None:
        """SIGKILL the sweeper and the API, as a crash would: nothing in them cleans up (crash tests)."""
        for name in ("_sweeper", "_api"):
            process = getattr(self, name)
            setattr(self, name, None)
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings, "PYTHONUNBUFFERED": "1"}
        with log_path.open("ab") as log:
            return subprocess.Popen(  # noqa: S603 - fixed command, our own interpreter
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        assert self._api is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._api.poll() is not None:
                break
            if _healthy(f"{self.url}/api/health", self.tls):
                return
            time.sleep(0.1)
        tail = self.api_log.read_text(errors="replace")[-3000:] if self.api_log.exists() else ""
        self.stop()
        raise BrokerError(f"the broker did not answer on {self.url}/api/health:\n{tail}")


def _healthy(url: str, tls: tuple[Path | str, Path | str] | None) -> bool:
    context = ssl.create_default_context(cafile=str(tls[0])) if tls else None  # the chain ends in the lab CA
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - our own URL
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _terminate(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def sweep_forever(interval: float) -> None:
    """Run one sweep every `interval` seconds, like the Functions timer; a failed sweep waits for the next."""
    from jitbroker.runtime import run_sweep

    log = logging.getLogger("lab.broker.sweeper")
    while True:
        started = time.monotonic()
        try:
            report = run_sweep()
            log.info("sweep: %s", report)
        except Exception:
            log.exception("sweep failed; trying again next interval")
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    """`python -m lab.broker sweep --interval SECONDS`: the lab's stand-in for the timer trigger."""
    parser = argparse.ArgumentParser(prog="python -m lab.broker")
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="run the sweeper on a fixed interval")
    sweep.add_argument("--interval", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.command == "sweep":
        sweep_forever(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
