"""The lab's parts for notifications: Azurite's Queue service, the lab settings, the webhook receiver."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import lab.azurite
from jitbroker.config import NotifySettings
from jitbroker.webhooks import request_for
from lab.azurite import Azurite, AzuriteError
from lab.scenario import Scenario
from lab.settings import broker_settings, redacted
from lab.webhooks import WebhookReceiver
from tests.notify.conftest import SECRET, event


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_the_connection_string_names_the_queue_endpoint_too(azurite: Azurite) -> None:
    assert (
        f"QueueEndpoint=http://127.0.0.1:{azurite.queue_port}/devstoreaccount1;" in azurite.connection_string
    )
    assert azurite.queue_port != azurite.port


def test_azurite_can_run_its_table_service_alone(tmp_path) -> None:
    with Azurite(tmp_path / "data", queues=False) as tables_only:
        assert "QueueEndpoint" not in tables_only.connection_string
        with pytest.raises(AzuriteError, match="without its Queue service"):
            _ = tables_only.queue_endpoint


def test_a_missing_queue_service_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(lab.azurite, "AZURITE_QUEUE", tmp_path / "no-such-azurite-queue")

    with pytest.raises(AzuriteError, match="make setup"):
        Azurite(tmp_path / "data").start()


def test_lab_settings_reach_azurites_queue_with_notifications_off_by_default(scenario: Scenario) -> None:
    connection = (
        "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:1/a;"
    )
    settings = broker_settings(
        scenario,
        issuer_url="https://127.0.0.1:4001",
        arm_url="https://127.0.0.1:4002",
        table_connection_string=connection,
        ca_bundle="/tmp/ca.pem",
        identity_endpoint="http://127.0.0.1:4005/msi/token",
        identity_header="h",
    )

    notify = NotifySettings.from_env(settings)
    assert notify.queue_connection_string == connection
    assert not notify.enabled


def test_printing_lab_settings_masks_the_webhook_secret(scenario: Scenario) -> None:
    with WebhookReceiver(SECRET) as receiver:
        shown = redacted({"JIT_WEBHOOK_SECRET": SECRET, **receiver.settings()})
    assert SECRET not in json.dumps(shown)


def test_the_receiver_refuses_a_generic_delivery_with_a_bad_signature(receiver: WebhookReceiver) -> None:
    body, headers = request_for(
        "generic", event().payload(), secret="someone-elses-secret-0123", delivery="d"
    )

    assert post(receiver.url("generic"), body, headers) == 401
    assert post(receiver.url("generic"), body, {"Content-Type": "application/json"}) == 401
    assert receiver.received == []
    assert receiver.refused == 2


def test_the_receiver_answers_500_as_often_as_told_then_records(receiver: WebhookReceiver) -> None:
    body, headers = request_for("slack", event().payload(), secret=None, delivery="d")
    receiver.fail_next(2)

    assert [post(receiver.url("slack"), body, headers) for _ in range(3)] == [500, 500, 200]
    assert receiver.attempts == 3
    assert [d.path for d in receiver.received] == ["/slack"]


def test_the_receiver_settings_are_webhook_settings_the_broker_accepts(receiver: WebhookReceiver) -> None:
    env = {"JIT_QUEUE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    env |= receiver.settings(("generic", "teams", "slack"), events=["requested"])

    settings = NotifySettings.from_env(env)

    assert [(h.name, h.format) for h in settings.webhooks] == [
        ("lab-generic", "generic"),
        ("lab-teams", "teams"),
        ("lab-slack", "slack"),
    ]
    assert all(h.events == {"requested"} for h in settings.webhooks)
    assert settings.webhook_secret == SECRET
