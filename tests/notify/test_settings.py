"""The notification settings: read on their own, validated with every problem named, secrets never echoed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jitbroker.config import ConfigError, NotifySettings, WebhookTarget
from jitbroker.events import NoPublisher
from jitbroker.notify import QueuePublisher, publisher_from_env, publisher_from_settings
from tests.notify.conftest import SECRET

QUEUE = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;"
SLACK = "https://hooks.slack.example/services/T000/B000/secret-token"


def env(hooks: list[dict[str, Any]] | None = None, **extra: str) -> dict[str, str]:
    values = {"JIT_QUEUE_CONNECTION_STRING": QUEUE, "JIT_WEBHOOK_SECRET": SECRET}
    if hooks is not None:
        values["JIT_WEBHOOKS"] = json.dumps(hooks)
    values.update(extra)
    return values


def test_no_webhooks_means_notifications_off_and_no_publisher() -> None:
    settings = NotifySettings.from_env({})

    assert not settings.enabled
    assert settings.events_queue == "jit-events"
    assert settings.poison_queue == "jit-events-poison"
    assert isinstance(publisher_from_settings(settings), NoPublisher)


def test_webhooks_are_read_with_their_format_events_and_a_stable_name() -> None:
    settings = NotifySettings.from_env(
        env(
            [
                {"url": "https://hooks.example/generic"},
                {"url": SLACK, "format": "slack", "events": ["requested", "expiring"]},
                {
                    "url": "https://prod-00.westeurope.logic.azure.example/wf",
                    "format": "teams",
                    "name": "ops",
                },
            ],
            JIT_PUBLIC_URL="https://jit.example.org/",
        )
    )

    generic, slack, teams = settings.webhooks
    assert (generic.format, generic.events) == ("generic", frozenset())
    assert slack.format == "slack"
    assert slack.wants("requested") and not slack.wants("granted")
    assert teams.name == "ops"
    assert (
        generic.name
        == NotifySettings.from_env(env([{"url": "https://hooks.example/generic"}])).webhooks[0].name
    )
    assert settings.public_url == "https://jit.example.org"
    assert isinstance(publisher_from_settings(settings), QueuePublisher)


@pytest.mark.parametrize(
    ("hooks", "complaint"),
    [
        ("not json", "JIT_WEBHOOKS: is not JSON"),
        ('{"url": "https://x.example"}', "must be a JSON list"),
        ([{"format": "generic"}], "webhook 1 needs a url"),
        ([{"url": "http://hooks.example/x"}], "must be an https:// URL"),
        ([{"url": "https://x.example", "format": "discord"}], "format must be one of generic, teams, slack"),
        ([{"url": "https://x.example", "events": ["granted", "opened"]}], "unknown events opened"),
        ([{"url": "https://x.example", "event": ["granted"]}], "unknown keys event"),
        (
            [{"url": "https://x.example"}, {"url": "https://x.example"}],
            "webhook 2: another webhook has the name",
        ),
        ([{"url": "https://x.example", "name": "has space"}], "name must be"),
        (
            "@Microsoft.KeyVault(VaultName=kv;SecretName=jit-webhooks)",
            "Key Vault reference the platform could not resolve",
        ),
    ],
)
def test_a_bad_webhook_list_is_refused_saying_what_is_wrong(hooks: Any, complaint: str) -> None:
    raw = hooks if isinstance(hooks, str) else json.dumps(hooks)

    with pytest.raises(ConfigError, match="invalid broker settings") as raised:
        NotifySettings.from_env(env(JIT_WEBHOOKS=raw))

    assert complaint in str(raised.value)


def test_a_refused_webhook_list_never_echoes_its_urls() -> None:
    with pytest.raises(ConfigError) as raised:
        NotifySettings.from_env(env([{"url": SLACK, "format": "slack"}, {"url": SLACK + "x", "format": "x"}]))

    assert "secret-token" not in str(raised.value)
    assert "webhook 2: format must be" in str(raised.value)


def test_webhook_urls_and_secrets_never_show_in_a_repr() -> None:
    settings = NotifySettings.from_env(env([{"url": SLACK, "format": "slack"}]))

    shown = repr(settings)
    assert "secret-token" not in shown
    assert SECRET not in shown
    assert "AccountKey" not in shown
    assert "slack" in shown


def test_a_generic_webhook_needs_a_long_enough_secret() -> None:
    hooks = [{"url": "https://hooks.example/generic"}]
    with pytest.raises(ConfigError, match="JIT_WEBHOOK_SECRET is required"):
        NotifySettings.from_env(env(hooks, JIT_WEBHOOK_SECRET=""))
    with pytest.raises(ConfigError, match="at least 16 characters"):
        NotifySettings.from_env(env(hooks, JIT_WEBHOOK_SECRET="short"))
    with pytest.raises(ConfigError, match="Key Vault reference"):
        NotifySettings.from_env(env(hooks, JIT_WEBHOOK_SECRET="@Microsoft.KeyVault(SecretUri=https://kv/x)"))


def test_chat_webhooks_alone_need_no_secret() -> None:
    settings = NotifySettings.from_env(env([{"url": SLACK, "format": "slack"}], JIT_WEBHOOK_SECRET=""))

    assert settings.webhook_secret is None


def test_webhooks_need_the_events_queue() -> None:
    with pytest.raises(ConfigError, match="set JIT_QUEUE_ENDPOINT"):
        NotifySettings.from_env(env([{"url": SLACK, "format": "slack"}], JIT_QUEUE_CONNECTION_STRING=""))


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("JIT_EVENTS_QUEUE", "Jit_Events", "lowercase letters"),
        ("JIT_EVENTS_QUEUE", "jit--events", "single hyphens"),
        ("JIT_EVENTS_QUEUE", "x" * 57, "3 to 56"),
        ("JIT_QUEUE_ENDPOINT", "http://acct.queue.core.windows.net", "https://"),
        ("JIT_PUBLIC_URL", "http://jit.example.org", "https://"),
    ],
)
def test_a_bad_queue_or_url_setting_is_named(name: str, value: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        NotifySettings.from_env(env([{"url": SLACK, "format": "slack"}], **{name: value}))

    assert name in str(raised.value)
    assert complaint in str(raised.value)


def test_the_lab_may_use_http_on_loopback_only() -> None:
    for url in ("http://127.0.0.1:8089/generic", "http://localhost:1/x", "http://[::1]:2/x"):
        hooks = [{"url": url}]
        assert NotifySettings.from_env(env(hooks, JIT_PUBLIC_URL=url)).webhooks[0].url == url
    with pytest.raises(ConfigError):
        NotifySettings.from_env(env([{"url": "http://127.0.0.1@evil.example/x"}]))


def test_the_sweepers_publisher_turns_notifications_off_on_a_bad_setting(caplog) -> None:
    publisher = publisher_from_env(env(JIT_WEBHOOKS="[{"))

    assert isinstance(publisher, NoPublisher)
    assert "notifications are off" in caplog.text


def test_webhook_target_wants_every_kind_without_a_filter() -> None:
    hook = WebhookTarget(name="a", url="https://x.example")
    assert hook.wants("granted") and hook.wants("orphan_removed")
