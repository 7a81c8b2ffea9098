"""The timer's work: expire what is due, undo what crashed half-way, and remove broker rules nobody owns.

Each run is bounded (`batch` grants, `batch` rule writes) and safe beside another run: a grant someone else
already moved is skipped (etag conflict), and every rule write converges on what the store holds open.
Due grants are closed together: each is recorded closed, then every (VM address, port) they touched gets one
rule convergence per NSG, different NSGs in parallel (`GrantService.close_many`).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from jitbroker import rules
from jitbroker.errors import NotFound
from jitbroker.grants import GrantService, WriterPort
from jitbroker.model import AuditEvent, Grant, GrantStatus

log = logging.getLogger(__name__)


class SweepStorePort(Protocol):
    """What the sweeper reads from the store (implemented by `jitbroker.store.GrantStore`)."""

    def due(self, before: datetime, limit: int) -> list[Grant]: ...
    def list_all(self, status: GrantStatus | None = None) -> list[Grant]: ...
    def nsgs_touched(self) -> set[str]: ...
    def record(self, event: AuditEvent) -> None: ...


class SweepWriterPort(WriterPort, Protocol):
    """What the sweeper changes in NSGs: the lifecycle's writes, plus listing the broker's own rules."""

    def broker_rules(self, nsg_id: str) -> Iterable[Any]: ...


@dataclass
class SweepReport:
    """What one run did; `errors` holds one line per item it had to leave for the next run."""

    expired: int = 0
    undone: int = 0
    orphans_removed: int = 0
    orphans_trimmed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


class Sweeper:
    """Closes doors the lifecycle could not: at expiry, after a crash, or when the store lost track."""

    def __init__(
        self,
        *,
        grants: GrantService,
        store: SweepStorePort,
        writer: SweepWriterPort,
        clock: Callable[[], datetime],
        batch: int,
        pending_grace: timedelta,
        workers: int = 8,
    ) -> None:
        self._grants = grants
        self._store = store
        self._writer = writer
        self._clock = clock
        self._batch = batch
        self._pending_grace = pending_grace
        self._workers = workers

    def run(self) -> SweepReport:
        """One bounded sweep: due grants, stale pending grants, then orphan broker rules."""
        report = SweepReport()
        now = self._clock()
        self._expire_due(now, report)
        self._undo_stale_pending(now, report)
        self._remove_orphans(now, report)
        log.info("sweep: %s", report)
        return report

    def _expire_due(self, now: datetime, report: SweepReport) -> None:
        due = [
            g
            for g in self._store.due(before=now, limit=self._batch)
            if g.status.is_open and g.expires_at <= now
        ]
        report.expired += self._close(due, GrantStatus.EXPIRED, "expired", report)

    def _undo_stale_pending(self, now: datetime, report: SweepReport) -> None:
        stale = [
            g
            for g in self._store.list_all(status=GrantStatus.PENDING)
            if g.status is GrantStatus.PENDING and g.updated_at + self._pending_grace <= now
        ]
        reason = "the broker stopped before the grant became active; the sweeper undid it"
        report.undone += self._close(stale[: self._batch], GrantStatus.FAILED, reason, report)

    def _close(self, grants: list[Grant], status: GrantStatus, reason: str, report: SweepReport) -> int:
        if not grants:
            return 0
        done = self._grants.close_many(grants, status, reason=reason, workers=self._workers)
        report.skipped += done.skipped
        report.errors.extend(done.errors)
        for line in done.errors:
            log.warning("sweep: %s", line)
        return sum(1 for g in done.closed if g.status is status)

    def _remove_orphans(self, now: datetime, report: SweepReport) -> None:
        """Broker rules whose own name says they expired, or whose sources no open grant holds."""
        found: list[tuple[str, rules.RuleView]] = []
        for nsg_id in sorted(self._store.nsgs_touched()):
            try:
                found.extend((nsg_id, rules.as_rule_view(r)) for r in self._writer.broker_rules(nsg_id))
            except NotFound:
                continue
            except Exception as err:
                report.errors.append(f"nsg {nsg_id}: {type(err).__name__}: {err}")
        if not found:
            return
        # Grants are read after the rules: a rule is written only after its grant is recorded, so every rule
        # seen above has its grant visible here.
        open_grants = self._open_grants(now)
        writes = 0
        for nsg_id, view in found:
            if writes >= self._batch:
                break
            key = rules.rule_key(view.name)
            if key is None:
                continue
            holders = open_grants.get(key, [])
            wanted = {_canon(g.source) for g in holders}
            if {_canon(p) for p in view.source_prefixes} <= wanted and (
                rules.rule_expiry(view.name) or now
            ) > now:
                continue
            writes += 1
            try:
                # The store decides, read under the rule key's lease right before the write: a grant
                # recorded since the read above keeps its door.
                self._writer.converge(
                    nsg_id,
                    vm_name=holders[0].vm_name if holders else "-",
                    private_ip=key[0],
                    port=key[1],
                    wanted=functools.partial(self._open_set, key),
                )
                if holders:
                    report.orphans_trimmed += 1
                    detail = f"trimmed to {len(wanted)} source(s)"
                else:
                    report.orphans_removed += 1
                    detail = "deleted"
            except Exception as err:
                report.errors.append(f"rule {view.name} in {nsg_id}: {type(err).__name__}: {err}")
                continue
            self._audit_orphan(now, nsg_id, view, key, detail)

    def _open_set(self, key: tuple[str, int]) -> rules.OpenSet:
        holders = self._open_grants(self._clock()).get(key, [])
        if not holders:
            return rules.OpenSet(frozenset(), None)
        return rules.OpenSet(
            frozenset(g.source for g in holders),
            max(g.expires_at for g in holders),
            frozenset(g.id for g in holders),
        )

    def _open_grants(self, now: datetime) -> dict[tuple[str, int], list[Grant]]:
        by_key: dict[tuple[str, int], list[Grant]] = {}
        for status in (GrantStatus.ACTIVE, GrantStatus.PENDING):
            for grant in self._store.list_all(status=status):
                if (
                    grant.status.is_open
                    and grant.expires_at > now
                    and grant.connect
                    and grant.connect.private_ip
                ):
                    key = (str(ipaddress.ip_address(grant.connect.private_ip)), grant.port)
                    by_key.setdefault(key, []).append(grant)
        return by_key

    def _audit_orphan(
        self, now: datetime, nsg_id: str, view: rules.RuleView, key: tuple[str, int], detail: str
    ) -> None:
        try:
            self._store.record(
                AuditEvent(
                    kind="orphan_removed",
                    at=now,
                    grant_id=None,
                    principal=None,
                    source=",".join(view.source_prefixes)[:400],
                    vm_id=None,
                    port=key[1],
                    reason=f"rule {view.name} in {nsg_id}: {detail}",
                )
            )
        except Exception:
            log.exception("could not audit the removal of orphan rule %s", view.name)


def _canon(prefix: str) -> str:
    try:
        return str(ipaddress.ip_network(prefix.strip(), strict=False))
    except ValueError:
        return prefix
