"""No credential reaches a log, at any level, through a whole grant lifecycle and its error paths.

Credentials are: every bearer token a caller sent (whole, or its payload or signature segment), the broker's
own ARM token from the managed identity, the `IDENTITY_HEADER` secret, and the storage account key (with any
SharedKey signature made from it). Two brokers go through grant, repeat, extend, list, revoke, expiry by the
sweeper, bad tokens, bad bodies, unknown grants and ARM failing:
- a broker process as the lab runs it (uvicorn and the sweeper loop, each writing its log file);
- the broker's app in this process under a uvicorn server thread, with every logger at DEBUG (the broker's,
  azure.*, urllib3, uvicorn) captured by caplog.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn

from lab.broker import BrokerProcess
from lab.issuer import TokenIssuer
from lab.tokens import BAD_TOKENS
from tests.security.conftest import SEC_TABLE_PREFIX

JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
SHARED_KEY = re.compile(r"SharedKey(Lite)?\s+\w+:[A-Za-z0-9+/=]{16,}")
LOGGERS = ["", "jitbroker", "lab", "azure", "azure.identity", "azure.core", "urllib3", "uvicorn", "httpx"]
_EXPIRY_WAIT_S = 90.0


class Secrets:
    """Everything that must never be logged, gathered as the test makes or learns it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.fragments: set[str] = {env["IDENTITY_HEADER"]}
        for part in env["JIT_TABLE_CONNECTION_STRING"].split(";"):
            if part.startswith("AccountKey="):
                self.fragments.add(part.removeprefix("AccountKey="))

    def token(self, token: str) -> str:
        """Remember a token (whole, payload, signature) and hand it back."""
        parts = token.split(".")
        self.fragments.update(p for p in (token, *parts[1:]) if len(p) >= 12)
        return token

    def found_in(self, text: str) -> list[str]:
        """What of the secrets, or anything shaped like a token or a SharedKey signature, the text holds."""
        leaks = [f"secret fragment {f[:6]}…" for f in self.fragments if f in text]
        leaks += [f"JWT-shaped text {m.group()[:12]}…" for m in JWT_SHAPE.finditer(text)]
        leaks += [f"SharedKey signature {m.group()[:16]}…" for m in SHARED_KEY.finditer(text)]
        return leaks


def lifecycle(
    url: str, secrets: Secrets, issuer: TokenIssuer, arm: Any, *, expire: Callable[[str], None]
) -> None:
    """Grant, repeat, extend, list, revoke, expire, then every error path the API has."""

    def client(user: str, address: str, token: str | None = None) -> httpx.Client:
        bearer = secrets.token(token or issuer.token(user))
        headers = {"Authorization": f"Bearer {bearer}", "X-Forwarded-For": address}
        return httpx.Client(base_url=url, headers=headers, timeout=60)

    with client("alice", "203.0.113.10") as alice, client("carol", "203.0.113.20") as carol:
        grant = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"})
        assert grant.status_code == 201, grant.text
        gid = grant.json()["id"]
        assert alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT20M"}).status_code == 200
        assert alice.post(f"/api/v1/grants/{gid}/extend", json={"duration": "PT30M"}).status_code == 200
        assert alice.get("/api/v1/grants", params={"status": "active"}).status_code == 200
        assert carol.get("/api/v1/grants", params={"all": "true"}).status_code == 200
        assert alice.get("/api/v1/vms").status_code == 200
        assert carol.delete(f"/api/v1/grants/{gid}").json()["status"] == "revoked"

        short = alice.post("/api/v1/grants", json={"vm": "db-01", "port": 22, "duration": "2s"})
        assert short.status_code == 201, short.text
        expire(short.json()["id"])

        for make in BAD_TOKENS.values():
            with client("mallory", "203.0.113.66", token=make(issuer, "mallory")) as bad:
                assert bad.post("/api/v1/grants", json={"vm": "web-01"}).status_code == 401
        anonymous = httpx.post(f"{url}/api/v1/grants", json={"vm": "web-01"}, timeout=60)
        assert anonymous.status_code == 401
        assert (
            alice.post(
                "/api/v1/grants", content=b"{", headers={"Content-Type": "application/json"}
            ).status_code
            == 400
        )
        assert alice.post("/api/v1/grants", json={"vm": "web-01", "x": 1}).status_code == 422
        assert alice.post("/api/v1/grants", content=b"x" * 20_000).status_code == 413
        assert alice.get("/api/v1/grants/g-00000000000000000000").status_code == 404
        assert alice.post("/api/v1/grants", json={"vm": "stopped-01"}).status_code == 409

        arm.add_fault(method="PUT", match="networkSecurityGroups/", count=50, status=500)
        try:
            failed = alice.post("/api/v1/grants", json={"vm": "win-01", "protocol": "rdp"})
            assert failed.status_code >= 500, failed.text
        finally:
            arm.clear_faults()


def wait_until_expired(client: httpx.Client, grant_id: str) -> None:
    """Poll the grant until the sweeper has expired it (generous: the machine may be busy)."""
    deadline = time.monotonic() + _EXPIRY_WAIT_S
    status = ""
    while time.monotonic() < deadline:
        status = client.get(f"/api/v1/grants/{grant_id}").json()["status"]
        if status == "expired":
            return
        time.sleep(0.5)
    pytest.fail(f"the sweeper did not expire grant {grant_id} (still {status})")


# -- a broker process and its log files ----------------------------------------------------------------------


@pytest.fixture
def logged_broker(
    sec_broker_env: dict[str, str], arm_admin: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A broker as the lab runs it (sweeper every second) on tables of its own, for this test only."""
    env = {**sec_broker_env, "JIT_TABLE_PREFIX": f"{SEC_TABLE_PREFIX}logs"}
    log_dir = tmp_path_factory.mktemp("logged-broker")
    with BrokerProcess(env, sweep_interval=1.0, log_dir=log_dir) as running:
        yield running


def test_a_broker_processs_logs_hold_no_token_key_or_identity_secret(
    logged_broker: BrokerProcess, issuer: TokenIssuer, arm_admin: Any
) -> None:
    secrets = Secrets(logged_broker.settings)
    carol = issuer.token("carol")
    secrets.token(carol)

    def expire(grant_id: str) -> None:
        headers = {"Authorization": f"Bearer {carol}", "X-Forwarded-For": "203.0.113.20"}
        with httpx.Client(base_url=logged_broker.url, headers=headers, timeout=60) as admin:
            wait_until_expired(admin, grant_id)

    lifecycle(logged_broker.url, secrets, issuer, arm_admin, expire=expire)

    logs = {path.name: path.read_text(errors="replace") for path in logged_broker.log_dir.iterdir()}
    assert "sweep: SweepReport(" in logs["sweeper.log"]  # the sweeper's log was really written
    for name, text in logs.items():
        assert not secrets.found_in(text), f"{name}: {secrets.found_in(text)}"


# -- the app in this process, every logger at DEBUG ---------------------------------------------------------


class ServerThread:
    """uvicorn serving an app in this process (so caplog sees every record), on a free loopback port."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, log_level="debug")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        (socket,) = self.server.servers[0].sockets
        return f"http://127.0.0.1:{socket.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def test_nothing_secret_is_logged_at_any_level_in_process(
    *,
    in_process_broker: Callable[[Callable[[], datetime]], Any],
    api_broker_env: dict[str, str],
    identity_env: dict[str, str],
    clean_lab: Any,
    issuer: TokenIssuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from jitbroker.api import create_app
    from jitbroker.clients import PUBLIC_ARM_AUDIENCE

    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    now = [datetime.now(UTC)]
    broker = in_process_broker(lambda: now[0])
    secrets = Secrets({**api_broker_env, **identity_env})

    def expire(grant_id: str) -> None:
        now[0] += timedelta(hours=1)
        report = broker.sweeper.run()
        assert report.expired >= 1, report
        assert broker.store.get(grant_id).status == "expired"

    with ServerThread(create_app(broker.services)) as url:
        lifecycle(url, secrets, issuer, clean_lab, expire=expire)

    arm_token = broker.topology._clients.credential.get_token(PUBLIC_ARM_AUDIENCE).token
    secrets.token(arm_token)  # the token the broker used with ARM (cached by the credential)
    text = caplog.text + "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {r.stack_info or ''}" for r in caplog.records
    )
    assert len(caplog.records) > 50, "expected DEBUG records from the broker, azure, urllib3 and uvicorn"
    loggers = {r.name.split(".")[0] for r in caplog.records}
    assert {"azure", "urllib3", "uvicorn"} <= loggers, loggers
    assert not secrets.found_in(text), secrets.found_in(text)
