"""Notifications: lifecycle events go through a Storage queue to webhooks, never blocking or failing a grant.

The flow (docs/notifications.md):

1. The lifecycle calls `publisher.publish(Event(...))` after a step is recorded. `QueuePublisher` turns the
   event into its payload and enqueues **one message per webhook that wants that kind** — so a webhook that
   is down is retried on its own, and the healthy ones get each event once. It never raises: a queue that
   cannot be reached is logged and counted, and for a short cooldown later events are dropped at once
   instead of each waiting for the same timeout.
2. The queue-triggered function `deliver` (function_app.py; in the lab `python -m lab.broker deliver`)
   hands each message to `deliver_message`, which posts it in its webhook's format (`jitbroker.webhooks`).
   A failure (no answer, not 2xx) raises, so the Functions host makes the message visible again and retries
   it; after `maxDequeueCount` tries (5 by default) the host moves it to `<queue>-poison`.

Messages are base64-encoded text, as the Functions queue trigger reads them by default (host.json's
`extensions.queues.messageEncoding` unset). Each is JSON: `{"v": 1, "id": <delivery id>, "webhook":
<webhook name>, "event": <Event.payload()>}`; the webhook's name, never its URL (a secret), travels.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from jitbroker.config import ConfigError, NotifySettings, WebhookTarget
from jitbroker.events import Event, NoPublisher, Publisher

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.queue import QueueClient

    from jitbroker.webhooks import Post

log = logging.getLogger(__name__)

MESSAGE_VERSION = 1
#: The Functions host's default `maxDequeueCount`: tries before a message goes to the poison queue.
MAX_DEQUEUE_COUNT = 5
#: Seconds the publisher drops events after the queue failed, so a queue outage costs one timeout, not many.
COOLDOWN_S = 15.0
#: At most ~4 s for a queue that does not answer (no retry): a 20 s answer budget plus this stays under 25 s.
QUEUE_CONNECTION_TIMEOUT_S = 2
QUEUE_READ_TIMEOUT_S = 2


class QueueSender(Protocol):
    """What the publisher needs of a queue (`azure.storage.queue.QueueClient` in Azure and the lab)."""

    def send_message(self, content: str) -> object: ...
    def create_queue(self) -> object: ...


class QueuePublisher:
    """`Publisher` onto the events queue: one message per interested webhook; never raises.

    `queue` is an `azure.storage.queue.QueueClient` (base64 text encoding, short timeouts: `queue_client`);
    `broker_url` makes the approve link (`JIT_PUBLIC_URL`); `webhooks` are the targets to fan out to.
    `sent`, `failed` and `dropped` count messages enqueued, events the queue refused, events skipped in a
    cooldown.
    """

    def __init__(
        self,
        queue: QueueSender,
        broker_url: str | None,
        *,
        webhooks: Sequence[WebhookTarget],
        cooldown: float = COOLDOWN_S,
    ) -> None:
        self._queue = queue
        self._broker_url = broker_url
        self._webhooks = tuple(webhooks)
        self._cooldown = cooldown
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def publish(self, event: Event) -> None:
        """Enqueue `event` for each webhook that wants it; log and count any failure, raise none."""
        try:
            self._publish(event)
        except Exception:  # a notification must never fail a grant
            with self._lock:
                self.failed += 1
            log.exception("could not publish the %s event; its notifications are lost", event.kind)

    def _publish(self, event: Event) -> None:
        targets = [hook for hook in self._webhooks if hook.wants(event.kind)]
        if not targets:
            return
        with self._lock:
            if time.monotonic() < self._paused_until:
                self.dropped += 1
                log.warning("events queue unavailable lately: the %s event is not sent", event.kind)
                return
        payload = event.payload(self._broker_url)
        for hook in targets:
            message = encode_message(payload, webhook=hook.name)
            try:
                self._send(message)
            except Exception as err:
                with self._lock:
                    self.failed += 1
                    self._paused_until = time.monotonic() + self._cooldown
                grant = payload["grant"]["id"] if payload.get("grant") else "-"
                log.warning(
                    "could not enqueue the %s event of grant %s for webhook %s (%s); its notifications are "
                    "lost, and events in the next %.0f s are not sent",
                    event.kind,
                    grant,
                    hook.name,
                    type(err).__name__,
                    self._cooldown,
                )
                return
            with self._lock:
                self.sent += 1

    def _send(self, message: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._queue.send_message(message)
        except ResourceNotFoundError:  # a fresh lab (or a queue deleted by hand): make it, once, and resend
            self._queue.create_queue()
            self._queue.send_message(message)


def encode_message(payload: Mapping[str, Any], *, webhook: str | None) -> str:
    """One queue message: the payload for one webhook (None: every webhook that wants it)."""
    message: dict[str, Any] = {"v": MESSAGE_VERSION, "id": uuid.uuid4().hex, "event": payload}
    if webhook is not None:
        message["webhook"] = webhook
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def deliver(
    message_json: str,
    webhooks: Sequence[WebhookTarget],
    secret: str | None,
    http: Post | None = None,
    *,
    now: float | None = None,
) -> list[str]:
    """Post one queue message's event to its webhook(s); the names delivered to.

    A message naming a webhook goes to that one only (one named in no current setting is dropped with a
    warning: retrying cannot help). A message without one goes to every webhook that wants its kind. Raises
    `WebhookError` when a webhook did not take it (the queue retries the message) and `ValueError` for a
    message that is not ours (it fails every try and ends in the poison queue, where it can be read).
    """
    from jitbroker.webhooks import WebhookError, post, request_for

    send = http or post
    message = json.loads(message_json)
    if not isinstance(message, dict) or not isinstance(message.get("event"), dict):
        raise ValueError("not a jit-broker event message")
    payload: dict[str, Any] = message["event"]
    kind = str(payload.get("event", ""))
    delivery = str(message.get("id") or uuid.uuid4().hex)
    named = message.get("webhook")
    if named is not None:
        targets = [hook for hook in webhooks if hook.name == named]
        if not targets:
            log.warning(
                "event %s for webhook %s: no webhook of that name is configured now; dropped", kind, named
            )
            return []
    else:
        targets = [hook for hook in webhooks if hook.wants(kind)]
    delivered: list[str] = []
    failures: list[str] = []
    for hook in targets:
        body, headers = request_for(
            hook.format,
            payload,
            secret=secret,
            delivery=delivery if named is not None else f"{delivery}.{hook.name}",
            now=now,
        )
        try:
            status = send(hook.url, body, headers)
        except OSError as err:  # refused, reset, timed out, TLS: no answer at all
            failures.append(f"webhook {hook.name} did not answer ({type(err).__name__})")
            continue
        if 200 <= status < 300:
            delivered.append(hook.name)
        else:
            failures.append(f"webhook {hook.name} answered HTTP {status}")
    if failures:
        raise WebhookError(f"{kind} event not delivered: " + "; ".join(failures))
    return delivered


_worker_lock = threading.Lock()
_worker_settings: NotifySettings | None = None


def deliver_message(
    message_json: str, *, dequeue_count: int | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The queue-triggered function's body: deliver with this process's settings; log how failures go on."""
    settings = _delivery_settings(environ)
    try:
        return deliver(message_json, settings.webhooks, settings.webhook_secret)
    except Exception as err:
        tries = dequeue_count or 0
        if tries >= MAX_DEQUEUE_COUNT:
            # The operators' alert keys on this message's start and dimensions (docs/operations.md).
            log.error(
                "notification undeliverable: %s; try %d, the last: the message goes to %s",
                err,
                tries,
                settings.poison_queue,
                extra={"error": str(err), "tries": tries, "poison_queue": settings.poison_queue},
            )
        else:
            log.warning("%s; try %d of %d, the queue tries again", err, tries, MAX_DEQUEUE_COUNT)
        raise


def _delivery_settings(environ: Mapping[str, str] | None) -> NotifySettings:
    global _worker_settings  # noqa: PLW0603 - read once per process, like the broker's settings
    if environ is not None:
        return NotifySettings.from_env(environ)
    with _worker_lock:
        if _worker_settings is None:
            _worker_settings = NotifySettings.from_env()
        return _worker_settings


def queue_client(
    settings: NotifySettings, credential: TokenCredential | None = None, *, name: str | None = None
) -> QueueClient:
    """A client of the events queue (or `name`, e.g. the poison queue): base64 text, short timeouts.

    The connection string (Azurite in the lab) wins; otherwise the endpoint with `credential`, by default the
    broker's managed identity (`AZURE_CLIENT_ID`), as for its tables.
    """
    from azure.storage.queue import (
        ExponentialRetry,
        QueueClient,
        TextBase64DecodePolicy,
        TextBase64EncodePolicy,
    )

    queue = name or settings.events_queue
    options: dict[str, Any] = {
        "message_encode_policy": TextBase64EncodePolicy(),
        "message_decode_policy": TextBase64DecodePolicy(),
        "connection_timeout": QUEUE_CONNECTION_TIMEOUT_S,
        "read_timeout": QUEUE_READ_TIMEOUT_S,
        "retry_policy": ExponentialRetry(retry_total=0),  # a lost event beats a slow grant
    }
    if settings.queue_connection_string:
        return QueueClient.from_connection_string(settings.queue_connection_string, queue, **options)
    if not settings.queue_endpoint:
        raise ConfigError("set JIT_QUEUE_ENDPOINT (Azure) or JIT_QUEUE_CONNECTION_STRING (local)")
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
    return QueueClient(settings.queue_endpoint, queue, credential=credential, **options)


def publisher_from_settings(settings: NotifySettings, credential: TokenCredential | None = None) -> Publisher:
    """The broker's publisher: `NoPublisher` when no webhook is configured, else a `QueuePublisher`.

    Opens no connection (the first event does). Pass the broker's own credential (`AzureClients.credential`)
    to share its token cache.
    """
    if not settings.enabled:
        return NoPublisher()
    return QueuePublisher(queue_client(settings, credential), settings.public_url, webhooks=settings.webhooks)


def publisher_from_env(
    environ: Mapping[str, str] | None = None, credential: TokenCredential | None = None
) -> Publisher:
    """`publisher_from_settings` from the environment, for a process that must run whatever they say (the
    sweeper): a notification setting in error is logged and notifications are off, expiry goes on."""
    try:
        return publisher_from_settings(NotifySettings.from_env(environ), credential)
    except ConfigError as err:
        log.error("notifications are off: %s", err)
        return NoPublisher()
