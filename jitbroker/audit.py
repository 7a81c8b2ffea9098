"""Reading the audit trail: who may, over which time range, and one page at a time.

Admins and auditors (an app role that reads but cannot revoke) read every event; the store serves a time range
one day's partition at a time, newest first (`GrantStore.audit_page`), so a query costs what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from jitbroker.config import Settings
from jitbroker.durations import parse_duration
from jitbroker.errors import InvalidRequest, NotAllowed
from jitbroker.identity.principal import Principal
from jitbroker.model import AuditEvent, AuditQuery

MAX_RANGE = timedelta(days=90)
DEFAULT_SINCE = timedelta(hours=24)
KINDS = frozenset(
    {
        "requested",
        "approved",
        "granted",
        "denied",
        "withdrawn",
        "failed",
        "revoked",
        "expired",
        "extended",
        "orphan_removed",
    }
)


class AuditStorePort(Protocol):
    """What reading the trail needs from the store (implemented by `jitbroker.store.GrantStore`)."""

    def audit_page(
        self, query: AuditQuery, *, cursor: str | None = None
    ) -> tuple[list[AuditEvent], str | None]: ...


@dataclass(frozen=True)
class AuditAsk:
    """A caller's audit query as the API shapes it: `since`/`until` are a duration back from now or a time."""

    since: str | None = None
    until: str | None = None
    kind: str | None = None
    principal: str | None = None
    vm: str | None = None
    limit: int = 100
    cursor: str | None = None


@dataclass(frozen=True)
class AuditPage:
    """One page of the trail, and the absolute time range it was read from."""

    events: list[AuditEvent]
    cursor: str | None
    since: datetime
    until: datetime


class AuditReader:
    """Pages through the audit trail for admins and auditors."""

    def __init__(self, *, settings: Settings, store: AuditStorePort, clock: Callable[[], datetime]) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock

    def page(self, principal: Principal, ask: AuditAsk) -> AuditPage:
        """One page of events, newest first, the cursor of the next page (None at the end), and the time range
        read: a next page reads the same range even when `since` was "24h" back from a moment ago."""
        readers = {self._settings.admin_role, self._settings.auditor_role}
        if not readers & principal.roles:
            raise NotAllowed(
                f"reading the audit trail needs the {self._settings.admin_role} or "
                f"{self._settings.auditor_role} app role"
            )
        now = self._clock()
        until = _moment(ask.until, now, "until") if ask.until else now
        since = _moment(ask.since, now, "since") if ask.since else until - DEFAULT_SINCE
        if since > until:
            raise InvalidRequest("since is after until")
        if until - since > MAX_RANGE:
            raise InvalidRequest(f"ask for at most {MAX_RANGE.days} days at a time")
        if ask.kind is not None and ask.kind not in KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(sorted(KINDS))}")
        if not 1 <= ask.limit <= 1000:
            raise InvalidRequest("limit must be between 1 and 1000")
        query = AuditQuery(
            since=since, until=until, kind=ask.kind, principal=ask.principal, vm=ask.vm, limit=ask.limit
        )
        events, cursor = self._store.audit_page(query, cursor=ask.cursor)
        return AuditPage(events, cursor, since, until)


def _moment(text: str, now: datetime, what: str) -> datetime:
    """`24h`/`PT2H` back from now, or an ISO 8601 time with its zone (`2030-05-01T12:00:00Z`)."""
    raw = text.strip()
    if raw[:1].isdigit() and ("-" in raw[1:] or ":" in raw):
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError as err:
            raise InvalidRequest(f"{what} {raw!r} is not an ISO 8601 time or a duration like 24h") from err
        if moment.tzinfo is None:
            raise InvalidRequest(f"{what} needs a time zone (e.g. {raw}Z)")
        return moment.astimezone(UTC)  # the trail is filed by UTC day
    return now - parse_duration(raw, what=what)
