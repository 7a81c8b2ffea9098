"""ARM writes of the broker's own NSG rules: conflicts, throttling, long-running operations, coalescing.

Every write is one security rule (never a whole NSG, which could erase someone else's concurrent change),
planned from a fresh read of the NSG by `jitbroker.rules`, so a priority taken meanwhile
(`SecurityRuleConflict`) is cured by reading and planning again. ARM lets one operation at a time touch an
NSG, so this process serialises its own writes per NSG, and concurrent callers that want the same
(NSG, VM address, port) rule share one write: fifty grants arriving together cost one or two ARM writes,
not fifty queued ones. Rules that fail `is_broker_rule` are never written or deleted.

Convergence across broker processes. A rule's sources are never taken from a caller's memory: `converge`
reads the open set from the store (`wanted`) right before each write, and after every write reads it again;
if it differs from what was written — a source missing *or* one too many — it writes again, until the two
agree or a time bound passes. Every change to the open set is recorded in the store before its actor runs
`converge` (a grant is recorded `pending` before its write; a revoke, expiry or failure is recorded before
the write that drops the source). ARM runs one operation at a time per NSG, so rule writes on a key are
totally ordered. Take the last write W on a key: its writer re-read the store after W completed and found it
equal to W, so W holds every change recorded before that re-read; a change recorded after it is followed by
its actor's own `converge`, which finds the rule already equal (no write) or writes — and then W was not the
last write. Hence, once changes stop, the rule equals the open set, whichever processes wrote it, and a
writer that returns has seen its own change in a rule that matched the store after its write.

That alone leaves a window: a writer that read the store just before a change can have its write land just
after the change's own writer returned. With `key_lease` (the store's lease, wired by `runtime`), each
read-plan-write on one (NSG, VM address, port) runs under a lease shared by every broker process, so every
write is planned from a store read made after the previous write on that key landed: once a grant's writer
returns, no later write drops its source until its close is recorded, and none brings back a closed one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from jitbroker.arm import LroTimeout, arm_call, error_code, parse_id
from jitbroker.clients import AzureClients
from jitbroker.errors import NotAllowed, NotFound, UpstreamError
from jitbroker.model import NsgRuleRef
from jitbroker.rules import (
    Band,
    OpenSet,
    RulePlan,
    RuleView,
    as_rule_view,
    is_broker_rule,
    plan_rule,
    rule_key,
    rules_for_key,
)
from jitbroker.topology import TopologyReader, nsg_view

Clock = Callable[[], datetime]
Wanted = Callable[[], OpenSet]


@dataclass(frozen=True)
class _Desired:
    vm_name: str
    private_ip: str
    port: int
    wanted: Wanted


@dataclass
class _Flight:
    """Single-flight state for one rule key: the latest wish, and how far writes caught up with wishes."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    submitted: int = 0
    completed: int = 0
    running: bool = False
    latest: _Desired | None = None
    outcome: tuple[NsgRuleRef | None, BaseException | None] = (None, None)


def fixed(sources: Collection[str], expires_at: datetime, grant_ids: Collection[str] = ()) -> Wanted:
    """A `wanted` that always answers the same open set (callers that already know the sources)."""
    opened = OpenSet(frozenset(sources), expires_at if sources else None, frozenset(grant_ids))
    return lambda: opened


class NsgWriter:
    """Creates, updates and deletes the broker's coalesced rules in NSGs, safely under concurrency."""

    def __init__(
        self,
        clients: AzureClients,
        *,
        clock: Clock,
        priority_band: Band = (100, 199),
        attempts: int = 6,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        lro_timeout: float = 120.0,
        poll_interval: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        topology: TopologyReader | None = None,
        before_write: Callable[[str], None] | None = None,
        converge_timeout: float = 120.0,
        monotonic: Callable[[], float] = time.monotonic,
        key_lease: Callable[[str], ContextManager[None]] | None = None,
    ) -> None:
        self._clients = clients
        self._clock = clock
        self._band = priority_band
        self._retry: dict[str, Any] = {
            "attempts": attempts,
            "base_delay": base_delay,
            "max_delay": max_delay,
            "sleep": sleep,
        }
        self._lro_timeout = lro_timeout
        self._converge_timeout = converge_timeout
        self._monotonic = monotonic
        self._key_lease = key_lease
        self._poll_interval = poll_interval
        self._topology = topology
        self._before_write = before_write
        self._lock = threading.Lock()
        self._nsg_locks: dict[str, threading.Lock] = {}
        self._flights: dict[tuple[str, str, int], _Flight] = {}

    # ------------------------------------------------------------------ the lifecycle's entry point

    def sync_rule(
        self,
        nsg_id: str,
        *,
        vm_name: str,
        private_ip: str,
        port: int,
        sources: Collection[str],
        expires_at: datetime,
        grant_ids: Collection[str] = (),
    ) -> NsgRuleRef | None:
        """Make the NSG's broker rules for (VM address, port) let in exactly `sources` until `expires_at`.

        No sources removes the rules (None is returned). For callers that know the sources (the sweeper's
        orphan pass, tests); the lifecycle uses `converge`, which reads them from the store.
        """
        wanted = fixed(sources, expires_at, grant_ids)
        return self.converge(nsg_id, vm_name=vm_name, private_ip=private_ip, port=port, wanted=wanted)

    def converge(
        self, nsg_id: str, *, vm_name: str, private_ip: str, port: int, wanted: Wanted
    ) -> NsgRuleRef | None:
        """Make the NSG's broker rules for (VM address, port) let in exactly what `wanted()` answers, reading
        it right before each write and again after, until the two agree (see the module docstring).

        Concurrent calls for the same rule share writes: every caller returns only after a convergence run
        that began after its call. Returns the rule written (None when nothing is open).
        """
        wish = _Desired(vm_name, private_ip, port, wanted)
        key = (nsg_id.lower(), private_ip, port)
        with self._lock:
            flight = self._flights.setdefault(key, _Flight())
        with flight.cond:
            flight.submitted += 1
            mine = flight.submitted
            flight.latest = wish
            while True:
                if flight.completed >= mine:
                    ref, error = flight.outcome
                    if error is not None:
                        raise error
                    return ref
                if not flight.running:
                    flight.running = True
                    break
                flight.cond.wait()
        self._lead(nsg_id, flight)
        return self._result(flight, mine)

    def _result(self, flight: _Flight, mine: int) -> NsgRuleRef | None:
        # the outcome of the write that covered call number `mine`
        with flight.cond:
            while flight.completed < mine:
                flight.cond.wait()
            ref, error = flight.outcome
        if error is not None:
            raise error
        return ref

    def _lead(self, nsg_id: str, flight: _Flight) -> None:
        with flight.cond:
            wish, generation = flight.latest, flight.submitted
        if wish is None:  # cannot happen: a leader is only elected after a wish was submitted
            return
        outcome: tuple[NsgRuleRef | None, BaseException | None]
        try:
            outcome = (self._converge(nsg_id, wish), None)
        except BaseException as err:  # every caller this write covered must hear about it
            outcome = (None, err)
        with flight.cond:
            flight.completed = generation
            flight.outcome = outcome
            flight.running = False
            flight.cond.notify_all()

    # ------------------------------------------------------------------ single writes

    def put_rule(self, nsg_id: str, plan: RulePlan) -> NsgRuleRef:
        """Write one planned broker rule; a priority taken meanwhile is re-planned from a fresh NSG read."""
        _require_broker_plan(plan)
        current = [plan]

        def attempt() -> NsgRuleRef:
            try:
                with self._nsg_lock(nsg_id):
                    self._put(nsg_id, current[0])
            except HttpResponseError as err:
                if error_code(err) == "SecurityRuleConflict":
                    current[0] = self._replan_priority(nsg_id, current[0])
                raise
            return NsgRuleRef(nsg_id, current[0].name, current[0].priority)

        return arm_call(attempt, what=f"writing rule {plan.name}", **self._retry)

    def delete_rule(self, nsg_id: str, rule_name: str) -> None:
        """Delete one broker rule; one already gone is success. Refuses any rule that is not the broker's."""
        if rule_key(rule_name) is None:
            raise NotAllowed(f"{rule_name!r} is not a jit-broker rule; the broker never deletes it")

        def attempt() -> None:
            with self._nsg_lock(nsg_id):
                named = [r for r in self._read(nsg_id) if r.name.lower() == rule_name.lower()]
                current = named[0] if named else None
                if current is None:
                    return
                if not is_broker_rule(current):
                    raise NotAllowed(f"rule {rule_name!r} was not written by jit-broker; left untouched")
                self._delete(nsg_id, rule_name)

        arm_call(attempt, what=f"deleting rule {rule_name}", **self._retry)

    def read_rules(self, nsg_id: str) -> list[RuleView]:
        """Every security rule in the NSG, read fresh (also refreshes the topology's cached view)."""
        return arm_call(lambda: self._read(nsg_id), what="reading an NSG", **self._retry)

    def broker_rules(self, nsg_id: str) -> list[RuleView]:
        """The broker's own rules in an NSG (for the sweeper); an NSG that is gone has none."""
        try:
            rules = self.read_rules(nsg_id)
        except ResourceNotFoundError:
            return []
        return [r for r in rules if is_broker_rule(r)]

    # ------------------------------------------------------------------ internals

    def _converge(self, nsg_id: str, wish: _Desired) -> NsgRuleRef | None:
        deadline = self._monotonic() + self._converge_timeout
        ref, written = self._write_once(nsg_id, wish)
        while not wish.wanted().same_access(written):
            if self._monotonic() > deadline:
                raise UpstreamError(
                    f"the rule for port {wish.port} in NSG {_short(nsg_id)} kept changing for "
                    f"{self._converge_timeout:g}s; the sweeper will settle it"
                )
            ref, written = self._write_once(nsg_id, wish)
        return ref

    def _write_once(self, nsg_id: str, wish: _Desired) -> tuple[NsgRuleRef | None, OpenSet]:
        """One NSG read, one open-set read, and the writes that make the rules hold that open set."""

        def attempt() -> tuple[NsgRuleRef | None, OpenSet]:
            # The key's lease first (store round trips overlap across keys), then the NSG: only the reads
            # and writes that must be in order with ARM's one-operation-at-a-time wait for each other.
            with self._leased(nsg_id, wish), self._nsg_lock(nsg_id):
                rules = self._read(nsg_id)
                target = wish.wanted()  # read last, right before the write: as fresh as it can be
                return self._apply(nsg_id, rules, wish, target), target

        try:
            return arm_call(attempt, what=f"updating NSG {_short(nsg_id)}", **self._retry)
        except ResourceNotFoundError as err:
            target = wish.wanted()
            if not target.sources:
                return None, target  # nothing to close in an NSG that is gone
            raise NotFound(f"network security group {nsg_id} does not exist") from err

    def _leased(self, nsg_id: str, wish: _Desired) -> ContextManager[None]:
        if self._key_lease is None:
            return contextlib.nullcontext()
        return self._key_lease(f"rule|{nsg_id.lower()}|{wish.private_ip}|{wish.port}")

    def _apply(
        self, nsg_id: str, rules: list[RuleView], wish: _Desired, target: OpenSet
    ) -> NsgRuleRef | None:
        ours = rules_for_key(rules, wish.private_ip, wish.port)
        if not target.sources or target.expires_at is None:
            for rule in ours:
                self._delete(nsg_id, rule.name)
            return None
        plan = plan_rule(
            rules,
            vm_name=wish.vm_name,
            private_ip=wish.private_ip,
            port=wish.port,
            sources=target.sources,
            expires_at=target.expires_at,
            band=self._band,
            grant_ids=target.grant_ids,
            now=self._clock(),
        )
        for name in plan.evicts:  # superseded rules whose sources the others hold: frees a priority
            self._delete(nsg_id, name)
        if not plan.unchanged:
            self._put(nsg_id, plan)
        for name in plan.replaces:  # only after the new rule is in: no gap for anyone
            self._delete(nsg_id, name)
        return NsgRuleRef(nsg_id, plan.name, plan.priority)

    def _read(self, nsg_id: str) -> list[RuleView]:
        parsed = parse_id(nsg_id, "networkSecurityGroups")
        network = self._clients.network_client(parsed.subscription)
        raw = network.network_security_groups.get(parsed.resource_group, parsed.name)
        view = nsg_view(raw)
        if self._topology is not None:
            self._topology.remember_nsg(nsg_id, view)
        return [as_rule_view(r) for r in view["rules"]]

    def _put(self, nsg_id: str, plan: RulePlan) -> None:
        from azure.mgmt.network.models import SecurityRule

        parsed = parse_id(nsg_id, "networkSecurityGroups")
        network = self._clients.network_client(parsed.subscription)
        if self._before_write is not None:
            self._before_write(nsg_id)
        poller = network.security_rules.begin_create_or_update(
            parsed.resource_group,
            parsed.name,
            plan.name,
            SecurityRule({"properties": plan.arm_properties()}),
            polling=_polling(self._poll_interval, final_get=False),
        )
        self._await(poller, f"writing rule {plan.name}")

    def _delete(self, nsg_id: str, rule_name: str) -> None:
        parsed = parse_id(nsg_id, "networkSecurityGroups")
        network = self._clients.network_client(parsed.subscription)
        try:
            poller = network.security_rules.begin_delete(
                parsed.resource_group, parsed.name, rule_name, polling=_polling(self._poll_interval)
            )
            self._await(poller, f"deleting rule {rule_name}")
        except ResourceNotFoundError:
            return  # already gone: the goal of a delete

    def _await(self, poller: Any, what: str) -> None:
        poller.wait(timeout=self._lro_timeout)
        if not poller.done():
            raise LroTimeout(f"ARM did not finish {what} within {self._lro_timeout:g}s")
        poller.result()

    def _replan_priority(self, nsg_id: str, plan: RulePlan) -> RulePlan:
        rules = self._read(nsg_id)
        fresh = plan_rule(
            [r for r in rules if r.name != plan.name],
            vm_name="-",
            private_ip=plan.private_ip,
            port=plan.port,
            sources=plan.sources,
            expires_at=plan.expires_at,
            band=self._band,
        )
        return dc_replace(plan, priority=fresh.priority)

    def _nsg_lock(self, nsg_id: str) -> threading.Lock:
        with self._lock:
            return self._nsg_locks.setdefault(nsg_id.lower(), threading.Lock())


_MIN_POLL_S = 0.05


def _polling(interval: float, *, final_get: bool = True) -> Any:
    """ARM polling that waits the operation's own `Retry-After` when it is shorter than `interval`.

    azure-core waits `Retry-After` only when it is non-zero, and otherwise the configured interval, so an
    operation that says "ready now" (0) would still cost a whole interval. Without `final_get`, polling
    stops at the operation's "Succeeded": the broker already knows the rule it wrote, and the extra GET per
    NSG would double a grant's read cost.
    """
    from azure.core.pipeline.policies._utils import get_retry_after
    from azure.core.polling.base_polling import LocationPolling, StatusCheckPolling
    from azure.mgmt.core.polling.arm_polling import ARMPolling, AzureAsyncOperationPolling, BodyContentPolling

    class _StatusOnly(AzureAsyncOperationPolling):  # type: ignore[type-arg]
        def get_final_get_url(self, pipeline_response: Any) -> str | None:
            return None

    class _Polling(ARMPolling):
        def _extract_delay(self) -> float:
            told = get_retry_after(self._pipeline_response)
            if told is None:
                return interval
            return max(_MIN_POLL_S, min(float(told), interval))

    first = _StatusOnly() if not final_get else AzureAsyncOperationPolling()
    return _Polling(
        interval,
        lro_algorithms=[first, LocationPolling(), BodyContentPolling(), StatusCheckPolling()],
    )


def _require_broker_plan(plan: RulePlan) -> None:
    rule = {"name": plan.name, "properties": plan.arm_properties()}
    if not is_broker_rule(rule):
        raise NotAllowed(f"{plan.name!r} is not a jit-broker rule; the broker never writes it")


def _short(nsg_id: str) -> str:
    return nsg_id.rstrip("/").rsplit("/", 1)[-1]
