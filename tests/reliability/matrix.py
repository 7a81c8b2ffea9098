"""The fault matrix: which step boundaries, which faults, what each cell found, and how it is printed.

A fault *at* a boundary strikes the first operation of its kind at or after that step, and outlasts the
retries of that one operation (the broker's own for ARM, azure-core's for Table Storage):

- ARM faults (500, 429 with Retry-After, AnotherOperationInProgress, 412, a hung call) at an NSG write strike
  that rule write; at a store step they strike the next ARM request after the store write.
- Table Storage errors at a store step strike that store write; at an NSG write, the next store request after
  ARM took the write.
- 412 at a store step is real: a concurrent writer changes the grant record at that moment, so the broker's
  etag is stale; at an NSG write, ARM answers `412 PreconditionFailed`.
- A crash is a broker subprocess killed with SIGKILL while the step's own request is held (by the ARM
  emulator's hang fault, or by the Table Storage proxy); the held request then lands, as a write the service
  took from a client that died.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

INVARIANTS = ("rules", "stuck", "audit", "foreign")
INVARIANT_TITLES = {
    "rules": "no rule left that should be gone",
    "stuck": "no grant stuck (revoked/expired/failed with a reason)",
    "audit": "no audit event missing",
    "foreign": "no foreign rule changed",
}


class Boundary(Enum):
    """A step boundary of the grant or revoke path (DESIGN §4), on `db-01` (NIC NSG + subnet NSG)."""

    RECORDED_PENDING = "recorded pending"
    NIC_WRITE = "NIC NSG write"
    SUBNET_WRITE = "subnet NSG write"
    MARKED_ACTIVE = "marked active"
    NIC_REVOKE = "NIC NSG revoke write"
    SUBNET_REVOKE = "subnet NSG revoke write"
    MARKED_REVOKED = "marked revoked"

    @property
    def on_revoke_path(self) -> bool:
        """True when the grant is made fault-free first and the fault strikes its revoke."""
        return self in (Boundary.NIC_REVOKE, Boundary.SUBNET_REVOKE, Boundary.MARKED_REVOKED)

    @property
    def nsg(self) -> str | None:
        """The NSG an NSG-write boundary writes to (None for store steps)."""
        return {
            Boundary.NIC_WRITE: "db-01-nsg",
            Boundary.SUBNET_WRITE: "app-subnet-nsg",
            Boundary.NIC_REVOKE: "db-01-nsg",
            Boundary.SUBNET_REVOKE: "app-subnet-nsg",
        }.get(self)

    @property
    def arm_method(self) -> str:
        """The rule write's HTTP method: PUT opens, DELETE closes."""
        return "DELETE" if self.on_revoke_path else "PUT"

    @property
    def store_status(self) -> str | None:
        """The grant status a store-step boundary writes (None for NSG writes)."""
        return {
            Boundary.RECORDED_PENDING: "pending",
            Boundary.MARKED_ACTIVE: "active",
            Boundary.MARKED_REVOKED: "revoked",
        }.get(self)


class Fault(Enum):
    """What goes wrong at the boundary."""

    CRASH = "process crash"
    ARM_500 = "ARM 500"
    ARM_429 = "ARM 429 + Retry-After"
    ARM_BUSY = "ARM AnotherOperationInProgress"
    STALE_412 = "412 stale etag"
    TABLE = "Table Storage errors"
    ARM_HUNG = "hung ARM call"


@dataclass
class CellResult:
    """What one (boundary x fault) cell saw."""

    boundary: Boundary
    fault: Fault
    fired: str = "?"
    outcome: str = ""
    sweeps: int = 0
    checks: dict[str, str] = field(default_factory=dict)  # invariant -> "" when it held, else why not

    @property
    def passed(self) -> bool:
        """Every invariant held."""
        return all(not why for why in self.checks.values()) and set(self.checks) == set(INVARIANTS)


class Matrix:
    """Results of the cells that ran this session, printed at the end of the run."""

    def __init__(self) -> None:
        self.cells: dict[tuple[Boundary, Fault], CellResult] = {}

    def add(self, result: CellResult) -> None:
        """Record one cell (a rerun replaces it)."""
        self.cells[(result.boundary, result.fault)] = result

    def lines(self) -> list[str]:
        """The matrix as text: one row per cell, a pass/fail per invariant, then the counts."""
        if not self.cells:
            return []
        head = f"{'boundary':<24} {'fault':<31} {'fired':<9} {'sweeps':>6}  "
        head += "  ".join(f"{name:<7}" for name in INVARIANTS) + "  outcome"
        out = [head, "-" * len(head)]
        for boundary in Boundary:
            for fault in Fault:
                cell = self.cells.get((boundary, fault))
                if cell is None:
                    continue
                marks = "  ".join(f"{_mark(cell.checks.get(name)):<7}" for name in INVARIANTS)
                row = f"{boundary.value:<24} {fault.value:<31} {cell.fired:<9} {cell.sweeps:>6}  {marks}"
                out.append(f"{row}  {cell.outcome}")
        out.append("")
        total = len(self.cells)
        passed = sum(1 for c in self.cells.values() if c.passed)
        out.append(f"cells: {total}   all invariants held: {passed}   failed: {total - passed}")
        for name in INVARIANTS:
            broken = [c for c in self.cells.values() if c.checks.get(name)]
            out.append(f"  {INVARIANT_TITLES[name]:<54} held in {total - len(broken)}/{total}")
            out.extend(f"    {c.boundary.value} x {c.fault.value}: {c.checks[name]}" for c in broken)
        return out


def _mark(why: str | None) -> str:
    if why is None:
        return "-"
    return "FAIL" if why else "pass"
