"""One reconciler per NSG: read the NSG, compute its broker rules from the store, write it back conditionally.

A pass is level-triggered, as kubernetes-sigs/cloud-provider-azure keeps Service rules in NSGs
(`pkg/provider/securitygroup/azure_securitygroup_repo.go`): GET the NSG (its etag), then read the NSG's open
grants from the store, plan the whole collection (`jitbroker.nsgplan`: foreign rules kept as read), and PUT
the NSG with `If-Match: <etag>` — never without it. The Network provider enforces If-Match on NSG PUT
(`412 PreconditionFailed`, detail `PreconditionFailedEtagMismatch`), so `412` and ARM's other "another
operation" answers mean: read and plan again.

Why the NSG ends up equal to the store. Every change to an NSG's open grants is recorded in the store before
its actor asks for a pass, and a pass reads the store *after* its GET. Take the last successful PUT W: no
other write landed between W's GET and W's PUT (else 412), so every change recorded before W's GET is in W,
and every change recorded after it is followed by its actor's own pass, which either finds nothing to write
(the NSG already agrees) or writes after W — so W was not the last. A pass that wrote re-reads the store and
goes again if it changed meanwhile, so a writer that read just before a close cannot leave its source open.

In one process, callers on one NSG share passes (single flight): each caller waits for a pass that began
after it asked, and fifty grants arriving together cost one or two writes. Waiting is bounded: a caller
whose pass is not done within its timeout gets `StillWorking` and the pass goes on in the background.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from jitbroker import nsgplan, telemetry
from jitbroker.arm import LroTimeout, arm_call, error_code, is_retryable, parse_id
from jitbroker.clients import AzureClients
from jitbroker.errors import NotFound, UpstreamError
from jitbroker.model import Opening
from jitbroker.nsgplan import Desired, NsgPlan
from jitbroker.rules import Band

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Openings = Callable[[str], list[Opening]]


class StillWorking(Exception):
    """The pass a caller waits for is not done within its timeout; it goes on in the background."""


@dataclass(frozen=True)
class PassResult:
    """What one pass over an NSG found and did: the plan it wrote (or found already true) and the NSG read."""

    nsg_id: str
    plan: NsgPlan
    wrote: bool
    nsg: Mapping[str, Any]
    desired: Desired

    @property
    def security_rules(self) -> list[dict[str, Any]]:
        """The NSG's rule collection after the pass (as written, or as read when nothing changed)."""
        return [dict(r) for r in self.plan.security_rules]


@dataclass
class _Flight:
    """Single-flight state of one NSG: callers take tickets; a pass covers every ticket taken before it."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    tickets: int = 0
    served: int = 0
    running: bool = False
    waiting: int = 0
    outcomes: dict[int, tuple[PassResult | None, BaseException | None]] = field(default_factory=dict)


class NsgReconciler:
    """Brings NSGs to the state the store asks for, one conditional whole-NSG write per pass."""

    def __init__(
        self,
        clients: AzureClients,
        *,
        openings: Openings,
        clock: Clock,
        priority_band: Band = (100, 199),
        attempts: int = 8,
        base_delay: float = 0.2,
        max_delay: float = 4.0,
        lro_timeout: float = 20.0,
        poll_interval: float = 1.0,
        settle_timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        on_nsg_read: Callable[[str, Mapping[str, Any]], None] | None = None,
        before_write: Callable[[str], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._openings = openings
        self._clock = clock
        self._band = priority_band
        self._retry: dict[str, Any] = {
            "attempts": attempts,
            "base_delay": base_delay,
            "max_delay": max_delay,
            "sleep": sleep,
            "retry_on": _retry_pass,
        }
        self._lro_timeout = lro_timeout
        self._poll_interval = poll_interval
        self._settle_timeout = settle_timeout
        self._on_nsg_read = on_nsg_read
        self._before_write = before_write
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._nsg_locks: dict[str, threading.Lock] = {}
        self.writes = 0  # NSG PUTs this reconciler made (benchmarks and telemetry read it)

    # ------------------------------------------------------------------ the lifecycle's entry points

    def reconcile(self, nsg_id: str, *, timeout: float | None = None) -> PassResult:
        """Make the NSG hold exactly the broker rules its open grants ask for; return the covering pass.

        Concurrent callers on one NSG share passes. `StillWorking` when the pass is not done in `timeout`
        seconds (it goes on); ARM and store failures of the pass are raised to every caller it covered.
        """
        return self.reconcile_all([nsg_id], timeout=timeout)[nsg_id]

    def reconcile_all(self, nsg_ids: Iterable[str], *, timeout: float | None = None) -> dict[str, PassResult]:
        """`reconcile` for several NSGs at once (a VM's NIC and subnet NSGs): their passes run in parallel."""
        deadline = None if timeout is None else self._monotonic() + timeout
        tickets = [(nsg_id, *self._join(nsg_id)) for nsg_id in dict.fromkeys(nsg_ids)]
        results: dict[str, PassResult] = {}
        errors: list[BaseException] = []
        for nsg_id, flight, mine in tickets:  # wait on every ticket, so none stays counted as waiting
            try:
                results[nsg_id] = self._wait(nsg_id, flight, mine, deadline)
            except Exception as err:
                errors.append(err)
        if errors:
            raise errors[0]
        return results

    def trim(self, nsg_id: str) -> PassResult:
        """The orphan pass: take out of the broker's rules every source no open grant of this NSG holds, and
        delete rules that are empty or expired by name. It never adds (`nsgplan.plan_trim`)."""
        return self._pass(nsg_id, trim=True)

    def read(self, nsg_id: str) -> Mapping[str, Any]:
        """The NSG's ARM JSON, read fresh."""
        nsg, _ = arm_call(lambda: self._get(nsg_id), what=f"reading NSG {_short(nsg_id)}", **self._retry)
        return nsg

    # ------------------------------------------------------------------ single flight

    def _join(self, nsg_id: str) -> tuple[_Flight, int]:
        with self._lock:
            flight = self._flights.setdefault(nsg_id.lower(), _Flight())
        with flight.cond:
            flight.tickets += 1
            flight.waiting += 1
            if not flight.running:
                flight.running = True
                threading.Thread(
                    target=telemetry.carry(self._fly),  # the starter's invocation and trace follow the pass
                    args=(nsg_id, flight),
                    name=f"nsg-{_short(nsg_id)}",
                    daemon=True,
                ).start()
            return flight, flight.tickets

    def _wait(self, nsg_id: str, flight: _Flight, mine: int, deadline: float | None) -> PassResult:
        with flight.cond:
            try:
                while flight.served < mine:
                    left = None if deadline is None else deadline - self._monotonic()
                    if left is not None and left <= 0:
                        raise StillWorking(f"NSG {_short(nsg_id)} is still being written")
                    flight.cond.wait(left)
                result, error = flight.outcomes[min(t for t in flight.outcomes if t >= mine)]
            finally:
                flight.waiting -= 1
                if flight.waiting == 0:  # nobody left to read older outcomes
                    flight.outcomes = {t: o for t, o in flight.outcomes.items() if t == flight.served}
        if error is not None:
            raise error
        assert result is not None
        return result

    def _fly(self, nsg_id: str, flight: _Flight) -> None:
        while True:
            with flight.cond:
                if flight.served >= flight.tickets:
                    flight.running = False
                    return
                covering = flight.tickets  # every ticket up to here was taken before this pass's GET
                callers = covering - flight.served
            outcome: tuple[PassResult | None, BaseException | None]
            writes = telemetry.nsg_writes_in_thread()
            try:
                queued = functools.partial(_asked_since, flight, covering)
                outcome = (self._pass(nsg_id, trim=False, queued=queued), None)
            except BaseException as err:  # every caller this pass covered must hear about it
                outcome = (None, err)
            telemetry.nsg_pass(telemetry.nsg_writes_in_thread() - writes, callers)
            with flight.cond:
                flight.outcomes[covering] = outcome
                flight.served = covering
                flight.cond.notify_all()

    # ------------------------------------------------------------------ one pass

    def _pass(self, nsg_id: str, *, trim: bool, queued: Callable[[], bool] | None = None) -> PassResult:
        deadline = self._monotonic() + self._settle_timeout
        while True:
            result = arm_call(
                lambda: self._attempt(nsg_id, trim=trim), what=f"updating NSG {_short(nsg_id)}", **self._retry
            )
            if not result.wrote or (queued is not None and queued()):
                return result  # nothing written, or the next pass (already asked for) reads the store again
            # Written: if the store moved while we wrote, go again (a close recorded after our read).
            if _same(self._desired(nsg_id), result.desired):
                return result
            if self._monotonic() > deadline:
                raise UpstreamError(
                    f"NSG {_short(nsg_id)} kept changing for {self._settle_timeout:g}s; "
                    "the sweeper will settle it"
                )

    def _attempt(self, nsg_id: str, *, trim: bool) -> PassResult:
        with self._nsg_lock(nsg_id):  # this process's passes on one NSG never race each other's etag
            try:
                nsg, etag = self._get(nsg_id)
            except ResourceNotFoundError as err:
                desired = self._desired(nsg_id)
                if not desired.rules or trim:
                    empty = NsgPlan((), False, (), dict(desired.refused))
                    return PassResult(nsg_id, empty, False, {}, desired)
                raise NotFound(f"network security group {nsg_id} does not exist") from err
            desired = self._desired(nsg_id)  # after the GET: see the module docstring
            current = list((nsg.get("properties") or {}).get("securityRules") or [])
            if trim:
                plan = nsgplan.plan_trim(current, desired, self._clock())
            else:
                plan = nsgplan.plan_nsg(current, desired, self._band)
            if not plan.changed:
                if _settling(nsg):  # a write (ours that timed out, or another process's) may still fail
                    raise LroTimeout(f"NSG {_short(nsg_id)} is still being updated; reading it again")
                return PassResult(nsg_id, plan, False, nsg, desired)
            nsgplan.require_foreign_untouched(current, plan.security_rules)
            self._put(nsg_id, nsgplan.put_body(nsg, plan.security_rules), etag)
            return PassResult(nsg_id, plan, True, nsg, desired)

    def _desired(self, nsg_id: str) -> Desired:
        return nsgplan.desired_state(self._openings(nsg_id), self._clock())

    # ------------------------------------------------------------------ ARM

    def _get(self, nsg_id: str) -> tuple[Mapping[str, Any], str]:
        parsed = parse_id(nsg_id, "networkSecurityGroups")
        network = self._clients.network_client(parsed.subscription)
        nsg: Mapping[str, Any] = network.network_security_groups.get(
            parsed.resource_group,
            parsed.name,
            cls=lambda response, _model, _headers: response.http_response.json(),
        )
        if self._on_nsg_read is not None:
            self._on_nsg_read(nsg_id, nsg)
        etag = str(nsg.get("etag") or "")
        if not etag:
            raise UpstreamError(
                f"ARM returned NSG {_short(nsg_id)} without an etag; refusing an unconditional write"
            )
        return nsg, etag

    def _put(self, nsg_id: str, body: Mapping[str, Any], etag: str) -> None:
        parsed = parse_id(nsg_id, "networkSecurityGroups")
        network = self._clients.network_client(parsed.subscription)
        if self._before_write is not None:
            self._before_write(nsg_id)
        poller = network.network_security_groups.begin_create_or_update(
            parsed.resource_group,
            parsed.name,
            io.BytesIO(json.dumps(body).encode()),
            content_type="application/json",
            headers={"If-Match": etag},
            polling=status_only_polling(self._poll_interval),
        )
        with self._lock:
            self.writes += 1
        telemetry.nsg_write()
        poller.wait(timeout=self._lro_timeout)
        if not poller.done():
            raise LroTimeout(f"ARM did not finish writing NSG {_short(nsg_id)} within {self._lro_timeout:g}s")
        poller.result()

    def _nsg_lock(self, nsg_id: str) -> threading.Lock:
        with self._lock:
            return self._nsg_locks.setdefault(nsg_id.lower(), threading.Lock())


def _settling(nsg: Mapping[str, Any]) -> bool:
    """True while an operation on the NSG runs: what it shows may still be rolled back."""
    state = str((nsg.get("properties") or {}).get("provisioningState") or "Succeeded")
    return state.lower() not in ("succeeded", "failed", "canceled")


def _asked_since(flight: _Flight, covering: int) -> bool:
    """True when a caller asked after this pass began: its own pass will read the store again."""
    return flight.tickets > covering


def _same(fresh: Desired, written: Desired) -> bool:
    return fresh.access() == written.access() and set(fresh.refused) == set(written.refused)


def _retry_pass(err: BaseException) -> bool:
    """A pass is read-plan-write, so a lost etag race or ARM's "another operation" is cured by going again."""
    if isinstance(err, HttpResponseError) and (
        err.status_code == 412 or error_code(err) == "PreconditionFailed"
    ):
        return True
    return is_retryable(err)


_MIN_POLL_S = 0.05


def status_only_polling(interval: float) -> Any:
    """ARM polling that stops at the operation's "Succeeded" (no final GET: the broker knows what it wrote)
    and waits the operation's own `Retry-After` when it is shorter than `interval`.

    azure-core waits `Retry-After` only when it is non-zero, and otherwise the configured interval, so an
    operation that says "ready now" (0) would still cost a whole interval.
    """
    from azure.core.polling.base_polling import LocationPolling, StatusCheckPolling
    from azure.mgmt.core.polling.arm_polling import ARMPolling, AzureAsyncOperationPolling, BodyContentPolling

    from jitbroker.retry import header_seconds

    class _StatusOnly(AzureAsyncOperationPolling):  # type: ignore[type-arg]
        def get_final_get_url(self, pipeline_response: Any) -> str | None:
            return None

    class _Polling(ARMPolling):
        def _extract_delay(self) -> float:
            told = header_seconds(self._pipeline_response.http_response.headers)
            if told is None:
                return interval
            return max(_MIN_POLL_S, min(told, interval))

    return _Polling(
        interval,
        lro_algorithms=[_StatusOnly(), LocationPolling(), BodyContentPolling(), StatusCheckPolling()],
    )


def _short(nsg_id: str) -> str:
    return nsg_id.rstrip("/").rsplit("/", 1)[-1]
