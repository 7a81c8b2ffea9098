"""Running the real `jit` as a subprocess against the lab broker, with recording stand-ins for ssh and RDP.

The stand-in writes its argv to a file, optionally holds until a release file appears (a session that lasts),
records the signals it receives, and exits with the code the test chose.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cli.fakebroker import FakeBroker

STANDIN = '''#!{python}
"""Recording stand-in for a session client: argv to a file, hold until released, exit with a chosen code."""
import json, os, pathlib, signal, sys, time

record = pathlib.Path(os.environ["STANDIN_RECORD"])
code = int(os.environ.get("STANDIN_EXIT", "0"))


def on_signal(signum, _frame):
    with record.with_suffix(".signals").open("a") as log:
        log.write(signal.Signals(signum).name + "\\n")
    sys.exit(int(os.environ.get("STANDIN_SIGNAL_EXIT", str(code))))


for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, on_signal)
tmp = record.with_suffix(".tmp")
tmp.write_text(json.dumps([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]]))
tmp.replace(record)
release = os.environ.get("STANDIN_RELEASE")
while release and not pathlib.Path(release).exists():
    time.sleep(0.05)
sys.exit(code)
'''


RUN_TIMEOUT_S = 90


def jit_command() -> list[str]:
    """The installed `jit` console script next to this Python, else `python -m jitcli.main`."""
    script = Path(sys.executable).parent / "jit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "jitcli.main"]


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Jit:
    """Runs `jit` for a lab user with stand-in clients on PATH, and reads what the stand-in recorded."""

    env: dict[str, str]
    home: Path
    bin_dir: Path
    record: Path
    release: Path
    users: dict[str, str] = field(default_factory=dict)

    def environ(self, user: str, extra: dict[str, str]) -> dict[str, str]:
        env = {**self.env, "JIT_LAB_USER": user, **extra}
        return {k: v for k, v in env.items() if v is not None}

    def run(self, *args: str, user: str = "alice", **extra: str) -> subprocess.CompletedProcess[str]:
        """Run `jit ARGS` to completion."""
        return subprocess.run(
            [*jit_command(), *args],
            env=self.environ(user, extra),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )

    def start(self, *args: str, user: str = "alice", **extra: str) -> subprocess.Popen[str]:
        """Start `jit ARGS` in its own process group (as a terminal would); stdout captured, stderr to a file
        the test can read while `jit` runs (`stderr_so_far()`)."""
        with self.stderr_path.open("w") as stderr:
            return subprocess.Popen(
                [*jit_command(), *args],
                env=self.environ(user, extra),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )

    @property
    def stderr_path(self) -> Path:
        return self.home / "jit-stderr.txt"

    def stderr_so_far(self) -> str:
        """What the started `jit` has written to stderr until now."""
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def recorded(self) -> list[str] | None:
        """The stand-in client's argv, once it has run."""
        return json.loads(self.record.read_text()) if self.record.exists() else None

    def signals(self) -> list[str]:
        """Signals the stand-in client received."""
        path = self.record.with_suffix(".signals")
        return path.read_text().split() if path.exists() else []

    def hold_sessions(self) -> dict[str, str]:
        """Env that makes the stand-in hold its session until `end_sessions()`."""
        return {"STANDIN_RELEASE": str(self.release)}

    def end_sessions(self) -> None:
        """Let held stand-in sessions end."""
        self.release.touch()


@pytest.fixture
def jit(tmp_path: Path, broker: Any, issuer: Any, scenario: Any, lab_ca: Any) -> Iterator[Jit]:
    """`jit` configured for the lab broker through environment only, with stand-ins for ssh and FreeRDP."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ssh", "xfreerdp"):
        exe = bin_dir / name
        exe.write_text(STANDIN.replace("{python}", sys.executable))
        exe.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": str(bin_dir),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "JIT_CONFIG": str(home / "jit.toml"),
        "JIT_BROKER_URL": broker.url,
        "JIT_AUTH": "lab",
        "JIT_LAB_ISSUER": issuer.url,
        "JIT_TENANT_ID": scenario.tenant.tenant_id,
        "JIT_SCOPE": scenario.tenant.app_id_uri,
        "REQUESTS_CA_BUNDLE": str(lab_ca.ca_bundle),
        "SSL_CERT_FILE": str(lab_ca.ca_bundle),
        "STANDIN_RECORD": str(tmp_path / "client-argv.json"),
    }
    runner = Jit(env, home, bin_dir, tmp_path / "client-argv.json", tmp_path / "release")
    yield runner
    runner.end_sessions()


class BrokerApi:
    """Direct HTTP calls to the lab broker, to check what `jit` did (as a user or an admin)."""

    def __init__(self, url: str, token_for: Callable[..., str]) -> None:
        self.url = url.rstrip("/")
        self._token_for = token_for

    def call(self, method: str, path: str, user: str = "carol", **kwargs: Any) -> Any:
        response = requests.request(
            method,
            self.url + path,
            headers={"Authorization": f"Bearer {self._token_for(user)}"},
            timeout=60,
            **kwargs,
        )
        response.raise_for_status()
        return response.json()

    def grants(self, user: str, vm: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"vm": vm, "status": status}.items() if v}
        return list(self.call("GET", "/api/v1/grants", user, params=params)["grants"])

    def open_grants(self, user: str, vm: str) -> list[dict[str, Any]]:
        return [g for g in self.grants(user, vm) if g["status"] in ("pending", "active")]

    def grant(self, grant_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/grants/{grant_id}"))

    def revoke_all(self, user: str) -> None:
        """Close every open grant of `user`, and withdraw their requests still awaiting approval (DELETE does
        both), so the next test's request is not answered with a request an earlier test left waiting."""
        for grant in self.grants(user):
            if grant["status"] in ("pending", "active", "awaiting_approval"):
                self.call("DELETE", f"/api/v1/grants/{grant['id']}", user)


@pytest.fixture
def api(broker: Any, token_for: Callable[..., str]) -> Iterator[BrokerApi]:
    """The broker's API for checks; every lab user's open grants are revoked after the test."""
    client = BrokerApi(broker.url, token_for)
    yield client
    for user in ("alice", "bob", "carol"):
        client.revoke_all(user)


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that answers: the tunnel end `jit` connects through."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture
def silent_socket() -> Iterator[socket.socket]:
    """A bound TCP port on 127.0.0.1 that refuses connections until the test calls `listen()`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def end(process: subprocess.Popen[str], jit: Jit, timeout: float = 60) -> tuple[int, str, str]:
    """Wait for a `jit` started with `Jit.start` and return (exit code, stdout, stderr)."""
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"jit did not finish in {timeout}s; stderr:\n{jit.stderr_so_far()}")
    return process.returncode, out, jit.stderr_so_far()


def without_client(jit: Jit, name: str) -> None:
    """Remove a stand-in client from PATH (to test the 'nothing installed' path)."""
    (jit.bin_dir / name).unlink()
    assert shutil.which(name, path=str(jit.bin_dir)) is None


@pytest.fixture
def fake_broker() -> Iterator[FakeBroker]:
    """A scripted broker on http://127.0.0.1 (tests/cli/fakebroker.py); run `jit` with
    `JIT_BROKER_URL=fake_broker.url` (tokens still come from the lab issuer)."""
    with FakeBroker().running() as running:
        yield running
