"""The queue-triggered function: indexed as the worker indexes it, identity-based, and cheap to import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage

import jitbroker.notify
from jitbroker.webhooks import WebhookError
from lab.webhooks import WebhookReceiver
from tests.broker.test_function_app import index_function_app
from tests.notify.conftest import BROKER_URL, event

ROOT = Path(__file__).resolve().parents[2]


def deliver_function() -> func.decorators.function_app.Function:
    (found,) = [f for f in index_function_app() if f.get_function_name() == "deliver"]
    return found


def test_deliver_is_a_queue_trigger_on_the_events_queue_with_an_identity_based_connection() -> None:
    (binding,) = (b.get_dict_repr() for b in deliver_function().get_bindings())

    assert binding["type"] == "queueTrigger"
    assert binding["queueName"] == "%JIT_EVENTS_QUEUE%"  # the same app setting the publisher reads
    assert binding["connection"] == "JitEvents"  # JitEvents__queueServiceUri, __credential, __clientId
    document = json.loads(deliver_function().get_function_json())
    assert document["scriptFile"] == "function_app.py"


def test_host_json_keeps_the_queue_triggers_default_base64_encoding() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    queues = host.get("extensions", {}).get("queues", {})
    assert queues.get("messageEncoding", "base64") == "base64"  # what QueuePublisher writes
    assert queues.get("maxDequeueCount", 5) == jitbroker.notify.MAX_DEQUEUE_COUNT


@pytest.fixture
def fresh_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The function reads its settings once per process: start from none."""
    monkeypatch.setattr(jitbroker.notify, "_worker_settings", None)


def queue_message(body: str, dequeue_count: int = 1) -> func.QueueMessage:
    """What the Python worker hands the function (its QueueMessage knows the dequeue count)."""
    return QueueMessage(body=body.encode(), dequeue_count=dequeue_count)  # type: ignore[no-untyped-call]


def set_env(monkeypatch: pytest.MonkeyPatch, receiver: WebhookReceiver) -> None:
    monkeypatch.setenv("JIT_QUEUE_CONNECTION_STRING", "UseDevelopmentStorage=true")
    for name, value in receiver.settings().items():
        monkeypatch.setenv(name, value)


def test_the_function_posts_the_message_to_its_webhook(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch, fresh_worker: None
) -> None:
    for name, value in {
        "JIT_QUEUE_CONNECTION_STRING": "UseDevelopmentStorage=true",
        **receiver.settings(),
    }.items():
        monkeypatch.setenv(name, value)
    body = jitbroker.notify.encode_message(event("requested").payload(BROKER_URL), webhook="lab-generic")

    deliver_function().get_user_function()(queue_message(body), None)

    (arrived,) = receiver.received
    assert arrived.verified is True
    assert arrived.json["grant"]["id"] == "g-0123456789abcdef"


def test_a_failed_delivery_raises_so_the_host_retries_it(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch, fresh_worker: None
) -> None:
    for name, value in {
        "JIT_QUEUE_CONNECTION_STRING": "UseDevelopmentStorage=true",
        **receiver.settings(),
    }.items():
        monkeypatch.setenv(name, value)
    receiver.fail_next(1)
    body = jitbroker.notify.encode_message(event("granted").payload(), webhook="lab-generic")

    with pytest.raises(WebhookError):
        deliver_function().get_user_function()(queue_message(body, dequeue_count=2), None)


def test_importing_function_app_loads_no_notification_code() -> None:
    probe = (
        "import sys, function_app; "
        "print(sorted(m for m in sys.modules if m.startswith(('azure.storage', 'jitbroker.notify', "
        "'jitbroker.webhooks'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)

    assert done.stdout.strip().splitlines()[-1] == "[]"
