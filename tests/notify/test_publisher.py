"""The publisher enqueues one message per interested webhook, in the encoding the queue trigger reads, and
never raises: a queue that is down costs one short timeout, then a cooldown, never a grant."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from typing import Any

from azure.storage.queue import QueueClient

from jitbroker.config import NotifySettings, WebhookTarget
from jitbroker.notify import QueuePublisher, deliver, queue_client
from lab.azurite import Azurite
from tests.notify.conftest import BROKER_URL, event

HOOKS = (
    WebhookTarget(name="all", url="https://a.example/h"),
    WebhookTarget(
        name="approvers", url="https://b.example/h", format="teams", events=frozenset({"requested"})
    ),
    WebhookTarget(name="doors", url="https://c.example/h", format="slack", events=frozenset({"granted"})),
)


class FakeQueue:
    """Records what is sent; can fail."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[str] = []
        self.error = error
        self.calls = 0

    def send_message(self, content: str) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        self.sent.append(content)

    def create_queue(self) -> None:
        return


def publisher(queue: Any, **options: Any) -> QueuePublisher:
    return QueuePublisher(queue, BROKER_URL, webhooks=HOOKS, **options)


def test_an_event_becomes_one_message_per_webhook_that_wants_it() -> None:
    queue = FakeQueue()

    publisher(queue).publish(event("requested"))

    messages = [json.loads(m) for m in queue.sent]
    assert [m["webhook"] for m in messages] == ["all", "approvers"]
    assert all(m["event"] == event("requested").payload(BROKER_URL) for m in messages)
    assert all(m["v"] == 1 for m in messages)
    assert len({m["id"] for m in messages}) == 2
    assert "https://" not in "".join(json.dumps(m["webhook"]) for m in messages)


def test_no_message_for_an_event_no_webhook_wants() -> None:
    queue = FakeQueue()
    only_doors = QueuePublisher(queue, None, webhooks=HOOKS[2:])

    only_doors.publish(event("denied"))

    assert queue.sent == []


def test_a_message_carries_the_approve_link_made_from_the_public_url() -> None:
    queue = FakeQueue()

    publisher(queue).publish(event("requested"))

    message = json.loads(queue.sent[0])
    assert message["event"]["approve"]["url"] == f"{BROKER_URL}/api/v1/grants/g-0123456789abcdef/approve"


def test_a_failing_queue_is_counted_never_raised_and_then_skipped_for_a_cooldown(caplog) -> None:
    queue = FakeQueue(error=RuntimeError("queue down"))
    broken = publisher(queue, cooldown=60)

    broken.publish(event("requested"))
    broken.publish(event("requested"))

    assert queue.calls == 1  # the first webhook failed; the rest of that event and the next one are not tried
    assert (broken.sent, broken.failed, broken.dropped) == (0, 1, 1)
    assert "could not enqueue the requested event of grant g-0123456789abcdef for webhook all" in caplog.text
    assert "https://a.example" not in caplog.text


def test_after_the_cooldown_the_publisher_tries_again() -> None:
    queue = FakeQueue(error=RuntimeError("queue down"))
    flaky = publisher(queue, cooldown=0.05)
    flaky.publish(event("requested"))
    queue.error = None
    time.sleep(0.1)

    flaky.publish(event("requested"))

    assert flaky.sent == 2


def test_even_a_broken_event_never_raises() -> None:
    class Exploding:
        kind = "requested"

        def payload(self, broker_url: str | None = None) -> dict[str, Any]:
            raise ValueError("boom")

    counted = publisher(FakeQueue())
    counted.publish(Exploding())  # type: ignore[arg-type]

    assert counted.failed == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_queue_that_does_not_answer_costs_a_grant_seconds_at_most() -> None:
    connection = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"QueueEndpoint=http://127.0.0.1:{_closed_port()}/devstoreaccount1;"
    )
    settings = NotifySettings.from_env({"JIT_QUEUE_CONNECTION_STRING": connection})
    down = QueuePublisher(queue_client(settings), BROKER_URL, webhooks=HOOKS)

    started = time.monotonic()
    down.publish(event("requested"))
    first = time.monotonic() - started
    started = time.monotonic()
    down.publish(event("requested"))
    second = time.monotonic() - started

    assert down.failed == 1
    assert first < 8.0
    assert second < 0.05  # in the cooldown: dropped at once


def test_messages_are_base64_text_as_the_functions_queue_trigger_reads_them(azurite: Azurite) -> None:
    name = f"ev-{uuid.uuid4().hex[:12]}"
    settings = NotifySettings.from_env(
        {"JIT_EVENTS_QUEUE": name, "JIT_QUEUE_CONNECTION_STRING": azurite.connection_string}
    )
    fresh = QueuePublisher(queue_client(settings), BROKER_URL, webhooks=HOOKS[:1])

    fresh.publish(event("granted"))  # the queue does not exist yet: the publisher makes it

    raw = QueueClient.from_connection_string(azurite.connection_string, name)  # no decoding: the wire text
    try:
        (message,) = list(raw.receive_messages())
        document = json.loads(base64.b64decode(message.content))
        assert document["webhook"] == "all"
        assert document["event"]["event"] == "granted"
        assert fresh.sent == 1
    finally:
        raw.delete_queue()


def test_what_the_publisher_enqueues_is_what_deliver_reads() -> None:
    queue = FakeQueue()
    posted: list[tuple[str, dict[str, Any]]] = []

    def http(url: str, body: bytes, headers: Any) -> int:
        posted.append((url, json.loads(body)))
        return 202

    publisher(queue).publish(event("requested"))
    for message in queue.sent:
        deliver(message, HOOKS, "lab-webhook-secret-0123456789", http)

    assert [url for url, _ in posted] == ["https://a.example/h", "https://b.example/h"]
    assert posted[0][1] == event("requested").payload(BROKER_URL)
    assert posted[1][1]["type"] == "message"
