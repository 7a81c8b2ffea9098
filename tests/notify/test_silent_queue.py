"""A queue that accepts connections and never answers costs a grant a few seconds at most, once: delivery
never blocks a grant, and no answer passes its 25 s (docs/notifications.md, docs/api.md)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lab.broker import BrokerProcess

pytestmark = pytest.mark.usefixtures("clean_lab")


@pytest.fixture
def silent_queue_broker(
    api_broker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A broker with a webhook configured whose events queue listens on loopback and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        endpoint = f"QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1"
        connection = api_broker_env["JIT_QUEUE_CONNECTION_STRING"]
        connection = re.sub(r"QueueEndpoint=[^;]*", endpoint, connection)
        if "QueueEndpoint=" not in connection:
            connection = f"{connection.rstrip(';')};{endpoint}"
        env = {
            **api_broker_env,
            "JIT_TABLE_PREFIX": "jitsilentq",
            "JIT_QUEUE_CONNECTION_STRING": connection,
            "JIT_WEBHOOKS": json.dumps([{"url": "https://hooks.example.test/jit", "format": "generic"}]),
            "JIT_WEBHOOK_SECRET": "lab-only-webhook-secret",
        }
        with BrokerProcess(env, sweep_interval=None, log_dir=tmp_path_factory.mktemp("silent")) as broker:
            yield broker


def test_a_queue_that_never_answers_costs_a_grant_seconds_once(
    silent_queue_broker: BrokerProcess, token_for: Any, scenario: Any
) -> None:
    address = scenario.user("alice").address
    headers = {"Authorization": f"Bearer {token_for('alice')}", "X-Forwarded-For": address}
    with httpx.Client(base_url=silent_queue_broker.url, headers=headers, timeout=60) as alice:
        started = time.monotonic()
        made = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"})
        took = time.monotonic() - started
        assert (made.status_code, made.json()["status"]) == (201, "active"), made.text

        started = time.monotonic()
        closed = alice.delete(f"/api/v1/grants/{made.json()['id']}")  # within the cooldown: no wait at all
        revoke_took = time.monotonic() - started
        assert closed.json()["status"] == "revoked"

    assert "could not enqueue the granted event" in silent_queue_broker.api_log.read_text()
    assert took < 7.0, f"the grant took {took:.1f} s with the queue silent"
    assert revoke_took < 3.0, f"the revoke in the cooldown took {revoke_took:.1f} s"
