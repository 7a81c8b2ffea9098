"""The timer's work: expire what is due, undo what crashed half-way, and take out broker rules nobody owns.

Each run has its own time budget, below the Functions timeout, and stops starting new work when it is spent;
what it did not reach is still due (or still in the NSG) and the next run picks it up. Due grants are closed
in batches, each batch with one reconciler pass per NSG it touched, different NSGs in parallel
(`Closer.close_many`). The orphan pass visits every NSG the broker has written to and only ever *removes*
(`NsgReconciler.trim`): a source leaves a rule when no open grant recorded for that NSG holds it, and a rule
goes when its own name says it expired — so even a lost store cannot keep a door open past its expiry.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from jitbroker import telemetry
from jitbroker.closing import Closer
from jitbroker.model import AuditEvent, Grant, GrantStatus
from jitbroker.reconciler import PassResult
from jitbroker.rules import as_rule_view, rule_expiry

if TYPE_CHECKING:
    from jitbroker.store import PendingRow

log = logging.getLogger(__name__)

UNANSWERED_REASON = "nobody approved or denied the request in time; ask again if you still need it"
STALE_PENDING_REASON = "the broker stopped before the grant became active; the sweeper undid it"


class SweepStorePort(Protocol):
    """What the sweeper reads from the store (implemented by `jitbroker.store.GrantStore`)."""

    def due(self, before: datetime, limit: int) -> list[Grant]: ...
    def pending(self) -> list[PendingRow]: ...
    def forget_pending(self, grant_id: str) -> None: ...
    def nsgs_touched(self) -> set[str]: ...
    def record(self, event: AuditEvent) -> None: ...


class TrimPort(Protocol):
    """The orphan pass's one NSG write (implemented by `jitbroker.reconciler.NsgReconciler`)."""

    def trim(self, nsg_id: str) -> PassResult: ...


@dataclass
class SweepReport:
    """What one run did; `errors` holds one line per item it had to leave for the next run."""

    expired: int = 0
    undone: int = 0
    orphans_removed: int = 0
    orphans_trimmed: int = 0
    skipped: int = 0
    nsg_writes: int = 0
    out_of_time: bool = False
    errors: list[str] = field(default_factory=list)


class Sweeper:
    """Closes doors the lifecycle could not: at expiry, after a crash, or when the store lost track."""

    def __init__(
        self,
        *,
        closer: Closer,
        store: SweepStorePort,
        reconciler: TrimPort,
        clock: Callable[[], datetime],
        batch: int,
        pending_grace: timedelta,
        budget_seconds: float = 90.0,
        workers: int = 8,
        monotonic: Callable[[], float] = time.monotonic,
        interval_seconds: float = 60.0,
        approval_use_window: timedelta | None = None,
        expiring_minutes: float = 10.0,
    ) -> None:
        self._approval_use_window = approval_use_window or pending_grace
        self._expiring = timedelta(minutes=expiring_minutes)
        self._closer = closer
        self._store = store
        self._reconciler = reconciler
        self._clock = clock
        self._batch = batch
        self._pending_grace = pending_grace
        self._budget = budget_seconds
        self._workers = workers
        self._monotonic = monotonic
        self._interval = interval_seconds  # the sweep schedule's period: a rule older than this is overdue

    def run(self) -> SweepReport:
        """One sweep within the budget: due grants, stale pending grants, then orphan broker rules."""
        with telemetry.span("jit.sweep") as span:
            started = self._monotonic()
            try:
                report = SweepReport()
                deadline = started + self._budget
                lag = self._expire_due(report, deadline)
                self._undo_stale_pending(report, deadline)
                self._warn_expiring()
                self._remove_orphans(report, deadline)
                report.out_of_time = self._monotonic() > deadline
            except Exception:
                log.exception("sweep failed")
                raise
            log.info("sweep: %s", report)
            duration = self._monotonic() - started
            done = {
                "expired": report.expired,
                "undone": report.undone,
                "orphans_removed": report.orphans_removed,
                "errors": len(report.errors),
                "duration_ms": round(duration * 1000),
                "lag_s": round(lag, 3),
                "out_of_time": report.out_of_time,
            }
            log.info("sweep done", extra=done)
            span.set(**{f"jit.sweep.{k}": v for k, v in done.items()})
            telemetry.sweep_measured(duration, lag)
        return report

    def _expire_due(self, report: SweepReport, deadline: float) -> float:
        """Close due grants; return the lag at the start (now - the oldest due grant's expiry), in seconds."""
        lag: float | None = None
        while self._monotonic() < deadline:
            now = self._clock()
            due = [g for g in self._store.due(before=now, limit=self._batch) if g.expires_at <= now]
            if lag is None:
                oldest = min((g.expires_at for g in due), default=now)
                lag = max(0.0, (now - oldest).total_seconds())
            if not due:
                return lag
            unanswered = [g for g in due if g.status is GrantStatus.AWAITING_APPROVAL]
            opened = [g for g in due if g.status is not GrantStatus.AWAITING_APPROVAL]
            closed = self._close(opened, GrantStatus.EXPIRED, "expired", report) if opened else 0
            if unanswered:
                closed += self._close(unanswered, GrantStatus.EXPIRED, UNANSWERED_REASON, report)
            report.expired += closed
            if closed == 0 or len(due) < self._batch:
                return lag  # nothing moved (someone else is on it), or that was the last batch
        return lag or 0.0

    def _undo_stale_pending(self, report: SweepReport, deadline: float) -> None:
        now = self._clock()
        stale: list[Grant] = []
        for row in self._store.pending():
            if self._monotonic() > deadline:
                break
            approved = row.grant is not None and row.grant.decided_at is not None
            if row.created_at + (self._approval_use_window if approved else self._pending_grace) > now:
                continue  # still within its grace (an approval's own window for an approved grant)
            if row.grant is None or row.grant.status is not GrantStatus.PENDING:
                self._store.forget_pending(row.grant_id)  # never recorded, or moved on without its row
            else:
                stale.append(row.grant)
        for start in range(0, len(stale), self._batch):
            if self._monotonic() > deadline:
                return
            chunk = stale[start : start + self._batch]
            report.undone += self._close(chunk, GrantStatus.FAILED, STALE_PENDING_REASON, report)

    def _warn_expiring(self) -> None:
        """Tell people a few minutes before a door closes, so they can extend in time: the grants whose expiry
        entered the warning window since the previous sweep (one warning each, with no state kept)."""
        now = self._clock()
        window_end = now + self._expiring
        window_start = window_end - timedelta(seconds=self._interval)
        try:
            soon = self._store.due(before=window_end, limit=self._batch)
        except Exception:
            log.warning("sweep: could not read the grants about to expire", exc_info=True)
            return
        for grant in soon:
            if grant.status is GrantStatus.ACTIVE and window_start < grant.expires_at <= window_end:
                self._closer.publish(
                    "expiring", grant, reason=f"the door closes at {grant.expires_at:%H:%M} UTC"
                )

    def _close(self, grants: list[Grant], status: GrantStatus, reason: str, report: SweepReport) -> int:
        done = self._closer.close_many(grants, status, reason=reason, workers=self._workers)
        report.skipped += done.skipped
        report.nsg_writes += done.nsgs
        report.errors.extend(done.errors)
        for line in done.errors:
            log.warning("sweep: %s", line)
        return len(done.closed)

    def _remove_orphans(self, report: SweepReport, deadline: float) -> None:
        """Every NSG the broker wrote to loses the broker sources no open grant recorded for it holds."""
        nsgs = sorted(self._store.nsgs_touched())
        random.shuffle(nsgs)  # a run that runs out of time leaves different NSGs for the next one
        open_ids: set[str] = set()  # open grants the passes saw: the jit.grants.open gauge, at no extra read
        seen: list[bool] = []

        def visit(nsg_id: str) -> None:
            if self._monotonic() > deadline:
                return
            try:
                result = self._reconciler.trim(nsg_id)
            except Exception as err:
                report.errors.append(f"nsg {nsg_id}: {type(err).__name__}: {getattr(err, 'message', err)}")
                return
            if result.wrote:
                report.nsg_writes += 1
            report.orphans_removed += len(result.plan.removed)
            report.orphans_trimmed += len(result.plan.trimmed)
            self._audit_orphans(nsg_id, result)
            open_ids.update(g for rule in result.desired.rules.values() for g in rule.grant_ids)
            open_ids.update(result.desired.refused)
            seen.append(True)

        with ThreadPoolExecutor(max_workers=max(1, self._workers), thread_name_prefix="orphans") as pool:
            list(pool.map(telemetry.carry(visit), nsgs))
        if len(seen) == len(nsgs):
            telemetry.open_grants_seen(len(open_ids))

    def _audit_orphans(self, nsg_id: str, result: PassResult) -> None:
        if not result.wrote:
            return
        before = {
            str(r.get("name")): as_rule_view(r)
            for r in (result.nsg.get("properties") or {}).get("securityRules") or []
        }
        now = self._clock()
        for name in result.plan.removed:
            expiry = rule_expiry(name)
            overdue = (now - expiry).total_seconds() if expiry is not None else 0.0
            if overdue > self._interval:
                log.warning(
                    "orphan rule outlived its grant",
                    extra={"rule": name, "nsg": nsg_id, "overdue_s": round(overdue, 3)},
                )
        for name, detail in [(n, "deleted") for n in result.plan.removed] + [
            (n, "trimmed") for n in result.plan.trimmed
        ]:
            view = before.get(name)
            event = AuditEvent(
                kind="orphan_removed",
                at=now,
                grant_id=None,
                principal=None,
                source=",".join(view.source_prefixes)[:400] if view else None,
                vm_id=None,
                port=None,
                reason=f"rule {name} in {nsg_id}: {detail}",
            )
            telemetry.audit_record(event)
            try:
                self._store.record(event)
            except Exception:
                log.exception("could not audit the removal of orphan rule %s", name)
            self._closer.publish("orphan_removed", None, reason=event.reason)
