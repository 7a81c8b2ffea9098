"""What the Network RP does with a write on an NSG while another operation on that NSG is in progress.

Azure has shown every one of these, and a client must survive all of them (reference "Concurrency" and
"Concurrency as reported"); the `concurrency` knob picks one, `reject` by default:

- `reject`: `409 AnotherOperationInProgress` without `Retry-After` (so azure-core does not retry it behind
  the caller's back); the running operation carries on.
- `throttle`: `429 RetryableError`, detail `RetryableErrorDueToAnotherOperation`, with `Retry-After` (the
  seconds the running operation still needs, at least 1); azure-core waits and retries by itself.
- `lro_failed`: accepted (201/200/202 with the async headers, the change applied and `Updating`), but its
  operation ends `Failed` with `AnotherOperationInProgress` when due, and its own change is rolled back.
- `supersede`: accepted and proceeds; every operation running on the NSG ends `Canceled` at once, detail
  `CanceledAndSupersededDueToAnotherOperation`; their changes are kept (below).
- `accept`: accepted and proceeds, each write applies (parallel rule PUTs as reported since ~2022; Terraform
  azurerm PR 15719 dropped its per-NSG lock).

Why `supersede` keeps the canceled operation's change: the new write was accepted against the NSG as it stood,
with the old change already in it (its etag, its rules as a GET showed them), so the new write's goal state
includes the old change unless the new write itself replaced it. Rolling the old change back would silently
undo part of what the new write was computed on. NRP's message says exactly that: the operation was "canceled
and superseded", not failed. So a client whose poll ends `Canceled` must not assume its change is absent: it
reads the NSG again. The kept change settles (its rules turn `Succeeded`, deletions complete) when the
superseding operation ends, whatever that one's outcome.

Only ever one write is being admitted at a time (the world lock), and a rollback only ever reverts the failed
operation's own change (`lab.arm.changes`), so a later accepted write is never undone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lab.arm import errors
from lab.arm.lro import Operation


@dataclass(frozen=True)
class Admission:
    """How an accepted write proceeds: the failure its operation must end with, and what it cancels."""

    failure: errors.ArmError | None = None
    supersedes: tuple[Operation, ...] = ()


def admit(
    mode: str,
    running: Sequence[Operation],
    *,
    resource_guid: str,
    status_url: Callable[[Operation], str],
    now: float,
) -> Admission:
    """Decide a write on an NSG with `running` operations in progress; raises `ArmError` to refuse it."""
    if not running:
        return Admission()
    first = running[0]
    if mode == "reject":
        raise errors.another_operation_in_progress(status_url(first))
    if mode == "throttle":
        wait = max(1, first.retry_after(now))
        raise errors.retryable_due_to_another_operation(first.name, first.id, resource_guid, wait)
    if mode == "lro_failed":
        return Admission(failure=errors.another_operation_in_progress(status_url(first)))
    if mode == "supersede":
        return Admission(supersedes=tuple(running))
    return Admission()
