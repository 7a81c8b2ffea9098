"""The broker's settings: one frozen, typed object read once from the app settings (environment), validated.

The names are exactly those of `local.settings.sample.json`; that file and this module tell the same story.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import TypeVar

from jitbroker.durations import parse_duration
from jitbroker.errors import InvalidRequest

T = TypeVar("T")

ADDRESS_SOURCES = ("x-forwarded-for", "peer")
SourceRange = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """One or more app settings are missing or malformed; the message lists every problem at once."""


@dataclass(frozen=True)
class Settings:
    """Everything the broker is configured with; built by `from_env`, never mutated."""

    authority_host: str
    tenant_id: str
    api_client_id: str
    app_id_uri: str
    token_versions: frozenset[int]
    v1_issuer: str | None
    requester_role: str
    admin_role: str
    auditor_role: str
    approver_role: str
    approval_wait: timedelta
    approval_use_window: timedelta
    expiring_minutes: int
    api_scope: str
    allowed_client_apps: frozenset[str]
    key_refresh_cooldown_seconds: int
    web_client_id: str | None

    allowed_scopes: tuple[str, ...]
    priority_min: int
    priority_max: int
    default_duration: timedelta
    max_duration: timedelta
    max_total_duration: timedelta
    max_source_prefix_v4: int
    max_source_prefix_v6: int
    client_address_from: str
    topology_cache_seconds: int
    source_override_role: str
    allow_private_sources: bool
    extra_source_ranges: tuple[SourceRange, ...]
    max_open_grants_per_principal: int
    max_sources_per_principal: int

    arm_endpoint: str
    table_endpoint: str | None
    table_connection_string: str | None
    table_prefix: str
    azure_client_id: str | None

    sweep_schedule: str
    sweep_batch: int
    pending_grace: timedelta
    arm_poll_seconds: float
    arm_timeout_seconds: float
    answer_budget_seconds: float
    sweep_budget_seconds: float

    def sweep(self) -> SweepSettings:
        """The part of these settings the sweeper is built from."""
        return SweepSettings(**{f.name: getattr(self, f.name) for f in fields(SweepSettings)})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; `ConfigError` names each missing or malformed one."""
        reader = _Reader(os.environ if environ is None else environ)
        settings = cls(
            authority_host=reader.url("JIT_AUTHORITY_HOST"),
            tenant_id=reader.text("JIT_TENANT_ID"),
            api_client_id=reader.text("JIT_API_CLIENT_ID"),
            app_id_uri=reader.text("JIT_API_APP_ID_URI"),
            token_versions=reader.parse("JIT_TOKEN_VERSIONS", _token_versions, "2"),
            v1_issuer=reader.optional("JIT_V1_ISSUER"),
            requester_role=reader.text("JIT_REQUESTER_ROLE", "JIT.Requester"),
            admin_role=reader.text("JIT_ADMIN_ROLE", "JIT.Admin"),
            auditor_role=reader.text("JIT_AUDITOR_ROLE", "JIT.Auditor"),
            approver_role=reader.text("JIT_APPROVER_ROLE", "JIT.Approver"),
            approval_wait=reader.duration("JIT_APPROVAL_WAIT", "PT1H"),
            approval_use_window=reader.duration("JIT_APPROVAL_USE_WINDOW", "PT15M"),
            expiring_minutes=reader.integer("JIT_EXPIRING_MINUTES", "10", low=0, high=1440),
            api_scope=reader.parse("JIT_API_SCOPE", _scope_value, "user_impersonation"),
            allowed_client_apps=reader.parse("JIT_ALLOWED_CLIENT_APPS", _client_ids, ""),
            key_refresh_cooldown_seconds=reader.integer(
                "JIT_KEY_REFRESH_COOLDOWN_SECONDS", "300", low=10, high=3600
            ),
            web_client_id=reader.parse("JIT_WEB_CLIENT_ID", _optional_client_id, ""),
            allowed_scopes=reader.parse("JIT_ALLOWED_SCOPES", _scopes),
            priority_min=reader.integer("JIT_PRIORITY_MIN", "100", low=100, high=4096),
            priority_max=reader.integer("JIT_PRIORITY_MAX", "199", low=100, high=4096),
            default_duration=reader.duration("JIT_DEFAULT_DURATION", "PT1H"),
            max_duration=reader.duration("JIT_MAX_DURATION", "PT4H"),
            max_total_duration=reader.duration("JIT_MAX_TOTAL_DURATION", "PT8H"),
            max_source_prefix_v4=reader.integer("JIT_MAX_SOURCE_PREFIX_V4", "32", low=8, high=32),
            max_source_prefix_v6=reader.integer("JIT_MAX_SOURCE_PREFIX_V6", "128", low=32, high=128),
            client_address_from=reader.choice("JIT_CLIENT_ADDRESS_FROM", ADDRESS_SOURCES, "x-forwarded-for"),
            topology_cache_seconds=reader.integer("JIT_TOPOLOGY_CACHE_SECONDS", "60", low=0, high=3600),
            source_override_role=reader.text("JIT_SOURCE_OVERRIDE_ROLE", "JIT.SourceOverride"),
            allow_private_sources=reader.parse("JIT_ALLOW_PRIVATE_SOURCES", _boolean, "false"),
            extra_source_ranges=reader.parse("JIT_EXTRA_SOURCE_RANGES", _source_ranges, ""),
            max_open_grants_per_principal=reader.integer(
                "JIT_MAX_OPEN_GRANTS_PER_PRINCIPAL", "10", low=1, high=1000
            ),
            max_sources_per_principal=reader.integer("JIT_MAX_SOURCES_PER_PRINCIPAL", "3", low=1, high=100),
            arm_endpoint=reader.url("JIT_ARM_ENDPOINT", "https://management.azure.com"),
            table_endpoint=reader.optional("JIT_TABLE_ENDPOINT"),
            table_connection_string=reader.optional("JIT_TABLE_CONNECTION_STRING"),
            table_prefix=reader.parse("JIT_TABLE_PREFIX", _table_prefix, "jit"),
            azure_client_id=reader.optional("AZURE_CLIENT_ID"),
            sweep_schedule=reader.text("JIT_SWEEP_SCHEDULE", "0 * * * * *"),
            sweep_batch=reader.integer("JIT_SWEEP_BATCH", "200", low=1, high=5000),
            pending_grace=reader.duration("JIT_PENDING_GRACE", "PT2M"),
            arm_poll_seconds=reader.number("JIT_ARM_POLL_SECONDS", "1", low=0.0, high=60.0),
            arm_timeout_seconds=reader.number("JIT_ARM_TIMEOUT_SECONDS", "60", low=1.0, high=600.0),
            answer_budget_seconds=reader.number("JIT_ANSWER_BUDGET_SECONDS", "20", low=1.0, high=25.0),
            sweep_budget_seconds=reader.number("JIT_SWEEP_BUDGET_SECONDS", "90", low=5.0, high=600.0),
        )
        reader.check(settings)
        reader.raise_if_any()
        return settings


@dataclass(frozen=True)
class SweepSettings:
    """What the sweeper needs, and nothing else: a settings error elsewhere never stops expiry."""

    priority_min: int
    priority_max: int
    arm_endpoint: str
    table_endpoint: str | None
    table_connection_string: str | None
    table_prefix: str
    azure_client_id: str | None
    sweep_batch: int
    pending_grace: timedelta
    arm_poll_seconds: float
    arm_timeout_seconds: float
    sweep_budget_seconds: float
    approval_use_window: timedelta
    expiring_minutes: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SweepSettings:
        """Read and validate the sweeper's settings only; `ConfigError` names each bad one."""
        reader = _Reader(os.environ if environ is None else environ)
        settings = cls(
            priority_min=reader.integer("JIT_PRIORITY_MIN", "100", low=100, high=4096),
            priority_max=reader.integer("JIT_PRIORITY_MAX", "199", low=100, high=4096),
            arm_endpoint=reader.url("JIT_ARM_ENDPOINT", "https://management.azure.com"),
            table_endpoint=reader.optional("JIT_TABLE_ENDPOINT"),
            table_connection_string=reader.optional("JIT_TABLE_CONNECTION_STRING"),
            table_prefix=reader.parse("JIT_TABLE_PREFIX", _table_prefix, "jit"),
            azure_client_id=reader.optional("AZURE_CLIENT_ID"),
            sweep_batch=reader.integer("JIT_SWEEP_BATCH", "200", low=1, high=5000),
            pending_grace=reader.duration("JIT_PENDING_GRACE", "PT2M"),
            arm_poll_seconds=reader.number("JIT_ARM_POLL_SECONDS", "1", low=0.0, high=60.0),
            arm_timeout_seconds=reader.number("JIT_ARM_TIMEOUT_SECONDS", "60", low=1.0, high=600.0),
            sweep_budget_seconds=reader.number("JIT_SWEEP_BUDGET_SECONDS", "90", low=5.0, high=600.0),
            approval_use_window=reader.duration("JIT_APPROVAL_USE_WINDOW", "PT15M"),
            expiring_minutes=reader.integer("JIT_EXPIRING_MINUTES", "10", low=0, high=1440),
        )
        if not settings.priority_min <= settings.priority_max:
            reader.problem("JIT_PRIORITY_MIN must not be above JIT_PRIORITY_MAX")
        if not (settings.table_connection_string or settings.table_endpoint):
            reader.problem("set JIT_TABLE_ENDPOINT (Azure) or JIT_TABLE_CONNECTION_STRING (local)")
        reader.raise_if_any()
        return settings


class _Reader:
    """Collects every problem instead of stopping at the first, so one start-up error says it all."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = environ
        self._problems: list[str] = []

    def _raw(self, name: str, default: str | None) -> str | None:
        value = self._env.get(name, "").strip()
        if value.startswith("<") and value.endswith(">"):
            self._problems.append(f"{name} is still the placeholder {value}")
            return None
        if not value and default is None:
            return None
        return value or default

    def parse(self, name: str, convert: Callable[[str], T], default: str | None = None) -> T:
        raw = self._raw(name, default)
        if raw is None:
            if not any(p.startswith(name + " ") for p in self._problems):
                self._problems.append(f"{name} is required")
            return None  # type: ignore[return-value]  # never returned to a caller: raise_if_any follows
        try:
            return convert(raw)
        except (ValueError, InvalidRequest) as err:
            self._problems.append(f"{name}={raw!r}: {err}")
            return None  # type: ignore[return-value]

    def text(self, name: str, default: str | None = None) -> str:
        return self.parse(name, str, default)

    def optional(self, name: str) -> str | None:
        return self._raw(name, None) or None

    def url(self, name: str, default: str | None = None) -> str:
        return self.parse(name, _https_url, default)

    def integer(self, name: str, default: str, *, low: int, high: int) -> int:
        return self.parse(name, lambda raw: _bounded(int(raw), low, high), default)

    def number(self, name: str, default: str, *, low: float, high: float) -> float:
        return self.parse(name, lambda raw: _bounded(float(raw), low, high), default)

    def duration(self, name: str, default: str) -> timedelta:
        return self.parse(name, lambda raw: parse_duration(raw, what=name), default)

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        def pick(raw: str) -> str:
            if raw.lower() not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}")
            return raw.lower()

        return self.parse(name, pick, default)

    def check(self, s: Settings) -> None:
        if self._problems:
            return
        if s.priority_min > s.priority_max:
            self._problems.append("JIT_PRIORITY_MIN must not be above JIT_PRIORITY_MAX")
        if not s.default_duration <= s.max_duration <= s.max_total_duration:
            self._problems.append(
                "durations must satisfy JIT_DEFAULT_DURATION <= JIT_MAX_DURATION <= JIT_MAX_TOTAL_DURATION"
            )
        if not (s.table_connection_string or s.table_endpoint):
            self._problems.append("set JIT_TABLE_ENDPOINT (Azure) or JIT_TABLE_CONNECTION_STRING (local)")

    def problem(self, text: str) -> None:
        if not self._problems:  # a malformed value already explains what follows from it
            self._problems.append(text)

    def raise_if_any(self) -> None:
        if self._problems:
            raise ConfigError("invalid broker settings:\n  " + "\n  ".join(self._problems))


def _bounded(value: T, low: T, high: T) -> T:
    if not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"must be between {low} and {high}")
    return value


def _https_url(raw: str) -> str:
    if not raw.startswith("https://"):
        raise ValueError("must be an https:// URL (tokens are never sent in the clear)")
    return raw.rstrip("/")


def _token_versions(raw: str) -> frozenset[int]:
    versions = frozenset(int(part) for part in raw.replace(" ", "").split(",") if part)
    if not versions or not versions <= {1, 2}:
        raise ValueError("must be 1, 2 or 1,2")
    return versions


def _scopes(raw: str) -> tuple[str, ...]:
    scopes = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    if not scopes:
        raise ValueError("name at least one /subscriptions/<id>[/resourceGroups/<name>]")
    for scope in scopes:
        parts = scope.split("/")
        shape_ok = len(parts) in (3, 5) and parts[0] == "" and parts[1].lower() == "subscriptions"
        if not shape_ok or (len(parts) == 5 and parts[3].lower() != "resourcegroups") or "" in parts[1:]:
            raise ValueError(f"{scope!r} is not /subscriptions/<id>[/resourceGroups/<name>]")
    return scopes


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise ValueError("must be true or false")


def _source_ranges(raw: str) -> tuple[SourceRange, ...]:
    """Address ranges a lab or test network lets in as sources although they are not global unicast."""
    from jitbroker.policy import NEVER_SOURCES  # here, not at the top: policy imports this module

    ranges: list[SourceRange] = []
    for part in raw.replace(";", ",").replace(" ", ",").split(","):
        if not part.strip():
            continue
        try:
            network = ipaddress.ip_network(part.strip(), strict=True)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a CIDR prefix without host bits") from None
        if network.prefixlen < (8 if network.version == 4 else 16):
            raise ValueError(f"{network} is wider than /8 (IPv4) or /16 (IPv6)")
        for never, what in NEVER_SOURCES:
            if never.version == network.version and network.overlaps(never):
                raise ValueError(f"{network} overlaps {never}, which is never a source ({what})")
        ranges.append(network)
    return tuple(ranges)


def _table_prefix(raw: str) -> str:
    if not (raw.isascii() and raw.isalnum() and raw[0].isalpha() and len(raw) <= 20):
        raise ValueError("must be letters and digits, starting with a letter, at most 20 characters")
    return raw


def _scope_value(raw: str) -> str:
    if any(char.isspace() for char in raw) or "/" in raw:
        raise ValueError(
            "must be the scope's value as the token's scp claim carries it (e.g. user_impersonation)"
        )
    return raw


_CLIENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _optional_client_id(raw: str) -> str | None:
    """The web page's client id (docs/web.md); empty: the broker's own app registration."""
    if not raw.strip():
        return None
    if not _CLIENT_ID.fullmatch(raw.strip().lower()):
        raise ValueError("not a client id (GUID)")
    return raw.strip().lower()


def _client_ids(raw: str) -> frozenset[str]:
    ids = frozenset(part.strip().lower() for part in raw.split(",") if part.strip())
    wrong = sorted(client for client in ids if not _CLIENT_ID.fullmatch(client))
    if wrong:
        raise ValueError(f"not client ids (GUIDs): {', '.join(wrong)}")
    return ids


# ---------------------------------------------------------------- notifications (docs/notifications.md)

WEBHOOK_FORMATS = ("generic", "teams", "slack")
WEBHOOK_SECRET_MIN_LENGTH = 16
_WEBHOOK_KEYS = frozenset({"url", "format", "events", "name"})
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,55}")


@dataclass(frozen=True, repr=False)
class WebhookTarget:
    """One outgoing webhook: where (its URL is a secret: never printed), which format, which event kinds.

    `name` identifies it in queue messages, logs and the poison queue (the URL never goes there); `events`
    empty means every kind.
    """

    name: str
    url: str
    format: str = "generic"
    events: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"WebhookTarget(name={self.name!r}, format={self.format!r}, events={sorted(self.events)!r})"

    def wants(self, kind: str) -> bool:
        """Whether this webhook receives events of `kind`."""
        return not self.events or kind in self.events


@dataclass(frozen=True, repr=False)
class NotifySettings:
    """Where lifecycle events go: the events queue and the webhooks its worker delivers them to.

    Read on their own (like `SweepSettings`), so a notification setting the sweeper cannot use never stops
    expiry; the HTTP side reads them at start and refuses to start on a malformed one. No webhooks: off.
    """

    events_queue: str
    queue_endpoint: str | None
    queue_connection_string: str | None
    webhooks: tuple[WebhookTarget, ...]
    webhook_secret: str | None
    public_url: str | None
    azure_client_id: str | None

    def __repr__(self) -> str:  # the connection string, the secret and the webhook URLs are never printed
        where = self.queue_endpoint or ("a connection string" if self.queue_connection_string else None)
        return f"NotifySettings(queue={self.events_queue!r} at {where!r}, webhooks={list(self.webhooks)!r})"

    @property
    def enabled(self) -> bool:
        """True when at least one webhook is configured."""
        return bool(self.webhooks)

    @property
    def poison_queue(self) -> str:
        """Where the Functions host moves a message after its last failed try (`<queue>-poison`)."""
        return f"{self.events_queue}-poison"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NotifySettings:
        """Read and validate the notification settings; `ConfigError` names each bad one."""
        reader = _Reader(os.environ if environ is None else environ)
        settings = cls(
            events_queue=reader.parse("JIT_EVENTS_QUEUE", _queue_name, "jit-events"),
            queue_endpoint=reader.parse("JIT_QUEUE_ENDPOINT", _optional_https_url, ""),
            queue_connection_string=reader.optional("JIT_QUEUE_CONNECTION_STRING"),
            webhooks=_parse_secret(reader, "JIT_WEBHOOKS", _webhooks, "[]"),
            webhook_secret=reader.optional("JIT_WEBHOOK_SECRET"),
            public_url=reader.parse("JIT_PUBLIC_URL", _optional_public_url, ""),
            azure_client_id=reader.optional("AZURE_CLIENT_ID"),
        )
        if settings.webhooks:
            if not (settings.queue_connection_string or settings.queue_endpoint):
                reader.problem(
                    "JIT_WEBHOOKS needs the events queue: set JIT_QUEUE_ENDPOINT (Azure) "
                    "or JIT_QUEUE_CONNECTION_STRING (local)"
                )
            if any(hook.format == "generic" for hook in settings.webhooks):
                _check_webhook_secret(reader, settings.webhook_secret)
        reader.raise_if_any()
        return settings


def _parse_secret(reader: _Reader, name: str, convert: Callable[[str], T], default: str) -> T:
    """`reader.parse` without the raw value in the message: webhook URLs carry their channels' tokens."""
    raw = reader._raw(name, default)  # the reader's own module
    try:
        return convert(raw or default)
    except ValueError as err:
        reader._problems.append(f"{name}: {err}")
        return None  # type: ignore[return-value]  # never returned to a caller: raise_if_any follows


def _check_webhook_secret(reader: _Reader, secret: str | None) -> None:
    if not secret:
        reader.problem("JIT_WEBHOOK_SECRET is required when JIT_WEBHOOKS has a generic webhook (it signs it)")
    elif secret.startswith("@Microsoft.KeyVault("):
        reader.problem(
            "JIT_WEBHOOK_SECRET is a Key Vault reference the platform could not resolve: check the secret "
            "exists and the app's identity may read it (Key Vault Secrets User, keyVaultReferenceIdentity)"
        )
    elif len(secret) < WEBHOOK_SECRET_MIN_LENGTH:
        reader.problem(f"JIT_WEBHOOK_SECRET must be at least {WEBHOOK_SECRET_MIN_LENGTH} characters")


def _queue_name(raw: str) -> str:
    if not _QUEUE_NAME.fullmatch(raw):
        raise ValueError(
            "must be 3 to 56 lowercase letters, digits and single hyphens, starting and ending with a letter "
            "or digit (the poison queue adds -poison)"
        )
    return raw


def _optional_https_url(raw: str) -> str | None:
    return _https_url(raw) if raw else None


def _http_target(raw: str) -> str:
    """https://, or http:// to this machine only (the lab's broker and webhook receiver)."""
    from urllib.parse import urlsplit

    parts = urlsplit(raw)
    if parts.scheme == "https" and parts.hostname:
        return raw
    if parts.scheme == "http" and (parts.hostname or "").lower() in _LOOPBACK_HOSTS:
        return raw
    raise ValueError("must be an https:// URL (http:// only to 127.0.0.1, localhost or [::1])")


def _optional_public_url(raw: str) -> str | None:
    return _http_target(raw).rstrip("/") if raw else None


def _webhooks(raw: str) -> tuple[WebhookTarget, ...]:
    """`JIT_WEBHOOKS`: a JSON list of {"url", "format" (generic|teams|slack), "events" (optional), "name"}."""
    import json

    if raw.startswith("@Microsoft.KeyVault("):
        raise ValueError(
            "is a Key Vault reference the platform could not resolve: check the secret exists and the app's "
            "identity may read it (Key Vault Secrets User, keyVaultReferenceIdentity)"
        )
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"is not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(items, list):
        raise ValueError('must be a JSON list of {"url": ..., "format": "generic"|"teams"|"slack"}')
    targets: list[WebhookTarget] = []
    for number, item in enumerate(items, 1):
        target = _webhook(f"webhook {number}", item)
        if any(other.name == target.name for other in targets):
            raise ValueError(
                f"webhook {number}: another webhook has the name {target.name!r} (or the same url)"
            )
        targets.append(target)
    return tuple(targets)


def _webhook(where: str, item: object) -> WebhookTarget:
    import hashlib

    from jitbroker.events import KINDS  # here, not at the top: only a configured broker reads webhooks

    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    unknown = sorted(set(item) - _WEBHOOK_KEYS)
    if unknown:
        known = "url, format, events, name"
        raise ValueError(f"{where} has unknown keys {', '.join(unknown)} (known: {known})")
    url = item.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError(f"{where} needs a url")
    try:
        _http_target(url)
    except ValueError as err:
        raise ValueError(f"{where}: url {err}") from None
    kind = item.get("format", "generic")
    if kind not in WEBHOOK_FORMATS:
        raise ValueError(f"{where}: format must be one of {', '.join(WEBHOOK_FORMATS)}")
    events = item.get("events", [])
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ValueError(f"{where}: events must be a list of event kinds")
    wrong = sorted(set(events) - set(KINDS))
    if wrong:
        raise ValueError(f"{where}: unknown events {', '.join(wrong)} (known: {', '.join(KINDS)})")
    name = item.get("name") or hashlib.sha256(url.encode()).hexdigest()[:12]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValueError(f"{where}: name must be 1 to 64 letters, digits, '.', '_' or '-'")
    return WebhookTarget(name=name, url=url, format=kind, events=frozenset(events))
