"""Notification test fixtures: events and grants, a webhook receiver, queues on the session's Azurite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from jitbroker.events import Actor, Event
from jitbroker.model import Grant, GrantStatus
from lab.webhooks import WebhookReceiver

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

    from lab.azurite import Azurite

SECRET = "lab-webhook-secret-0123456789"  # a test key
AT = datetime(2030, 1, 2, 10, 0, tzinfo=UTC)
BROKER_URL = "https://jit.example.org"


def grant(**changes: Any) -> Grant:
    """bob's grant for prod-01:22, waiting for an approver; `changes` replace fields."""
    base = Grant(
        id="g-0123456789abcdef",
        principal="b0b00000-0000-4000-8000-000000000002",
        principal_name="bob@contoso.example",
        vm_id="/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/prod-01",
        vm_name="prod-01",
        port=22,
        protocol="tcp",
        source="203.0.113.7/32",
        status=GrantStatus.AWAITING_APPROVAL,
        created_at=AT,
        expires_at=AT + timedelta(hours=1),
        updated_at=AT,
        justification="deploy the hotfix for INC-42",
        approval_required=True,
        approver_role="JIT.Approver.Prod",
        requested_seconds=3600,
    )
    return replace(base, **changes)


def event(kind: str = "requested", **changes: Any) -> Event:
    """An event of `kind` about `grant()`, at AT; `changes` replace Event fields."""
    fields: dict[str, Any] = {"kind": kind, "at": AT, "grant": grant()}
    if kind in ("approved", "denied"):
        fields["actor"] = Actor("ca401000-0000-4000-8000-000000000003", "carol@contoso.example")
        fields["reason"] = "change ticket CHG-7 approved"
    fields.update(changes)
    return Event(**fields)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on a free loopback port that knows the test secret."""
    with WebhookReceiver(SECRET) as running:
        yield running


@pytest.fixture
def queues(azurite: Azurite) -> Iterator[tuple[QueueClient, QueueClient, str]]:
    """A fresh events queue and its poison queue on the session's Azurite: (queue, poison, connection)."""
    from jitbroker.config import NotifySettings
    from jitbroker.notify import queue_client

    name = f"ev-{uuid.uuid4().hex[:12]}"
    settings = NotifySettings.from_env(
        {"JIT_EVENTS_QUEUE": name, "JIT_QUEUE_CONNECTION_STRING": azurite.connection_string}
    )
    queue = queue_client(settings)
    poison = queue_client(settings, name=settings.poison_queue)
    queue.create_queue()
    poison.create_queue()
    yield queue, poison, azurite.connection_string
    queue.delete_queue()
    poison.delete_queue()
