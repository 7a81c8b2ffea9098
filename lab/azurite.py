"""Azurite's Table service on loopback, with a throw-away data folder, for `azure-data-tables`.

The project pins Azurite in `package.json`; `make setup` installs it into `node_modules/`. The process runs in
its own process group so `stop()` ends it and anything it spawned; telemetry is off so it never reaches out.
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

# Azurite's development account: documented publicly, the same on every machine, and not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_START_ATTEMPTS = 3
_READY_TIMEOUT_S = 30.0


class AzuriteError(RuntimeError):
    """Azurite is missing or would not start."""


class Azurite:
    """One Azurite Table service: `.start()`, `.connection_string`, `.table_endpoint`, `.stop()`."""

    def __init__(self, data_dir: Path | str | None = None, port: int = 0, *, host: str = "127.0.0.1") -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="azurite-"))
        self.host = host
        self._requested_port = port
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self.data_dir / "azurite.log"

    @property
    def table_endpoint(self) -> str:
        """The account's table endpoint, path-style (`http://127.0.0.1:PORT/devstoreaccount1`)."""
        self._require_running()
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """A connection string for `TableServiceClient.from_connection_string`."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={self.table_endpoint};"
        )

    def start(self) -> Azurite:
        """Start Azurite and wait until it answers HTTP; raises `AzuriteError` with its log when it cannot."""
        if self._process is not None:
            return self
        if not os.access(AZURITE_TABLE, os.X_OK):
            raise AzuriteError(f"Azurite is not installed ({AZURITE_TABLE} is missing): run `make setup`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._requested_port else _START_ATTEMPTS
        for _ in range(attempts):
            # Azurite cannot report a port it picked itself: choose a free one, retry if taken meanwhile.
            self.port = self._requested_port or _free_port(self.host)
            self._process = self._spawn()
            if self._wait_ready():
                return self
            self._kill()
        log = self._log_path.read_text(errors="replace")[-2000:] if self._log_path.exists() else ""
        raise AzuriteError(f"Azurite did not start on {self.host}:{self.port}:\n{log}")

    def stop(self) -> None:
        """Stop Azurite (its whole process group) and remove a data folder this object created."""
        self._kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [
            str(AZURITE_TABLE),
            "--tableHost",
            self.host,
            "--tablePort",
            str(self.port),
            "--location",
            str(self.data_dir),
            "--skipApiVersionCheck",
            "--disableProductStyleUrl",
            "--disableTelemetry",
            "--silent",
        ]
        with self._log_path.open("ab") as log:
            return subprocess.Popen(  # noqa: S603 - fixed command
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if _answers_http(self.host, self.port):
                return True
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def _require_running(self) -> None:
        if self._process is None:
            raise AzuriteError("Azurite is not started")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _answers_http(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=1)
    try:
        connection.request("GET", f"/{ACCOUNT_NAME}/Tables")
        connection.getresponse().read()
    except OSError:
        return False
    finally:
        connection.close()
    return True
