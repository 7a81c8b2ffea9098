"""Independent round trips of one request, sent at once.

A warm grant's time is mostly Table Storage round trips, and several of them do not depend on each other: an
audit event's two rows, a grant's index rows, the per-person and per-address reads before a request. Sent
together they cost one round trip's wait instead of one each (docs/performance.md has the figures).

Only leaf calls go through here (a call never waits on another `together`): a call made from one of the pool's
own threads runs its parts in turn, so a busy pool can never deadlock on itself. Each part runs in the
caller's context (invocation, trace), so its logs and spans stay tied to the request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from jitbroker import telemetry

_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="overlap")
_inside = threading.local()


def together(*calls: Callable[[], Any]) -> list[Any]:
    """Run `calls` at once and return their results in order. Every call ends before this returns; if any
    raised, the first failure in the order given is raised (the others' outcomes are dropped)."""
    if len(calls) < 2 or getattr(_inside, "pool_thread", False):
        return [call() for call in calls]
    futures: list[Future[Any]] = [_POOL.submit(_in_pool, telemetry.carry(call)) for call in calls[1:]]
    first: Any = None
    failure: BaseException | None = None
    try:
        first = calls[0]()
    except BaseException as err:
        failure = err
    results = [first]
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as err:
            failure = failure or err
            results.append(None)
    if failure is not None:
        raise failure
    return results


def _in_pool(call: Callable[[], Any]) -> Any:
    _inside.pool_thread = True
    return call()
