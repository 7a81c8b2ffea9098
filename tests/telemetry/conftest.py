"""Telemetry tests: the broker's app and sweeper in this process, exporting to memory.

`otel` sets up in-memory OpenTelemetry pipelines once per session (`jitbroker.telemetry.setup_for_tests`:
what `start_azure_monitor` sets up, without Azure). `worker` stands in for the Functions Python worker: a
thread-local like the one it hands the app (`azure_functions.thread_local_storage`) and a log handler that,
like the worker's, reads that thread-local in the thread that emits a record. `api` drives the broker's real
app through the real Functions ASGI adapter (`func.AsgiMiddleware`) with a fake invocation context.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest

from jitbroker import telemetry
from jitbroker.telemetry import MemoryTelemetry

# A W3C traceparent as the Functions host hands it in `context.trace_context` (its invocation's span).
HOST_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
HOST_SPAN_ID = "00f067aa0ba902b7"
HOST_TRACEPARENT = f"00-{HOST_TRACE_ID}-{HOST_SPAN_ID}-01"


@pytest.fixture(scope="session")
def otel() -> Iterator[MemoryTelemetry]:
    handle = telemetry.setup_for_tests()
    yield handle
    handle.close()


@dataclass
class Seen:
    """One log record as the worker's handler sees it, in the thread that emitted it."""

    logger: str
    message: str
    thread: str
    invocation_id: str | None
    record: logging.LogRecord

    def extra(self, name: str) -> Any:
        """A field the record was given through `extra=` (or the log-record factory)."""
        return self.record.__dict__[name]


class WorkerLike(logging.Handler):
    """Reads the worker's thread-local at emit time, as the worker's own handler does."""

    def __init__(self, local: threading.local) -> None:
        super().__init__(logging.DEBUG)
        self.local = local
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        seen = Seen(
            record.name,
            record.getMessage(),
            threading.current_thread().name,
            getattr(self.local, "invocation_id", None),
            record,
        )
        with self._lock:
            self.seen.append(seen)


@dataclass
class Worker:
    local: threading.local
    handler: WorkerLike
    contexts: list[Any] = field(default_factory=list)

    def context(self, invocation_id: str, traceparent: str | None = HOST_TRACEPARENT) -> Any:
        """A `func.Context` as the worker makes it for one invocation."""
        trace = (
            SimpleNamespace(trace_parent=traceparent, trace_state="", attributes={}) if traceparent else None
        )
        return SimpleNamespace(
            invocation_id=invocation_id,
            thread_local_storage=self.local,
            trace_context=trace,
            function_name="api",
            function_directory="/home/site/wwwroot",
            retry_context=None,
        )

    def records(self, message: str) -> list[Seen]:
        return [s for s in self.handler.seen if s.message == message]


@pytest.fixture
def worker(otel: MemoryTelemetry) -> Iterator[Worker]:
    local = threading.local()
    handler = WorkerLike(local)
    broker = logging.getLogger("jitbroker")
    level = broker.level
    broker.setLevel(logging.INFO)
    broker.addHandler(handler)
    otel.clear()
    try:
        yield Worker(local, handler)
    finally:
        broker.removeHandler(handler)
        broker.setLevel(level)


@dataclass
class Answer:
    status: int
    body: Any


Api = Callable[..., Answer]


@pytest.fixture
def broker_now(in_process_broker: Callable[..., Any], clean_lab: Any) -> Any:
    """The api broker's parts built in this process with the real clock (tables and ARM of the lab)."""
    return in_process_broker(lambda: datetime.now(UTC))


@pytest.fixture
def api(broker_now: Any, worker: Worker, token_for: Callable[..., str], scenario: Any) -> Api:
    """`api("POST", "/api/v1/grants", user="alice", json={...}, invocation_id="inv-1")`: one request through
    the Functions ASGI adapter, wrapped as `function_app.py` wraps the broker's app."""
    from jitbroker.api import create_app

    app = create_app(broker_now.services)
    telemetry.instrument_fastapi(app)
    adapter = func.AsgiMiddleware(telemetry.InvocationContext(app))  # type: ignore[no-untyped-call]

    def call(
        method: str,
        path: str,
        *,
        user: str = "alice",
        json_body: Any = None,
        token: str | None = None,
        invocation_id: str = "inv-http",
        traceparent: str | None = HOST_TRACEPARENT,
    ) -> Answer:
        headers = {
            "Authorization": f"Bearer {token or token_for(user)}",
            "X-Forwarded-For": scenario.user(user).address,
        }
        body = b""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        request = func.HttpRequest(method, f"https://jit.example.test{path}", headers=headers, body=body)
        response = asyncio.run(adapter.handle_async(request, worker.context(invocation_id, traceparent)))
        text = response.get_body()
        return Answer(response.status_code, json.loads(text) if text else None)

    return call
