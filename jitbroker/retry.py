"""The broker's one retry/backoff helper: exponential backoff with jitter that honours a server's Retry-After.

Every call site that talks to Azure goes through `retry`, so backoff behaves the same everywhere and tests
can drive it with an injected `sleep` instead of waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

T = TypeVar("T")

RetryOn = Callable[[BaseException], bool] | type[BaseException] | tuple[type[BaseException], ...]


def retry(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.5,
    max_delay: float = 8.0,
    retry_on: RetryOn = Exception,
    sleep: Callable[[float], None] = time.sleep,
    max_retry_after: float = 60.0,
    jitter: Callable[[], float] = random.random,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """Call `fn` until it succeeds or `attempts` calls have failed; re-raise the last error.

    Between attempts it sleeps an exponentially growing, jittered delay (at most `max_delay`), or the
    error's Retry-After when that is longer (bounded by `max_retry_after`, so a hostile header cannot stall
    a request forever). Errors for which `retry_on` says no are raised at once.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    should_retry = _predicate(retry_on)
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as err:
            if attempt >= attempts or not should_retry(err):
                raise
            delay = backoff_delay(attempt, base_delay=base_delay, max_delay=max_delay, jitter=jitter)
            server_delay = retry_after_seconds(err)
            if server_delay is not None:
                delay = max(delay, min(server_delay, max_retry_after))
            if on_retry is not None:
                on_retry(err, attempt, delay)
            sleep(delay)
            attempt += 1


def backoff_delay(
    attempt: int, *, base_delay: float, max_delay: float, jitter: Callable[[], float] = random.random
) -> float:
    """The pause after failed attempt number `attempt` (1-based): "equal jitter" over base * 2**(attempt-1).

    Half the delay is fixed and half random, so concurrent brokers spread out without ever retrying at once.
    """
    ceiling = min(max_delay, base_delay * 2.0 ** (attempt - 1))
    return ceiling / 2 + jitter() * ceiling / 2


def retry_after_seconds(err: BaseException, *, now: Callable[[], datetime] | None = None) -> float | None:
    """The server's requested pause carried by an error, in seconds, or None.

    Looks at an explicit `retry_after` attribute first, then the HTTP response headers of azure-core errors
    (`Retry-After` in seconds or as an HTTP date, `retry-after-ms`, `x-ms-retry-after-ms`).
    """
    explicit = getattr(err, "retry_after", None)
    if isinstance(explicit, int | float) and explicit >= 0:
        return float(explicit)
    headers = _headers(err)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001)):
        value = _header(headers, name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                pass
    value = _header(headers, "retry-after")
    return None if value is None else _parse_retry_after(value, now)


def header_seconds(headers: Any) -> float | None:
    """The pause a response's `Retry-After` header asks for, in seconds (None when absent or unreadable)."""
    value = _header(headers, "retry-after")
    return None if value is None else _parse_retry_after(value, None)


def _parse_retry_after(value: str, now: Callable[[], datetime] | None) -> float | None:
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def _predicate(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, type | tuple):
        kinds = retry_on
        return lambda err: isinstance(err, kinds)
    return retry_on


def _headers(err: BaseException) -> Any:
    response = getattr(err, "response", None)
    return getattr(response, "headers", None) if response is not None else None


def _header(headers: Any, name: str) -> str | None:
    try:
        value = headers.get(name)
    except AttributeError:
        return None
    if value is None and hasattr(headers, "items"):
        for key, candidate in headers.items():
            if str(key).lower() == name:
                return str(candidate)
    return None if value is None else str(value)
