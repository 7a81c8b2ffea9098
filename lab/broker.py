"""The broker as it runs locally: the real FastAPI app under uvicorn, plus the sweeper on its schedule and
the notifications' delivery loop.

All run as subprocesses with exactly the settings given (the names of `local.settings.sample.json`), so the
broker's code cannot tell the lab from Azure. `python -m lab.broker sweep --interval N` is the sweeper loop
(the timer trigger's stand-in); `python -m lab.broker deliver --interval N` reads the events queue as the
Functions host's queue trigger does (`drain_once`: deliver, delete on success, retry, poison after 5 tries).
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

REPO_ROOT = Path(__file__).resolve().parent.parent
_READY_TIMEOUT_S = 60.0


class BrokerError(RuntimeError):
    """The broker would not start; the message carries the end of its log."""


class BrokerProcess:
    """`BrokerProcess(settings).start()` → `.url`; `.stop()`; a context manager.

    `sweep_interval` (seconds) runs `run_sweep()` in a second process on that period; None runs no sweeper.
    `deliver_interval` (seconds) runs the delivery loop over the events queue in a third; None (the default)
    runs none.
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
        deliver_interval: float | None = None,
    ) -> None:
        self.settings = dict(settings)
        self.tls = tls
        self.host = host
        self.port = port
        self.sweep_interval = sweep_interval
        self.deliver_interval = deliver_interval
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="jit-broker-"))
        self._api: subprocess.Popen[bytes] | None = None
        self._sweeper: subprocess.Popen[bytes] | None = None
        self._deliverer: subprocess.Popen[bytes] | None = None

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

    @property
    def deliver_log(self) -> Path:
        """The delivery loop's output."""
        return self.log_dir / "deliver.log"

    def start(self) -> BrokerProcess:
        """Validate the settings, start uvicorn (and the sweeper), and wait until `/api/health` answers."""
        if self._api is not None:
            return self
        from jitbroker.config import NotifySettings, Settings

        Settings.from_env(self.settings)  # a ConfigError here reads better than a dead subprocess
        NotifySettings.from_env(self.settings)
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
        if self.deliver_interval is not None:
            loop = [sys.executable, "-m", "lab.broker", "deliver", "--interval", str(self.deliver_interval)]
            self._deliverer = self._spawn(loop, self.deliver_log)
        return self

    def stop(self) -> None:
        """Stop the delivery loop, the sweeper and the API (each its own process group)."""
        for name in ("_deliverer", "_sweeper", "_api"):
            process = getattr(self, name)
            setattr(self, name, None)
            if process is not None:
                _terminate(process)

    def kill(self) -> None:
        """SIGKILL the loops and the API, as a crash would: nothing in them cleans up (crash tests)."""
        for name in ("_deliverer", "_sweeper", "_api"):
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


@dataclass
class DrainReport:
    """What one pass over the events queue did."""

    delivered: int = 0
    retried: int = 0
    poisoned: int = 0


def drain_once(
    queue: QueueClient,
    poison: QueueClient,
    handle: Callable[[str, int], object],
    *,
    max_dequeue_count: int = 5,
    visibility_timeout: int = 60,
    retry_after: int = 0,
) -> DrainReport:
    """One pass over the visible messages, as the Functions queue trigger handles them.

    Each message is hidden while `handle(content, dequeue_count)` runs; it is deleted when that returns. When
    it raises, the message becomes visible again after `retry_after` seconds (host.json's `visibilityTimeout`,
    0 by default), or — on its `max_dequeue_count`th try (`maxDequeueCount`, 5) — is copied to `poison` and
    deleted, as the host moves it to `<queue>-poison`.
    """
    report = DrainReport()
    for message in queue.receive_messages(messages_per_page=16, visibility_timeout=visibility_timeout):
        try:
            handle(message.content, int(message.dequeue_count or 1))
        except Exception:
            if int(message.dequeue_count or 1) >= max_dequeue_count:
                poison.send_message(message.content)
                queue.delete_message(message)
                report.poisoned += 1
            else:
                queue.update_message(message, visibility_timeout=retry_after)
                report.retried += 1
            continue
        queue.delete_message(message)
        report.delivered += 1
    return report


def deliver_forever(interval: float, *, retry_after: int = 0) -> None:
    """Drain the events queue every `interval` seconds with the broker's own `deliver_message`."""
    from azure.core.exceptions import ResourceExistsError

    from jitbroker.config import NotifySettings
    from jitbroker.notify import deliver_message, queue_client

    log = logging.getLogger("lab.broker.deliver")
    settings = NotifySettings.from_env()
    if not (settings.queue_connection_string or settings.queue_endpoint):
        log.warning("no events queue configured (JIT_QUEUE_CONNECTION_STRING): nothing to deliver")
        while True:
            time.sleep(3600)
    queue = queue_client(settings)
    poison = queue_client(settings, name=settings.poison_queue)
    for client in (queue, poison):
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()

    def handle(content: str, dequeue_count: int) -> object:
        return deliver_message(content, dequeue_count=dequeue_count)

    while True:
        started = time.monotonic()
        try:
            report = drain_once(queue, poison, handle, retry_after=retry_after)
            if report.delivered or report.retried or report.poisoned:
                log.info("deliver: %s", report)
        except Exception:
            log.exception("reading the events queue failed; trying again next interval")
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    """`python -m lab.broker sweep|deliver --interval SECONDS`: the lab's stand-ins for the timer trigger
    and the queue trigger."""
    parser = argparse.ArgumentParser(prog="python -m lab.broker")
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="run the sweeper on a fixed interval")
    sweep.add_argument("--interval", type=float, default=60.0)
    deliver = commands.add_parser("deliver", help="deliver notification events from the queue to webhooks")
    deliver.add_argument("--interval", type=float, default=1.0)
    deliver.add_argument("--retry-after", type=int, default=0, help="seconds before a failed message returns")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.command == "sweep":
        sweep_forever(args.interval)
    elif args.command == "deliver":
        deliver_forever(args.interval, retry_after=args.retry_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
