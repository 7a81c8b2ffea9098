"""Ending grants — revoked, expired, failed, denied or withdrawn — and the NSG passes that take sources out.

Shared by the lifecycle (a revoke, a failed request) and the sweeper (expiry, stale pending), so the sweep
needs no policy settings to close a door. A close is recorded before any NSG changes: the audit event,
the grant's `open` rows dropped, the record moved to its final status (etag-guarded), the rows dropped again
(a row that raced the close is gone too). Then one reconciler pass per NSG takes the source out. If that
pass fails, the close still stands: the store no longer holds the source open, and the next pass on that
NSG — any grant's, or the sweeper's — removes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from jitbroker import telemetry
from jitbroker.deadline import remaining
from jitbroker.errors import Conflict, NotFound
from jitbroker.events import Actor, Event, NoPublisher, Publisher
from jitbroker.identity.principal import Principal
from jitbroker.model import AuditEvent, Grant, GrantStatus
from jitbroker.reconciler import PassResult, StillWorking
from jitbroker.rules import live_session_warning

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
CLOSE_PENDING_NOTE = (
    "the grant is closed, but its NSG rule could not be updated just now; the sweeper removes the source "
    "from the rule within one sweep interval"
)
_EVENT = {
    GrantStatus.REVOKED: "revoked",
    GrantStatus.EXPIRED: "expired",
    GrantStatus.FAILED: "failed",
    GrantStatus.DENIED: "denied",
    GrantStatus.WITHDRAWN: "withdrawn",
}
# The final statuses that notifications tell (a failure is an operator's matter: telemetry and alerts).
_NOTIFIED = frozenset({"revoked", "expired", "denied", "withdrawn"})


class StorePort(Protocol):
    """What closing needs from the store (implemented by `jitbroker.store.GrantStore`)."""

    def get(self, grant_id: str) -> Grant: ...
    def replace(self, grant: Grant, *, before: Grant | None = None, drop_rows: bool = True) -> Grant: ...
    def drop_open_rows(self, grant: Grant) -> None: ...
    def drop_open_rows_many(self, grants: Iterable[Grant]) -> None: ...
    def record(self, event: AuditEvent) -> None: ...


class ReconcilerPort(Protocol):
    """How closing changes NSGs (implemented by `jitbroker.reconciler.NsgReconciler`)."""

    def reconcile(self, nsg_id: str, *, timeout: float | None = None) -> PassResult: ...
    def reconcile_all(
        self, nsg_ids: Iterable[str], *, timeout: float | None = None
    ) -> dict[str, PassResult]: ...


@dataclass
class CloseReport:
    """What `close_many` did: the grants it closed, the ones someone else moved first, and what failed."""

    closed: list[Grant] = field(default_factory=list)
    skipped: int = 0
    nsgs: int = 0
    errors: list[str] = field(default_factory=list)


class Closer:
    """Moves open grants to a final status and has their NSGs follow."""

    def __init__(
        self,
        *,
        store: StorePort,
        reconciler: ReconcilerPort,
        clock: Clock,
        answer_budget: float = 20.0,
        publisher: Publisher | None = None,
    ) -> None:
        self._store = store
        self._reconciler = reconciler
        self._clock = clock
        self._budget = answer_budget
        self._publisher: Publisher = publisher or NoPublisher()

    def publish(
        self, kind: str, grant: Grant | None, by: Principal | None = None, *, reason: str | None = None
    ) -> None:
        """Hand a notification to the publisher; it only enqueues, and a failure never reaches the caller."""
        actor = Actor(by.oid, by.display_name) if by is not None else None
        try:
            self._publisher.publish(Event(kind, self._clock(), grant, actor, reason))
        except Exception:
            log.exception("could not publish the %s event of grant %s", kind, grant.id if grant else "-")

    def close(
        self, grant: Grant, status: GrantStatus, *, by: Principal | None = None, reason: str | None = None
    ) -> Grant:
        """End a grant and take its source out of its NSGs. A grant already closed is returned unchanged
        after one more pass over its NSGs (a retried revoke converges the rule instead of stopping short).
        If the NSG write fails or runs long, the close stands and the answer's warnings say so."""
        closed = self.record_closed(grant, status, by=by, reason=reason) if grant.status.is_live else grant
        if not grant.status.is_open and grant.status.is_live:
            return closed  # it waited for an approver: no door was ever opened, no NSG to touch
        try:
            results = self._reconciler.reconcile_all(closed.nsg_ids, timeout=remaining(self._budget))
        except StillWorking:  # the write goes on; if it fails, the sweeper finishes: say so
            return (
                replace(closed, warnings=(*closed.warnings, CLOSE_PENDING_NOTE))
                if grant.status.is_open
                else closed
            )
        except Exception:
            log.warning("grant %s is %s but its NSG write failed; the sweeper will finish", grant.id, status)
            if grant.status.is_open:
                return replace(closed, warnings=(*closed.warnings, CLOSE_PENDING_NOTE))
            return closed
        if not grant.status.is_open:
            return closed
        live = [w for r in results.values() if (w := live_session_warning(r.nsg)) is not None]
        return replace(closed, warnings=(*closed.warnings, *live)) if live else closed

    def record_closed(
        self,
        grant: Grant,
        status: GrantStatus,
        *,
        by: Principal | None = None,
        reason: str | None = None,
        rows_dropped: bool = False,
        decided_on: GrantStatus | None = None,
    ) -> Grant:
        """Record the close (event, rows, record, rows) without touching NSGs; a grant someone else closed
        first is returned as they left it. `rows_dropped`: the caller already dropped its open rows (a sweep's
        batch); the rows are then dropped again after the record only for a grant still pending, the one
        kind a stalled request may still be indexing.

        `decided_on`: an answer (deny, withdraw) to the grant as it was seen, in that status. It closes the
        grant only from that status: if someone moved it first (an approver said yes a moment earlier),
        `Conflict` and nothing is recorded, so a door just opened is never marked closed behind its back.
        Its event follows the record: a decision that lost the race leaves no event saying it was made."""
        kind = _EVENT.get(status, "failed")
        if grant.status is GrantStatus.PENDING:  # approved, closed before it opened: its yes on record first
            self.record_approval(grant)
        if decided_on is None:
            self.audit(kind, grant, by, reason=reason)  # the event ahead of the change
        elif grant.status is not decided_on:
            raise Conflict(f"grant {grant.id} is {grant.status}, not {decided_on}")
        if not rows_dropped:
            self._store.drop_open_rows(grant)
        again = not rows_dropped or grant.status is GrantStatus.PENDING
        current = grant
        for _ in range(3):
            try:
                closed = self._store.replace(
                    replace(current, status=status, reason=reason, updated_at=self._clock()),
                    before=current,
                    drop_rows=again,
                )
                break
            except Conflict:
                current = self._store.get(grant.id)
                if decided_on is not None and current.status is not decided_on:
                    raise Conflict(f"grant {grant.id} is {current.status} now") from None
                if not current.status.is_live:
                    return current
        else:
            raise Conflict(f"grant {grant.id} kept changing; try again")
        if decided_on is not None:
            self.audit(kind, closed, by, reason=reason)
        if _EVENT.get(status) in _NOTIFIED:
            self.publish(_EVENT[status], closed, by, reason=reason)
        return closed

    def close_many(
        self, grants: Iterable[Grant], status: GrantStatus, *, reason: str | None = None, workers: int = 8
    ) -> CloseReport:
        """Close many grants (the sweeper): record each, then one pass per NSG they touched, in parallel."""
        report = CloseReport()
        todo = [g for g in grants if g.status.is_live]
        batched = False
        try:
            self._store.drop_open_rows_many(todo)  # a few transactions instead of a delete per row
            batched = True
        except Exception:
            log.warning(
                "could not drop a sweep's open rows in batches; dropping them one by one", exc_info=True
            )
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="close") as pool:
            close = partial(self._try_close, status=status, reason=reason, rows_dropped=batched)
            outcomes = pool.map(telemetry.carry(close), todo)
            for grant, outcome in zip(todo, outcomes, strict=True):
                if isinstance(outcome, Grant):
                    if outcome.status is status:
                        report.closed.append(outcome)
                    else:
                        report.skipped += 1  # someone else moved it first
                elif isinstance(outcome, NotFound):
                    report.skipped += 1
                else:
                    report.errors.append(f"grant {grant.id}: {type(outcome).__name__}: {outcome}")
            nsgs = sorted({n.lower(): n for g in todo if g.status.is_open for n in g.nsg_ids}.values())
            report.nsgs = len(nsgs)
            for failure in pool.map(telemetry.carry(self._pass), nsgs):
                if failure is not None:
                    report.errors.append(failure)
        return report

    def record_approval(self, grant: Grant, *, first: bool = False) -> None:
        """The `approved` event of an approved grant (`pending` or `active`), the same row whoever writes it:
        the approval after its record (`first`), and again whoever carries the grant on (its activation, a
        close before it opened), so a broker that died between the record and its event loses nothing."""
        if grant.decided_at is None or grant.status not in (GrantStatus.PENDING, GrantStatus.ACTIVE):
            return
        event = AuditEvent(
            kind="approved",
            at=grant.decided_at,
            grant_id=grant.id,
            principal=grant.principal,
            actor=grant.decided_by,
            source=grant.source,
            vm_id=grant.vm_id,
            port=grant.port,
            reason=grant.decision_reason,
            once=f"approved:{grant.id}",
        )
        if first:
            telemetry.audit_record(event, status=grant.status, vm_name=grant.vm_name)
        try:
            self._store.record(event)
        except Exception:
            log.exception("could not record the approval of grant %s", grant.id)

    def audit(
        self,
        kind: str,
        grant: Grant | None,
        by: Principal | None,
        *,
        source: str | None = None,
        vm_id: str | None = None,
        port: int | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append one event to the audit trail; a failure to write it is logged, never raised. `principal` is
        the grant's owner (the caller, for a refusal before any grant); `actor` whoever else acted."""
        owner = grant.principal if grant else (by.oid if by else None)
        event = AuditEvent(
            kind=kind,
            at=self._clock(),
            grant_id=grant.id if grant else None,
            principal=owner,
            actor=by.oid if by is not None and by.oid != owner else None,
            source=grant.source if grant else source,
            vm_id=grant.vm_id if grant else vm_id,
            port=grant.port if grant else port,
            reason=reason,
            detail=detail,
        )
        telemetry.audit_record(
            event, status=grant.status if grant else None, vm_name=grant.vm_name if grant else None
        )
        try:
            self._store.record(event)
        except Exception:
            log.exception("could not record audit event %s for grant %s", kind, event.grant_id)

    def _try_close(
        self, grant: Grant, status: GrantStatus, reason: str | None, rows_dropped: bool = False
    ) -> Grant | Exception:
        try:
            return self.record_closed(grant, status, reason=reason, rows_dropped=rows_dropped)
        except Exception as err:  # reported per grant by close_many
            return err

    def _pass(self, nsg_id: str) -> str | None:
        try:
            self._reconciler.reconcile(nsg_id)
        except Exception as err:
            return f"nsg {nsg_id}: {type(err).__name__}: {_text(err)}"
        return None


def _text(err: Any) -> str:
    return str(getattr(err, "message", err))
