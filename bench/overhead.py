"""Where a warm grant's time goes at emulator latency 0: the broker built in this process (`build`), its real
ASGI app driven by Starlette's test client, every round trip listed and the time split by timed steps.

- table: time inside `GrantStore` calls (azure-data-tables and azure-core included), per request to Azurite,
- ARM: the reconciler's NSG GET and its PUT with the operation polls,
- token: `TokenVerifier.verify` (signature and claims; keys cached),
- the rest: HTTP framework and JSON, planning, thread hand-offs (the NSG's flight thread), cached lookups.

A timed step nested in another is counted once, in the outer one.
"""

from __future__ import annotations

import statistics
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from bench import crowd
from bench.delay import delayed as delay_relay
from bench.lab import BenchLab
from bench.sweep import table_of
from bench.table import Figure
from lab.settings import DEMO_ALLOWED_SCOPES

GRANTS = 30
PREFIX = "benchprof"


class _Steps:
    """Accumulated seconds per step, counting only the outermost timed call on each thread."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._depth = threading.local()
        self._lock = threading.Lock()

    def wrap(self, owner: Any, name: str, step: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._depth.n = depth
                if depth == 0:
                    with self._lock:
                        self.seconds[step] += time.perf_counter() - started
                        self.calls[step] += 1

        setattr(owner, name, timed)

    def clear(self) -> None:
        with self._lock:
            self.seconds.clear()
            self.calls.clear()


def where_time_goes() -> tuple[list[Figure], list[str]]:
    """Warm grants on web-01 in this process; a report figure and the list of one grant's round trips."""
    with BenchLab(None, DEMO_ALLOWED_SCOPES) as lab:
        broker = lab.in_process(PREFIX, JIT_ARM_POLL_SECONDS="0.05")
        steps = _instrument(broker)
        wire: list[tuple[str, str, float]] = []
        with _wire_log(lab.azurite.table_endpoint, wire), _client(broker) as client:

            def grant(who: crowd.Member) -> float:
                started = time.perf_counter()
                response = client.post(
                    "/api/v1/grants", json={"vm": "web-01"}, headers=crowd.headers(lab.issuer, who)
                )
                if response.status_code != 201:
                    raise RuntimeError(f"grant failed: {response.status_code} {response.text}")
                return time.perf_counter() - started

            for who in crowd.crowd(3):  # topology, keys, token and connections warm
                grant(who)
            wire.clear()
            grant(crowd.member(3))
            one = list(wire)
            steps.clear()
            walls = [grant(who) for who in crowd.crowd(GRANTS + 4)[4:]]

    per = {step: seconds / GRANTS * 1000 for step, seconds in steps.seconds.items()}
    wall = statistics.mean(walls) * 1000
    rest = wall - sum(per.values())
    tables = [w for w in one if w[0] == "table"]
    arm = [w for w in one if w[0] == "arm"]
    measured = (
        f"p50 {statistics.median(walls) * 1000:.0f} ms (mean {wall:.0f}): {len(tables)} table round trips "
        f"{per.get('table', 0):.0f} ms, {len(arm)} ARM round trips {per.get('arm', 0):.0f} ms, token "
        f"{per.get('token', 0):.1f} ms, the rest {rest:.0f} ms"
    )
    detail = [
        f"Round trips of one warm grant (in order, latency 0): {len(tables)} to Table Storage, "
        f"{len(arm)} to ARM"
    ]
    detail += [
        f"  {i:2d}. {kind:5} {what} ({ms:.1f} ms on the wire)" for i, (kind, what, ms) in enumerate(one, 1)
    ]
    figure = Figure(
        f"Where a warm grant's time goes (in process, latency 0, {GRANTS} grants)", measured, "report", None
    )
    return [figure], detail


TABLE_DELAY_S = 0.005  # a round trip to Table Storage from a Function app in the same region, roughly


def at_table_latency(delay: float = TABLE_DELAY_S) -> list[Figure]:
    """Warm grants in this process with `delay` added to every Table Storage round trip (`bench.delay`),
    first with a step's independent rows sent together (`jitbroker.overlap`), then with them one at a time."""
    from jitbroker import grants as lifecycle
    from jitbroker import store as tables
    from jitbroker.overlap import together

    def one_at_a_time(*calls: Callable[[], Any]) -> list[Any]:
        return [call() for call in calls]

    with BenchLab(None, DEMO_ALLOWED_SCOPES) as lab:
        endpoint = urlsplit(lab.azurite.table_endpoint)
        with delay_relay(endpoint.hostname or "127.0.0.1", endpoint.port or 80, delay) as port:
            near = lab.azurite.connection_string.replace(
                f"{endpoint.hostname}:{endpoint.port}", f"127.0.0.1:{port}"
            )
            broker = lab.in_process(
                PREFIX + "far", JIT_ARM_POLL_SECONDS="0.05", JIT_TABLE_CONNECTION_STRING=near
            )
            people = iter(crowd.crowd(3 + 2 * GRANTS))
            with _client(broker) as client:

                def grant() -> float:
                    headers = crowd.headers(lab.issuer, next(people))
                    started = time.perf_counter()
                    response = client.post("/api/v1/grants", json={"vm": "web-01"}, headers=headers)
                    if response.status_code != 201:
                        raise RuntimeError(f"grant failed: {response.status_code} {response.text}")
                    return (time.perf_counter() - started) * 1000

                for _ in range(3):
                    grant()
                overlapped = [grant() for _ in range(GRANTS)]
                users = (tables.__dict__, lifecycle.__dict__)  # the modules that call `together`
                try:
                    for names in users:
                        names["together"] = one_at_a_time
                    sequential = [grant() for _ in range(GRANTS)]
                finally:
                    for names in users:
                        names["together"] = together
    saved = statistics.median(sequential) - statistics.median(overlapped)
    return [
        Figure(
            f"Warm grant with {delay * 1000:g} ms per Table Storage round trip (in process, {GRANTS} grants)",
            f"p50 {statistics.median(overlapped):.0f} ms with independent rows sent together, "
            f"{statistics.median(sequential):.0f} ms one at a time ({saved:.0f} ms saved)",
            "report",
            None,
        )
    ]


def _instrument(broker: Any) -> _Steps:
    steps = _Steps()
    store, reconciler = broker.store, broker.reconciler
    for name in (
        "create",
        "get",
        "replace",
        "open_rows",
        "extend_open_rows",
        "drop_open_rows",
        "openings",
        "record",
    ):
        steps.wrap(store, name, "table")
    steps.wrap(reconciler, "_openings", "table")  # the reconciler holds the store's bound method
    steps.wrap(reconciler, "_get", "arm")
    steps.wrap(reconciler, "_put", "arm")
    steps.wrap(broker.services.verifier, "verify", "token")
    return steps


class _wire_log:  # a context manager
    """Record (kind, request, wire ms) of every azure-core request this process sends."""

    def __init__(self, table_endpoint: str, into: list[tuple[str, str, float]]) -> None:
        self._tables = urlsplit(table_endpoint).netloc
        self._into = into
        self._original: Callable[..., Any] | None = None

    def __enter__(self) -> _wire_log:
        from azure.core.pipeline.transport import RequestsTransport

        original = self._original = RequestsTransport.send
        tables, into, lock = self._tables, self._into, threading.Lock()

        def send(transport: Any, request: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            response = original(transport, request, **kwargs)
            ms = (time.perf_counter() - started) * 1000
            if urlsplit(request.url).netloc == tables:
                entry = (
                    "table",
                    f"{request.method} {table_of(request.url, PREFIX)}{_partition(request.url)}",
                    ms,
                )
            else:
                entry = ("arm", f"{request.method} {_arm_kind(request.url)}", ms)
            with lock:
                into.append(entry)
            return response

        RequestsTransport.send = send
        return self

    def __exit__(self, *exc: object) -> None:
        from azure.core.pipeline.transport import RequestsTransport

        RequestsTransport.send = self._original


def _partition(url: str) -> str:
    query = unquote(urlsplit(url).query)
    return " (query)" if "$filter" in query else ""


def _arm_kind(url: str) -> str:
    parts = urlsplit(url).path.rstrip("/").split("/")
    if "operations" in parts or "operationResults" in parts:
        return "operation status (poll)"
    return parts[-2] if len(parts) >= 2 else url


def _client(broker: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from jitbroker.api import create_app

    return TestClient(create_app(broker.services), base_url="http://127.0.0.1")
