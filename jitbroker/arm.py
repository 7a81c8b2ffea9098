"""How the broker calls ARM: resource ids taken apart, which ARM errors are worth a retry, and one wrapper
that retries them (through `jitbroker.retry`) and turns what is left into the broker's own errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from jitbroker import telemetry
from jitbroker.errors import InvalidRequest, NsgLocked, UpstreamError, UpstreamThrottled
from jitbroker.retry import retry

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# ARM's "try again" codes: one operation at a time per NSG, superseded LROs, priority races (re-planned).
RETRYABLE_CODES = frozenset(
    code.lower()
    for code in (
        "AnotherOperationInProgress",
        "RetryableError",
        "RetryableErrorDueToAnotherOperation",
        "Canceled",
        "CanceledAndSupersededDueToAnotherOperation",
        "SecurityRuleConflict",
        "InternalServerError",
        "TooManyRequests",
        "SubscriptionRequestsThrottled",
        "OperationTimedOut",
    )
)


class LroTimeout(AzureError):
    """A long-running ARM operation did not finish within the broker's bound."""


@dataclass(frozen=True)
class ResourceId:
    """The parts of an ARM resource id the SDK calls need."""

    subscription: str
    resource_group: str
    name: str
    parent: str | None = None


def parse_id(resource_id: str, resource_type: str) -> ResourceId:
    """Take an ARM id of `resource_type` apart (`virtualMachines`, `subnets`, ...); else `InvalidRequest`."""
    parts = [p for p in resource_id.split("/") if p]
    lower = [p.lower() for p in parts]
    if (
        len(parts) < 8
        or lower[0] != "subscriptions"
        or lower[2] != "resourcegroups"
        or lower[4] != "providers"
        or len(parts) % 2 != 0
        or lower[-2] != resource_type.lower()
    ):
        raise InvalidRequest(f"{resource_id!r} is not the id of a {resource_type} resource")
    parent = parts[-3] if len(parts) >= 10 else None
    return ResourceId(subscription=parts[1], resource_group=parts[3], name=parts[-1], parent=parent)


def error_code(err: BaseException) -> str:
    """ARM's `error.code` carried by an azure-core error ('' when there is none)."""
    error = getattr(err, "error", None)
    code = getattr(error, "code", None) if error is not None else None
    return str(code or "")


def is_retryable(err: BaseException) -> bool:
    """True for ARM refusals that a later attempt (with a fresh plan) can cure."""
    if isinstance(err, LroTimeout | ServiceRequestError | ServiceResponseError):
        return True
    if isinstance(err, ClientAuthenticationError | ResourceNotFoundError):
        return False
    if isinstance(err, HttpResponseError):
        if err.status_code in RETRYABLE_STATUS:
            return True
        return error_code(err).lower() in RETRYABLE_CODES
    return False


def is_throttled(err: BaseException) -> bool:
    """True when ARM said "too many requests" rather than "failed"."""
    status = getattr(err, "status_code", None)
    return status == 429 or "throttl" in error_code(err).lower() or error_code(err) == "TooManyRequests"


def arm_call(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int = 4,
    base_delay: float = 0.5,
    max_delay: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
    retry_on: Callable[[BaseException], bool] = is_retryable,
    **retry_options: Any,
) -> T:
    """Run one ARM call with retries; a 404 passes through, anything else left becomes `UpstreamError`.

    `what` names the step for a person ("reading VM web-01"); ARM's own messages may contain ids, so only
    the error code is repeated.
    """
    also_on_retry: Callable[[BaseException, int, float], None] | None = retry_options.pop("on_retry", None)

    def on_retry(err: BaseException, attempt: int, delay: float) -> None:
        code = _metric_code(err)
        telemetry.arm_retry(code)
        _observe_throttling(err, code, what)
        if also_on_retry is not None:
            also_on_retry(err, attempt, delay)

    try:
        return retry(
            fn,
            attempts=attempts,
            base_delay=base_delay,
            max_delay=max_delay,
            retry_on=retry_on,
            sleep=sleep,
            on_retry=on_retry,
            **retry_options,
        )
    except ResourceNotFoundError:
        raise
    except ClientAuthenticationError as err:
        raise UpstreamError(f"Azure refused the broker's identity while {what}") from err
    except AzureError as err:
        code = error_code(err) or type(err).__name__
        if code == "ScopeLocked":
            raise NsgLocked(
                f"a ReadOnly lock stops jit-broker while {what}: ask the resource's owners to remove "
                "the lock or to take the VM out of just-in-time access"
            ) from err
        if is_throttled(err):
            _observe_throttling(err, _metric_code(err), what)
            raise UpstreamThrottled(
                f"Azure is throttling the broker ({code}) while {what}; retry later"
            ) from err
        raise UpstreamError(f"Azure failed while {what} ({code})") from err


def _metric_code(err: BaseException) -> str:
    """A low-cardinality name for an ARM answer: its error code, else its HTTP status, else the error type."""
    return error_code(err) or str(getattr(err, "status_code", None) or type(err).__name__)


def _observe_throttling(err: BaseException, code: str, what: str) -> None:
    if is_throttled(err):
        telemetry.arm_throttle(code)
        log.warning("arm throttled", extra={"code": code, "what": what})
