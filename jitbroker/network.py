"""ARM writes of the broker's own NSG rules: conflicts, throttling, long-running operations, coalescing.

Every write is one security rule (never a whole NSG, which could erase someone else's concurrent change),
planned from a fresh read of the NSG by `jitbroker.rules`, so a priority taken meanwhile
(`SecurityRuleConflict`) is cured by reading and planning again. ARM lets one operation at a time touch an
NSG, so this process serialises its own writes per NSG, and concurrent callers that want the same
(NSG, VM address, port) rule share one write: fifty grants arriving together cost one or two ARM writes,
not fifty queued ones. Rules that fail `is_broker_rule` are never written or deleted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from jitbroker.arm import LroTimeout, arm_call, error_code, parse_id
from jitbroker.clients import AzureClients
from jitbroker.errors import NotAllowed, NotFound
from jitbroker.model import NsgRuleRef
from jitbroker.rules import (
    Band,
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


@dataclass(frozen=True)
class _Desired:
    vm_name: str
    private_ip: str
    port: int
    sources: frozenset[str]
    expires_at: datetime
    grant_ids: frozenset[str] = frozenset()


@dataclass
class _Flight:
    """Single-flight state for one rule key: the latest wish, and how far writes caught up with wishes."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    submitted: int = 0
    completed: int = 0
    running: bool = False
    latest: _Desired | None = None
    outcome: tuple[NsgRuleRef | None, BaseException | None] = (None, None)


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
        """Make the NSG hold exactly one broker rule for (VM address, port) with `sources` until `expires_at`.

        No sources removes the rule (None is returned). Concurrent calls for the same rule share one ARM
        write: the latest wish wins, and every caller returns only after a write that began after its call.
        """
        wish = _Desired(vm_name, private_ip, port, frozenset(sources), expires_at, frozenset(grant_ids))
        key = (nsg_id.lower(), wish.private_ip, port)
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
                current = self._get_rule(nsg_id, rule_name)
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
        def attempt() -> NsgRuleRef | None:
            with self._nsg_lock(nsg_id):
                rules = self._read(nsg_id)
                ours = rules_for_key(rules, wish.private_ip, wish.port)
                if not wish.sources:
                    for rule in ours:
                        self._delete(nsg_id, rule.name)
                    return None
                plan = plan_rule(
                    rules,
                    vm_name=wish.vm_name,
                    private_ip=wish.private_ip,
                    port=wish.port,
                    sources=wish.sources,
                    expires_at=wish.expires_at,
                    band=self._band,
                    grant_ids=wish.grant_ids,
                )
                if not plan.unchanged:
                    self._put(nsg_id, plan)
                for name in plan.replaces:  # only after the new rule is in: no gap for anyone
                    self._delete(nsg_id, name)
                return NsgRuleRef(nsg_id, plan.name, plan.priority)

        try:
            return arm_call(attempt, what=f"updating NSG {_short(nsg_id)}", **self._retry)
        except ResourceNotFoundError as err:
            if not wish.sources:
                return None  # nothing to close in an NSG that is gone
            raise NotFound(f"network security group {nsg_id} does not exist") from err

    def _read(self, nsg_id: str) -> list[RuleView]:
        parsed = parse_id(nsg_id, "networkSecurityGroups")
        network = self._clients.network_client(parsed.subscription)
        raw = network.network_security_groups.get(parsed.resource_group, parsed.name)
        view = nsg_view(raw)
        if self._topology is not None:
            self._topology.remember_nsg(nsg_id, view)
        return [as_rule_view(r) for r in view["rules"]]

    def _get_rule(self, nsg_id: str, rule_name: str) -> RuleView | None:
        parsed = parse_id(nsg_id, "networkSecurityGroups")
        network = self._clients.network_client(parsed.subscription)
        try:
            rule = network.security_rules.get(parsed.resource_group, parsed.name, rule_name)
        except ResourceNotFoundError:
            return None
        return as_rule_view(rule)

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
            polling=_without_final_get(self._poll_interval),
        )
        self._await(poller, f"writing rule {plan.name}")

    def _delete(self, nsg_id: str, rule_name: str) -> None:
        parsed = parse_id(nsg_id, "networkSecurityGroups")
        network = self._clients.network_client(parsed.subscription)
        try:
            poller = network.security_rules.begin_delete(
                parsed.resource_group, parsed.name, rule_name, polling_interval=self._poll_interval
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


def _without_final_get(interval: float) -> Any:
    """ARM polling for a rule PUT that stops at the operation's "Succeeded", skipping the final GET.

    The broker already knows the rule it wrote; the extra read per NSG would double a grant's read cost.
    """
    from azure.core.polling.base_polling import LocationPolling, StatusCheckPolling
    from azure.mgmt.core.polling.arm_polling import ARMPolling, AzureAsyncOperationPolling, BodyContentPolling

    class _StatusOnly(AzureAsyncOperationPolling):  # type: ignore[type-arg]
        def get_final_get_url(self, pipeline_response: Any) -> str | None:
            return None

    return ARMPolling(
        interval,
        lro_algorithms=[_StatusOnly(), LocationPolling(), BodyContentPolling(), StatusCheckPolling()],
    )


def _require_broker_plan(plan: RulePlan) -> None:
    rule = {"name": plan.name, "properties": plan.arm_properties()}
    if not is_broker_rule(rule):
        raise NotAllowed(f"{plan.name!r} is not a jit-broker rule; the broker never writes it")


def _short(nsg_id: str) -> str:
    return nsg_id.rstrip("/").rsplit("/", 1)[-1]
