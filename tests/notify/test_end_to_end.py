"""End to end in the lab: an event published through `QueuePublisher` onto Azurite's queue is taken by the lab
broker's delivery loop (`python -m lab.broker deliver`, the queue trigger's stand-in) and arrives at a local
webhook receiver signed; a webhook that keeps failing ends in the poison queue."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError

from jitbroker.config import NotifySettings
from jitbroker.notify import MAX_DEQUEUE_COUNT, publisher_from_settings, queue_client
from lab.broker import BrokerProcess
from lab.webhooks import WebhookReceiver
from tests.notify.conftest import SECRET, event


@pytest.fixture
def lab_notifications(
    broker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BrokerProcess, WebhookReceiver, dict[str, str]]]:
    """A lab broker with its delivery loop on a queue of its own, webhooks pointing at a local receiver."""
    with WebhookReceiver(SECRET) as receiver:
        env = {
            **broker_env,
            "JIT_EVENTS_QUEUE": f"e2e-{uuid.uuid4().hex[:12]}",
            "JIT_PUBLIC_URL": "https://jit.example.org",
            **receiver.settings(("generic", "teams", "slack")),
        }
        log_dir = tmp_path_factory.mktemp("notify-broker")
        with BrokerProcess(env, sweep_interval=None, deliver_interval=0.2, log_dir=log_dir) as broker:
            yield broker, receiver, env
        settings = NotifySettings.from_env(env)
        for name in (settings.events_queue, settings.poison_queue):
            with contextlib.suppress(ResourceNotFoundError):
                queue_client(settings, name=name).delete_queue()


def test_a_published_event_arrives_at_each_webhook_and_the_generic_one_signed(lab_notifications) -> None:
    broker, receiver, env = lab_notifications
    publisher = publisher_from_settings(NotifySettings.from_env(env))

    publisher.publish(event("requested"))

    try:
        arrived = receiver.wait_for(3, timeout=30)
    except AssertionError:
        raise AssertionError(broker.deliver_log.read_text()[-3000:]) from None
    by_path = {delivery.path: delivery for delivery in arrived}
    generic = by_path["/generic"]
    assert generic.verified is True
    assert generic.json["event"] == "requested"
    assert (
        generic.json["approve"]["url"] == "https://jit.example.org/api/v1/grants/g-0123456789abcdef/approve"
    )
    assert by_path["/teams"].json["type"] == "message"
    assert "jit approve g-0123456789abcdef" in json.dumps(by_path["/slack"].json)
    time.sleep(1.0)
    assert len(receiver.received) == 3  # each webhook once


def test_a_webhook_that_keeps_failing_ends_in_the_poison_queue(lab_notifications) -> None:
    broker, receiver, env = lab_notifications
    settings = NotifySettings.from_env(env)
    only_generic = NotifySettings.from_env({**env, **receiver.settings(("generic",))})
    receiver.fail_next(1000)

    publisher_from_settings(only_generic).publish(event("granted"))

    poison = queue_client(settings, name=settings.poison_queue)
    deadline = time.monotonic() + 30
    poisoned: list[str] = []
    while not poisoned and time.monotonic() < deadline:
        with contextlib.suppress(ResourceNotFoundError):  # the loop makes the poison queue as it starts
            poisoned = [m.content for m in poison.peek_messages()]
        time.sleep(0.2)
    assert poisoned, broker.deliver_log.read_text()[-3000:]
    assert json.loads(poisoned[0])["webhook"] == "lab-generic"
    assert receiver.attempts == MAX_DEQUEUE_COUNT
    assert "the message goes to" in broker.deliver_log.read_text()


def test_a_real_approval_round_trip_notifies_the_approvers_and_the_requester(
    lab_notifications, token_for, scenario
) -> None:
    """Through the broker's own API: bob asks for prod-01, carol approves, bob revokes — each step arrives at
    the webhook signed, the request carrying the command an approver runs."""
    import httpx

    broker, receiver, _ = lab_notifications

    def client(name: str) -> httpx.Client:
        headers = {
            "Authorization": f"Bearer {token_for(name)}",
            "X-Forwarded-For": scenario.user(name).address or "203.0.113.99",
        }
        return httpx.Client(base_url=broker.url, headers=headers, timeout=60)

    with client("bob") as bob, client("carol") as carol:
        grant = bob.post("/api/v1/grants", json={"vm": "prod-01", "duration": "PT10M"}).json()
        assert grant["status"] == "awaiting_approval"
        assert carol.post(
            f"/api/v1/grants/{grant['id']}/approve", json={"reason": "on call"}
        ).status_code in (
            200,
            202,
        )
        assert bob.delete(f"/api/v1/grants/{grant['id']}").json()["status"] == "revoked"

    deadline = time.monotonic() + 60
    generic: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        generic = [
            d.json
            for d in list(receiver.received)
            if isinstance(d.json, dict) and (d.json.get("grant") or {}).get("id") == grant["id"]
        ]
        if {"requested", "approved", "granted", "revoked"} <= {str(g["event"]) for g in generic}:
            break
        time.sleep(0.2)
    assert {"requested", "approved", "granted", "revoked"} <= {str(g["event"]) for g in generic}, generic
    requested = next(g for g in generic if g["event"] == "requested")
    assert requested["approve"]["command"] == f"jit approve {grant['id']}"  # type: ignore[index]
    approved = next(g for g in generic if g["event"] == "approved")
    assert approved["reason"] == "on call" and approved["actor"]["name"]  # type: ignore[index]
    signed = [d for d in list(receiver.received) if isinstance(d.json, dict) and d.json.get("event")]
    assert signed and all(d.verified for d in signed)
