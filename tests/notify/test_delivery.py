"""Delivery: each queue message reaches its webhook signed (generic) or formatted (Teams, Slack); a webhook
that fails is retried on its own and ends in the poison queue, while the healthy one gets each event once."""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

import pytest

from jitbroker.config import WebhookTarget
from jitbroker.notify import MAX_DEQUEUE_COUNT, QueuePublisher, deliver, deliver_message, encode_message
from jitbroker.webhooks import DELIVERY_HEADER, WebhookError
from lab.broker import drain_once
from lab.webhooks import WebhookReceiver
from tests.notify.conftest import BROKER_URL, SECRET, event

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient


def hooks_for(receiver: WebhookReceiver, *formats: str) -> list[WebhookTarget]:
    return [WebhookTarget(name=f"lab-{fmt}", url=receiver.url(fmt), format=fmt) for fmt in formats]


def message_for(hook: str | None, kind: str = "requested") -> str:
    return encode_message(event(kind).payload(BROKER_URL), webhook=hook)


def test_a_generic_delivery_arrives_signed_over_its_exact_body(receiver: WebhookReceiver) -> None:
    message = message_for("lab-generic")

    assert deliver(message, hooks_for(receiver, "generic"), SECRET) == ["lab-generic"]

    (arrived,) = receiver.received
    assert arrived.verified is True
    assert arrived.json == event("requested").payload(BROKER_URL)
    assert arrived.headers[DELIVERY_HEADER] == json.loads(message)["id"]


def test_teams_and_slack_deliveries_arrive_in_their_formats(receiver: WebhookReceiver) -> None:
    hooks = hooks_for(receiver, "teams", "slack")

    for hook in hooks:
        deliver(message_for(hook.name), hooks, SECRET)

    teams, slack = receiver.received
    assert teams.path == "/teams"
    assert teams.json["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert slack.path == "/slack"
    assert slack.json["text"].startswith("bob@contoso.example asks for prod-01")
    assert teams.verified is None and slack.verified is None


def test_a_message_naming_a_webhook_goes_to_that_one_only(receiver: WebhookReceiver) -> None:
    hooks = hooks_for(receiver, "generic", "slack")

    deliver(message_for("lab-slack"), hooks, SECRET)

    assert [d.path for d in receiver.received] == ["/slack"]


def test_a_message_for_every_webhook_goes_to_each_that_wants_its_kind(receiver: WebhookReceiver) -> None:
    hooks = [
        *hooks_for(receiver, "generic"),
        WebhookTarget("doors", receiver.url("slack"), format="slack", events=frozenset({"granted"})),
    ]

    assert deliver(message_for(None, "requested"), hooks, SECRET) == ["lab-generic"]
    assert deliver(message_for(None, "granted"), hooks, SECRET) == ["lab-generic", "doors"]


def test_a_webhook_answering_an_error_fails_the_delivery_without_naming_its_url(
    receiver: WebhookReceiver,
) -> None:
    receiver.fail_next(1, status=503)

    with pytest.raises(WebhookError, match="webhook lab-generic answered HTTP 503") as raised:
        deliver(message_for("lab-generic"), hooks_for(receiver, "generic"), SECRET)

    assert receiver.url() not in str(raised.value)
    assert receiver.received == []


def test_a_webhook_that_does_not_answer_fails_the_delivery() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hooks = [WebhookTarget("gone", f"http://127.0.0.1:{port}/generic")]

    with pytest.raises(WebhookError, match="webhook gone did not answer"):
        deliver(message_for("gone"), hooks, SECRET)


def test_a_wrong_secret_is_refused_by_the_receiver_and_so_retried(receiver: WebhookReceiver) -> None:
    with pytest.raises(WebhookError, match="HTTP 401"):
        deliver(message_for("lab-generic"), hooks_for(receiver, "generic"), "not-the-receivers-secret")


def test_a_redirect_is_not_followed(receiver: WebhookReceiver) -> None:
    receiver.fail_next(1, status=307)

    with pytest.raises(WebhookError, match="HTTP 307"):
        deliver(message_for("lab-generic"), hooks_for(receiver, "generic"), SECRET)
    assert receiver.attempts == 1


def test_a_message_for_a_webhook_no_longer_configured_is_dropped(caplog, receiver: WebhookReceiver) -> None:
    assert deliver(message_for("removed-yesterday"), hooks_for(receiver, "generic"), SECRET) == []
    assert "no webhook of that name is configured now" in caplog.text
    assert receiver.attempts == 0


def test_a_message_that_is_not_ours_fails_every_try() -> None:
    with pytest.raises(ValueError, match="not a jit-broker event"):
        deliver('{"hello": "world"}', [], SECRET)
    with pytest.raises(ValueError):
        deliver("not json", [], SECRET)


def test_the_functions_body_says_when_the_last_try_failed(caplog, receiver: WebhookReceiver) -> None:
    env = {
        "JIT_QUEUE_CONNECTION_STRING": "UseDevelopmentStorage=true",
        **receiver.settings(("generic",)),
    }
    receiver.fail_next(2)

    with pytest.raises(WebhookError):
        deliver_message(message_for("lab-generic"), dequeue_count=1, environ=env)
    assert "try 1 of 5, the queue tries again" in caplog.text
    with pytest.raises(WebhookError):
        deliver_message(message_for("lab-generic"), dequeue_count=MAX_DEQUEUE_COUNT, environ=env)
    (last,) = [r for r in caplog.records if r.getMessage().startswith("notification undeliverable")]
    assert "the message goes to jit-events-poison" in last.getMessage()
    assert last.levelname == "ERROR"
    assert (last.poison_queue, last.tries) == ("jit-events-poison", MAX_DEQUEUE_COUNT)


# ---------------------------------------------------------------- through a real queue (Azurite)


def drain(queue: QueueClient, poison: QueueClient, hooks: list[WebhookTarget], passes: int = 12) -> list[Any]:
    """Run the lab's queue-trigger stand-in until the queue is empty (each pass re-reads what failed)."""
    reports = []
    for _ in range(passes):
        report = drain_once(
            queue, poison, lambda content, _count: deliver(content, hooks, SECRET), retry_after=0
        )
        reports.append(report)
        if not any((report.delivered, report.retried, report.poisoned)):
            break
    return reports


def test_a_failing_webhook_is_retried_then_poisoned_and_the_healthy_one_gets_the_event_once(
    queues: tuple[QueueClient, QueueClient, str],
) -> None:
    queue, poison, _ = queues
    with WebhookReceiver(SECRET) as healthy, WebhookReceiver(SECRET) as failing:
        failing.fail_next(100)
        hooks = [
            WebhookTarget("healthy", healthy.url("generic")),
            WebhookTarget("failing", failing.url("slack"), format="slack"),
        ]
        QueuePublisher(queue, BROKER_URL, webhooks=hooks).publish(event("requested"))

        reports = drain(queue, poison, hooks)

        assert len(healthy.received) == 1
        assert healthy.received[0].verified is True
        assert failing.attempts == MAX_DEQUEUE_COUNT
        assert sum(r.delivered for r in reports) == 1
        assert sum(r.retried for r in reports) == MAX_DEQUEUE_COUNT - 1
        assert sum(r.poisoned for r in reports) == 1
    (poisoned,) = list(poison.receive_messages())
    document = json.loads(poisoned.content)
    assert document["webhook"] == "failing"
    assert document["event"]["event"] == "requested"
    assert list(queue.receive_messages()) == []


def test_a_webhook_that_recovers_gets_the_event_on_a_later_try(
    queues: tuple[QueueClient, QueueClient, str], receiver: WebhookReceiver
) -> None:
    queue, poison, _ = queues
    hooks = hooks_for(receiver, "generic")
    receiver.fail_next(2)
    QueuePublisher(queue, BROKER_URL, webhooks=hooks).publish(event("granted"))

    drain(queue, poison, hooks)

    assert receiver.attempts == 3
    assert [d.json["event"] for d in receiver.received] == ["granted"]
    assert list(poison.receive_messages()) == []
