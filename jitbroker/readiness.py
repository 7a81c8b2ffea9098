"""Readiness: can this instance do its job right now — are Table Storage and ARM reachable with its identity?

`GET /api/ready` answers from here, with no token, so a platform health probe may call it often: each check's
result is cached for a short time, checks run concurrently, and an answer names which dependency failed and
how (an exception's type, never its text: messages can carry URLs, keys or tokens). `GET /api/health` stays
a bare liveness answer that touches nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

Check = Callable[[], None]


@dataclass(frozen=True)
class ReadinessReport:
    """Each dependency's state (`ok`, or `failed: <what>`), and whether all of them are ok."""

    checks: Mapping[str, str]

    @property
    def ready(self) -> bool:
        """True when every dependency answered."""
        return all(state == "ok" for state in self.checks.values())


class Readiness:
    """Runs named checks (each raises when its dependency is unreachable) and caches the report."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        *,
        cache_seconds: float = 10.0,
        timeout_seconds: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = dict(checks)
        self._ttl = cache_seconds
        self._timeout = timeout_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: tuple[float, ReadinessReport] | None = None

    def report(self) -> ReadinessReport:
        """The cached report while it is fresh, else a new one (one refresh at a time)."""
        with self._lock:
            now = self._monotonic()
            if self._cached is not None and now - self._cached[0] < self._ttl:
                return self._cached[1]
            fresh = ReadinessReport(self._run())
            self._cached = (self._monotonic(), fresh)
            return fresh

    def _run(self) -> dict[str, str]:
        # The pool is not waited for on the way out: a check that hangs (ARM holding a read for 30 s) is
        # reported once the timeout passes, and its thread ends on its own; the answer never waits for it.
        pool = ThreadPoolExecutor(max_workers=max(1, len(self._checks)), thread_name_prefix="ready")
        try:
            futures = {name: pool.submit(check) for name, check in self._checks.items()}
            deadline = self._monotonic() + self._timeout
            states: dict[str, str] = {}
            for name, future in futures.items():
                try:
                    future.result(timeout=max(0.0, deadline - self._monotonic()))
                    states[name] = "ok"
                except TimeoutError:
                    states[name] = f"failed: no answer within {self._timeout:g}s"
                except Exception as err:
                    log.warning("readiness: %s is not reachable (%s)", name, type(err).__name__)
                    states[name] = f"failed: {type(err).__name__}"
            return states
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def unavailable(reason: str) -> ReadinessReport:
    """A report for an instance that could not even build its services (bad settings, say)."""
    return ReadinessReport({"broker": f"failed: {reason}"})
