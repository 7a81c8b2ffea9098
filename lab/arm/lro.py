"""Long-running operations: the Network RP's one-operation-at-a-time per NSG and the operation-status
resource.

A write registers an `Operation` that stays `InProgress` for the `lro_ms` knob, then settles: `Succeeded`
commits the change (the rule's `provisioningState` turns `Succeeded`, the NSG gets a new etag),
`Failed`/`Canceled` (an injected fault, or the `lro_failed` concurrency mode) rolls it back. An operation
superseded by a later write on the same NSG ends `Canceled` at once (`supersede`); what becomes of its change
is the service's business (`lab.arm.changes`). Operations settle when anything looks at them and, so that
subscribers see the change even if nobody polls, on a background clock thread."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TERMINAL = ("Succeeded", "Failed", "Canceled")


@dataclass
class Operation:
    """One asynchronous operation on an NSG."""

    id: str
    nsg_key: str
    name: str  # NRP's operation name, e.g. PutSecurityRuleOperation
    sub: str
    location: str
    due: float
    outcome: str
    error_code: str | None
    finish: Callable[[Operation], None]
    error_message: str | None = None
    status: str = "InProgress"
    superseded_by: Operation | None = None

    def status_path(self) -> str:
        """Path of the Azure-AsyncOperation resource."""
        return f"{self._base()}/operations/{self.id}"

    def result_path(self) -> str:
        """Path of the Location (operationResults) resource."""
        return f"{self._base()}/operationResults/{self.id}"

    def _base(self) -> str:
        return f"/subscriptions/{self.sub}/providers/Microsoft.Network/locations/{self.location}"

    def retry_after(self, now: float) -> int:
        """Seconds until the operation is due, as ARM's Retry-After (0 when due)."""
        return max(0, math.ceil(self.due - now))

    def supersede(self, by: Operation) -> None:
        """End `Canceled` now because the later write `by` took over this NSG."""
        self.status = "Canceled"
        self.error_code = "CanceledAndSupersededDueToAnotherOperation"
        self.superseded_by = by

    def status_json(self) -> dict[str, Any]:
        """The operation-status body: `{"status": ...}` plus ARM's error object when Failed or Canceled.

        Canceled: the shape logged from a superseded PutSecurityRuleOperation (reference §2.6).
        """
        body: dict[str, Any] = {"status": self.status}
        if self.status == "Canceled":
            code = self.error_code or "CanceledAndSupersededDueToAnotherOperation"
            by = self.superseded_by
            by_name, by_id = (by.name, by.id) if by is not None else (self.name, str(uuid.uuid4()))
            body["error"] = {
                "code": "Canceled",
                "message": "Operation was canceled.",
                "details": [
                    {
                        "code": code,
                        "message": f"Operation {self.name} ({self.id}) was canceled and superseded by "
                        f"operation {by_name} ({by_id}).",
                    }
                ],
            }
        elif self.status == "Failed":
            code = self.error_code or "InternalServerError"
            body["error"] = {
                "code": code,
                "message": self.error_message or f"Operation {self.name} ({self.id}) failed: {code}.",
                "details": [],
            }
        return body


class OperationBook:
    """Every operation by id, and which NSG is busy; callers hold the world lock around `start`/`settle`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._ops: dict[str, Operation] = {}
        self._wake = threading.Condition()

    def running(self, nsg_key: str) -> list[Operation]:
        """The operations in progress on an NSG, oldest first (settle first)."""
        return [op for op in self._ops.values() if op.nsg_key == nsg_key and op.status == "InProgress"]

    def get(self, op_id: str) -> Operation | None:
        """An operation by id."""
        return self._ops.get(op_id.lower())

    def start(
        self,
        *,
        nsg_key: str,
        name: str,
        sub: str,
        location: str,
        duration_ms: int,
        outcome: str,
        error_code: str | None,
        error_message: str | None = None,
        finish: Callable[[Operation], None],
    ) -> Operation:
        """Register a new operation due after `duration_ms`."""
        op = Operation(
            id=str(uuid.uuid4()),
            nsg_key=nsg_key,
            name=name,
            sub=sub,
            location=location,
            due=self.clock() + duration_ms / 1000,
            outcome=outcome,
            error_code=error_code,
            error_message=error_message,
            finish=finish,
        )
        self._ops[op.id] = op
        with self._wake:
            self._wake.notify_all()
        return op

    def settle(self) -> None:
        """Finish every operation whose time has come (commit or roll back)."""
        now = self.clock()
        for op in sorted(self._ops.values(), key=lambda o: o.due):
            if op.status == "InProgress" and op.due <= now:
                op.status = op.outcome
                op.finish(op)

    def clear(self) -> None:
        """Forget every operation (reset)."""
        self._ops.clear()

    def next_due(self) -> float | None:
        """When the earliest pending operation is due."""
        pending = [op.due for op in self._ops.values() if op.status == "InProgress"]
        return min(pending) if pending else None

    def wait(self, timeout: float) -> None:
        """Sleep until woken by a new operation or `timeout` seconds pass (the clock thread)."""
        with self._wake:
            self._wake.wait(timeout)

    def wake(self) -> None:
        """Wake the clock thread (stop)."""
        with self._wake:
            self._wake.notify_all()
