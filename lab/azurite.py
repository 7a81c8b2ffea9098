"""Azurite's Table and Queue services on loopback, with a throw-away data folder.

The tables are the broker's store (`azure-data-tables`); the queue carries notification events
(`azure-storage-queue`, docs/notifications.md). One connection string names both endpoints. The project pins
Azurite in `package.json`; `make setup` installs it into `node_modules/`. Each service runs in its own process
group so `stop()` ends it and anything it spawned; telemetry is off so it never reaches out.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_TABLE = REPO_ROOT / "node_modules" / ".bin" / "azurite-table"
AZURITE_QUEUE = REPO_ROOT / "node_modules" / ".bin" / "azurite-queue"

# Azurite's development account: documented publicly, the same on every machine, and not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_START_ATTEMPTS = 3
_READY_TIMEOUT_S = 30.0


class AzuriteError(RuntimeError):
    """Azurite is missing or would not start."""


class Azurite:
    """Azurite's Table service (`.port`) and Queue service (`.queue_port`): `.start()`, `.connection_string`,
    `.table_endpoint`, `.queue_endpoint`, `.stop()`. `queues=False` runs the Table service alone."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        queue_port: int = 0,
        queues: bool = True,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="azurite-"))
        self.host = host
        self._requested_port = port
        self._requested_queue_port = queue_port
        self.queues = queues
        self.port = 0
        self.queue_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._queue_process: subprocess.Popen[bytes] | None = None
        self._log_path = self.data_dir / "azurite.log"
        self._queue_log_path = self.data_dir / "azurite-queue.log"

    @property
    def table_endpoint(self) -> str:
        """The account's table endpoint, path-style (`http://127.0.0.1:PORT/devstoreaccount1`)."""
        self._require_running()
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def queue_endpoint(self) -> str:
        """The account's queue endpoint, path-style (`http://127.0.0.1:PORT/devstoreaccount1`)."""
        self._require_running()
        if not self.queues:
            raise AzuriteError("this Azurite runs without its Queue service (queues=False)")
        return f"http://{self.host}:{self.queue_port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """A connection string for `TableServiceClient` and `QueueClient.from_connection_string`."""
        queue = f"QueueEndpoint={self.queue_endpoint};" if self.queues else ""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={self.table_endpoint};{queue}"
        )

    def start(self) -> Azurite:
        """Start Azurite and wait until it answers HTTP; raises `AzuriteError` with its log when it cannot."""
        if self._process is not None:
            return self
        for program in (AZURITE_TABLE, AZURITE_QUEUE) if self.queues else (AZURITE_TABLE,):
            if not os.access(program, os.X_OK):
                raise AzuriteError(f"Azurite is not installed ({program} is missing): run `make setup`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed = self._requested_port and (self._requested_queue_port or not self.queues)
        attempts = 1 if fixed else _START_ATTEMPTS
        for _ in range(attempts):
            # Azurite cannot report a port it picked itself: choose free ones, retry if taken meanwhile.
            self.port = self._requested_port or _free_port(self.host)
            self._process = self._spawn_table()
            if self.queues:
                self.queue_port = self._requested_queue_port or _free_port(self.host, avoid=self.port)
                self._queue_process = self._spawn_queue()
            if self._wait_ready():
                return self
            self._kill()
        logs = [p for p in (self._log_path, self._queue_log_path) if p.exists()]
        log = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs)
        where = f"{self.host}:{self.port}" + (f" (queues on {self.queue_port})" if self.queues else "")
        raise AzuriteError(f"Azurite did not start on {where}:\n{log}")

    def stop(self) -> None:
        """Stop Azurite (its whole process group) and remove a data folder this object created."""
        self._kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn_table(self) -> subprocess.Popen[bytes]:
        command = [str(AZURITE_TABLE), "--tableHost", self.host, "--tablePort", str(self.port)]
        return self._spawn(command, self._log_path)

    def _spawn_queue(self) -> subprocess.Popen[bytes]:
        command = [str(AZURITE_QUEUE), "--queueHost", self.host, "--queuePort", str(self.queue_port)]
        return self._spawn(command, self._queue_log_path)

    def _spawn(self, command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        command += [
            "--location",
            str(self.data_dir),
            "--skipApiVersionCheck",
            "--disableProductStyleUrl",
            "--disableTelemetry",
            "--silent",
        ]
        with log_path.open("ab") as log:
            return subprocess.Popen(  # noqa: S603 - fixed command
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self) -> bool:
        assert self._process is not None
        waiting = [(self._process, self.port, f"/{ACCOUNT_NAME}/Tables")]
        if self._queue_process is not None:
            waiting.append((self._queue_process, self.queue_port, f"/{ACCOUNT_NAME}?comp=list"))
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while waiting and time.monotonic() < deadline:
            if any(process.poll() is not None for process, _, _ in waiting):
                return False
            waiting = [w for w in waiting if not _answers_http(self.host, w[1], w[2])]
            if waiting:
                time.sleep(0.05)
        return not waiting

    def _kill(self) -> None:
        for name in ("_queue_process", "_process"):
            process = getattr(self, name)
            setattr(self, name, None)
            if process is not None:
                _end(process)

    def _require_running(self) -> None:
        if self._process is None:
            raise AzuriteError("Azurite is not started")


def _end(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _free_port(host: str, *, avoid: int = 0) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port != avoid:
            return port


def _answers_http(host: str, port: int, path: str) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=1)
    try:
        connection.request("GET", path)
        connection.getresponse().read()
    except OSError:
        return False
    finally:
        connection.close()
    return True
