"""What a test can turn: latency per operation kind, LRO duration, request budgets, and injected faults.

Knobs and faults are set at construction (`ArmEmulator(..., knobs=..., faults=...)`) or at run time through
`/_lab/knobs` and `/_lab/faults` (see `docs/lab.md`)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

OP_KINDS = ("read", "write", "delete", "poll")
CONCURRENCY_MODES = ("reject", "lro_failed", "throttle", "supersede", "accept")


@dataclass(frozen=True)
class Knobs:
    """Run-time settings of the emulator.

    `latency_ms[kind]` delays every request of that kind; `lro_ms` is how long a write's long-running
    operation stays `InProgress` (the rule's `provisioningState` stays `Updating` meanwhile); a budget of N
    means the N+1th read (or write/delete) inside one `budget_window_s` window gets 429; list responses carry
    `page_size` items and a `nextLink` to the rest. `concurrency` picks what a write meets while another
    operation on the same NSG is in progress, each a behaviour Azure has shown (`lab.arm.concurrency`):
    `reject` (409 AnotherOperationInProgress), `lro_failed` (accepted, then its operation fails with that code
    and is rolled back), `throttle` (429 RetryableErrorDueToAnotherOperation with Retry-After), `supersede`
    (accepted; the running operation ends Canceled, its change kept) or `accept` (both proceed).
    """

    latency_ms: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(OP_KINDS, 0))
    lro_ms: int = 0
    write_budget: int | None = None
    read_budget: int | None = None
    budget_window_s: float = 300
    page_size: int = 50
    concurrency: str = "reject"

    def __post_init__(self) -> None:
        if self.concurrency not in CONCURRENCY_MODES:
            raise ValueError(
                f"unknown concurrency mode {self.concurrency!r} (known: {', '.join(CONCURRENCY_MODES)})"
            )

    def to_json(self) -> dict[str, Any]:
        """The knobs as `/_lab/knobs` shows them."""
        data = asdict(self)
        data["latency_ms"] = dict(self.latency_ms)
        return data

    def patched(self, changes: Mapping[str, Any]) -> Knobs:
        """A copy with `changes` applied (`latency_ms` merges per kind); ValueError names an unknown knob."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(
                f"unknown knobs: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
            )
        updates = dict(changes)
        if "latency_ms" in updates:
            latency = dict(self.latency_ms)
            for kind, value in dict(updates["latency_ms"]).items():
                if kind not in OP_KINDS:
                    raise ValueError(f"unknown operation kind {kind!r} (known: {', '.join(OP_KINDS)})")
                latency[kind] = int(value)
            updates["latency_ms"] = latency
        return replace(self, **updates)


@dataclass
class Fault:
    """The next `count` requests matching `method` and a path substring misbehave.

    - `status` set: they fail with that status and ARM `code` (and `Retry-After` if given).
    - `hang_ms` set: they wait that long first (then fail if `status` is set, else proceed).
    - `lro_status` set (`Failed`/`Canceled`): the write is accepted, but its long-running operation ends
      that way with `code`, and the change is rolled back.
    """

    method: str = "*"
    match: str = ""
    count: int = 1
    status: int | None = None
    code: str = "InternalServerError"
    message: str | None = None
    retry_after: int | None = None
    hang_ms: int = 0
    lro_status: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        return self.count > 0 and self.method in ("*", method.upper()) and self.match.lower() in path.lower()

    def to_json(self) -> dict[str, Any]:
        """The fault as `/_lab/faults` shows it."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """A fault from the admin endpoint's JSON; ValueError on unknown fields or nonsense."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        fault = cls(**{k: v for k, v in data.items() if v is not None})
        fault.method = fault.method.upper()
        if fault.lro_status is not None and fault.lro_status not in ("Failed", "Canceled"):
            raise ValueError("lro_status must be 'Failed' or 'Canceled'")
        if fault.status is None and not fault.hang_ms and fault.lro_status is None:
            raise ValueError("a fault needs status, hang_ms or lro_status")
        return fault


class FaultBook:
    """The pending faults; each request takes (and uses up) the first that matches it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Queue a fault."""
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        """The faults still pending."""
        with self._lock:
            return [f.to_json() for f in self._faults if f.count > 0]

    def take(self, method: str, path: str, *, lro: bool) -> Fault | None:
        """Use up one firing of the first fault matching the request (LRO faults only when `lro`)."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path) and (fault.lro_status is not None) == lro:
                    fault.count -= 1
                    return replace(fault)
            return None


class Budget:
    """Fixed-window request budgets per kind, with the remaining counts ARM reports in its headers."""

    NOMINAL: ClassVar[dict[str, int]] = {"read": 12000, "write": 1200, "delete": 15000}

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start: float | None = None
        self._used = {"read": 0, "write": 0}

    def reset(self) -> None:
        """Start a fresh window."""
        with self._lock:
            self._window_start = None
            self._used = {"read": 0, "write": 0}

    def spend(self, kind: str, knobs: Knobs) -> tuple[int, int | None]:
        """Count one request of `kind`; returns (remaining, retry_after_s or None when allowed).

        Deletes share the write budget, as in the Network RP's limits; polls are reads.
        """
        bucket = "read" if kind in ("read", "poll") else "write"
        limit = knobs.read_budget if bucket == "read" else knobs.write_budget
        with self._lock:
            now = self._clock()
            if self._window_start is None or now - self._window_start >= knobs.budget_window_s:
                self._window_start = now
                self._used = {"read": 0, "write": 0}
            cap = self.NOMINAL["delete" if kind == "delete" else bucket] if limit is None else limit
            if limit is not None and self._used[bucket] >= limit:
                wait = knobs.budget_window_s - (now - self._window_start)
                return 0, max(1, math.ceil(wait))
            self._used[bucket] += 1
            return max(0, cap - self._used[bucket]), None
