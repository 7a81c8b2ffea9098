"""The fault matrix: which steps, which faults, under which ARM concurrency modes, and how it is printed.

Each cell is a (step x fault) pair run under one of the emulator's `concurrency` modes
(`lab.arm.knobs.CONCURRENCY_MODES`: what an NSG write meets while another operation on that NSG is in
progress). The steps are those of the reconciler's lifecycle on `db-01` (a NIC NSG and the subnet NSG it
shares with `win-01`):

- request:  the grant recorded, its first `open` row written, the NIC NSG PUT, the subnet NSG PUT, marked
  active;
- revoke:   the close recorded, the NIC NSG PUT, the subnet NSG PUT;
- expiry:   the sweeper's close recorded, its subnet NSG PUT;
- approval: `db-01` wants an approver, so alice's request waits with no rule; then the approver's yes
  recorded (the request moves to `pending` naming who decided), the NIC NSG PUT, the subnet NSG PUT that
  open the door the yes allowed.

A fault *at* a step strikes the first operation of its kind at or after that step, and outlasts the retries of
that one operation (the reconciler's own for ARM, azure-core's for Table Storage):

- ARM faults (500, 429 with Retry-After, AnotherOperationInProgress, an accepted write whose long-running
  operation fails, a hung call) at an NSG PUT strike that PUT (`PUT .../networkSecurityGroups/<name>`),
  whichever broker sends it first; at a store step they strike the next NSG request after the store write.
- 412 at an NSG PUT is a real etag race: someone else saves the NSG between the broker's GET and its PUT, so
  the broker's `If-Match` is stale (and, with a long-running operation, the retry meets the concurrency
  mode). At a store step a concurrent writer changes the grant record, so the broker's record etag is stale.
- Table Storage errors at a store step strike that store write; at an NSG PUT, the next store requests after
  ARM took the write.
- A crash is a broker (or sweeper) process killed with SIGKILL while the step's own request is held (by the
  ARM emulator's hang fault, or by the Table Storage proxy); the held request then lands, as a write the
  service took from a client that died.

Which modes run: by default every cell runs under one mode, rotating so that every step and every fault
meets every mode; `JIT_MATRIX_MODES=all` runs every cell under every mode, and a comma-separated list of
modes runs every cell under each of those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum

from lab.arm.knobs import CONCURRENCY_MODES
from tests.reliability.brokers import NIC_NSG, SUBNET_NSG

MODES: tuple[str, ...] = tuple(CONCURRENCY_MODES)
MODES_ENV = "JIT_MATRIX_MODES"

INVARIANTS = ("held", "orphans", "idempotent", "priorities", "rules", "stuck", "audit", "foreign")
INVARIANT_TITLES = {
    "held": "no open grant's source missing while it was active",
    "orphans": "no rule before a yes, nor without an open grant after a sweep",
    "idempotent": "asking again / revoking again changes nothing",
    "priorities": "no two rules ever shared a priority",
    "rules": "no rule left once every grant's time is up",
    "stuck": "no grant lost or stuck (closed with a reason)",
    "audit": "no audit event missing",
    "foreign": "no foreign rule changed",
}


class Path(Enum):
    """Which part of the lifecycle a step belongs to."""

    REQUEST = "request"
    REVOKE = "revoke"
    EXPIRY = "expiry"
    APPROVAL = "approval"


class Step(Enum):
    """A step of the request, revoke, expiry or approval path (DESIGN §4, §6; issue 13) of alice's grant on
    `db-01`. The approval steps come last so that adding them left every earlier cell's mode as it was."""

    RECORDED = "grant recorded"
    OPEN_ROWS = "open rows written"
    NIC_PUT = "NIC NSG PUT"
    SUBNET_PUT = "subnet NSG PUT"
    MARKED_ACTIVE = "marked active"
    REVOKE_RECORDED = "revoke recorded"
    NIC_REVOKE_PUT = "NIC NSG revoke PUT"
    SUBNET_REVOKE_PUT = "subnet NSG revoke PUT"
    EXPIRY_RECORDED = "expiry recorded"
    EXPIRY_PUT = "subnet NSG expiry PUT"
    APPROVAL_RECORDED = "approval recorded"
    APPROVED_NIC_PUT = "approved NIC NSG PUT"
    APPROVED_SUBNET_PUT = "approved subnet NSG PUT"

    @property
    def path(self) -> Path:
        """The part of the lifecycle the step is on."""
        if self in (Step.REVOKE_RECORDED, Step.NIC_REVOKE_PUT, Step.SUBNET_REVOKE_PUT):
            return Path.REVOKE
        if self in (Step.EXPIRY_RECORDED, Step.EXPIRY_PUT):
            return Path.EXPIRY
        if self in (Step.APPROVAL_RECORDED, Step.APPROVED_NIC_PUT, Step.APPROVED_SUBNET_PUT):
            return Path.APPROVAL
        return Path.REQUEST

    @property
    def nsg(self) -> str | None:
        """The NSG an NSG-PUT step writes (None for store steps)."""
        return {
            Step.NIC_PUT: NIC_NSG,
            Step.SUBNET_PUT: SUBNET_NSG,
            Step.NIC_REVOKE_PUT: NIC_NSG,
            Step.SUBNET_REVOKE_PUT: SUBNET_NSG,
            Step.EXPIRY_PUT: SUBNET_NSG,
            Step.APPROVED_NIC_PUT: NIC_NSG,
            Step.APPROVED_SUBNET_PUT: SUBNET_NSG,
        }.get(self)

    @property
    def opens(self) -> bool:
        """True when the step's NSG PUT puts alice's source in (else it takes it out)."""
        return self.path in (Path.REQUEST, Path.APPROVAL)

    @property
    def record_status(self) -> str | None:
        """The grant status a record step writes (None for other steps): `pending` is the insert of a
        request, or, for the approval, the waiting request's move to `pending` with the approver named."""
        return {
            Step.RECORDED: "pending",
            Step.MARKED_ACTIVE: "active",
            Step.REVOKE_RECORDED: "revoked",
            Step.EXPIRY_RECORDED: "expired",
            Step.APPROVAL_RECORDED: "pending",
        }.get(self)

    @property
    def inserts(self) -> bool:
        """True for the step that inserts the record (no etag yet: a concurrent writer can only change it
        after the insert, so that the broker's next write of it is the stale one)."""
        return self is Step.RECORDED


class Fault(Enum):
    """What goes wrong at the step."""

    CRASH = "process crash"
    ARM_500 = "ARM 500"
    ARM_429 = "ARM 429 + Retry-After"
    ARM_BUSY = "ARM AnotherOperationInProgress"
    LRO_FAILED = "ARM operation Failed"
    STALE_412 = "412 stale etag"
    TABLE = "Table Storage errors"
    ARM_HUNG = "hung ARM call"


def modes_for(step: Step, fault: Fault, selection: str | None = None) -> tuple[str, ...]:
    """The concurrency modes the (step, fault) cell runs under (see the module docstring)."""
    chosen = (os.environ.get(MODES_ENV, "") if selection is None else selection).strip().lower()
    if chosen == "all":
        return MODES
    if chosen and chosen != "rotate":
        wanted = tuple(m.strip() for m in chosen.split(",") if m.strip())
        unknown = [m for m in wanted if m not in MODES]
        if unknown:
            raise ValueError(f"{MODES_ENV}: unknown modes {unknown} (known: {', '.join(MODES)})")
        return wanted
    steps, faults = list(Step), list(Fault)
    return (MODES[(steps.index(step) + faults.index(fault)) % len(MODES)],)


@dataclass
class CellResult:
    """What one (step x fault x mode) cell saw."""

    step: Step
    fault: Fault
    mode: str
    fired: bool = False
    outcome: str = ""
    conflicts: int = 0  # NSG PUTs ARM refused with 412, 409 or 429 (another writer's, or injected)
    known_bug: str = ""  # the cell is marked xfail for this reported bug
    checks: dict[str, str] = field(default_factory=dict)  # invariant -> "" when it held, else why not

    @property
    def passed(self) -> bool:
        """Every invariant held."""
        return all(not why for why in self.checks.values()) and set(self.checks) == set(INVARIANTS)


class Matrix:
    """Results of the cells that ran this session, printed at the end of the run."""

    def __init__(self) -> None:
        self.cells: dict[tuple[Step, Fault, str], CellResult] = {}

    def add(self, result: CellResult) -> None:
        """Record one cell (a rerun replaces it)."""
        self.cells[(result.step, result.fault, result.mode)] = result

    def lines(self) -> list[str]:
        """The matrix as text: one row per cell, a pass/fail per invariant, then the counts."""
        if not self.cells:
            return []
        names = "  ".join(f"{name[:6]:<6}" for name in INVARIANTS)
        width = max(len(step.value) for step in Step)
        head = f"{'step':<{width}} {'fault':<31} {'mode':<10} {'fired':<5} {'confl':>5}  {names}  outcome"
        out = [head, "-" * len(head)]
        for step in Step:
            for fault in Fault:
                for mode in MODES:
                    cell = self.cells.get((step, fault, mode))
                    if cell is None:
                        continue
                    marks = "  ".join(f"{_mark(cell.checks.get(name)):<6}" for name in INVARIANTS)
                    fired = "yes" if cell.fired else "no"
                    row = f"{step.value:<{width}} {fault.value:<31} {mode:<10} {fired:<5} {cell.conflicts:>5}"
                    flag = "[known bug] " if cell.known_bug and not cell.passed else ""
                    out.append(f"{row}  {marks}  {flag}{cell.outcome}")
        out.append("")
        total = len(self.cells)
        passed = sum(1 for c in self.cells.values() if c.passed)
        per_mode = ", ".join(
            f"{mode} {sum(1 for c in self.cells.values() if c.mode == mode)}" for mode in MODES
        )
        contended = sum(1 for c in self.cells.values() if c.conflicts)
        known = sum(1 for c in self.cells.values() if c.known_bug and not c.passed)
        failed = f"failed: {total - passed}" + (f" ({known} of them reported bugs, xfail)" if known else "")
        out.append(f"cells: {total} ({per_mode})   all invariants held: {passed}   {failed}")
        out.append(f"cells where ARM refused an NSG PUT (412, 409 or 429): {contended}")
        titled = max(len(title) for title in INVARIANT_TITLES.values())
        for name in INVARIANTS:
            broken = [c for c in self.cells.values() if c.checks.get(name)]
            out.append(f"  {INVARIANT_TITLES[name]:<{titled}} held in {total - len(broken)}/{total}")
            out.extend(f"    {c.step.value} x {c.fault.value} x {c.mode}: {c.checks[name]}" for c in broken)
        return out


def _mark(why: str | None) -> str:
    if why is None:
        return "-"
    return "FAIL" if why else "pass"
