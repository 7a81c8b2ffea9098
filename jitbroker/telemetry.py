"""What operators see of the broker: its invocation in every thread, spans, metrics, and audit records.

Nothing here is needed for the broker to work, and nothing here imports OpenTelemetry at import time: the
instruments are made on first use, and when `opentelemetry` is not installed every call is a no-op. The
Azure Monitor distro is started by `function_app.py` (`start_azure_monitor`), on the first invocation, so
indexing the app stays cheap.

**Invocation context across threads.** The Functions Python worker ties a log record to an invocation
through a thread-local (`context.thread_local_storage.invocation_id`; an HTTP request's ASGI scope carries
it as `scope["azure_functions.thread_local_storage"]`), which threads the worker did not start never have
(azure-functions-python-worker issue 1358: their records are dropped or uncorrelated). `invocation()` puts
the invocation into a contextvar; the log-record factory (`install_log_context`) copies it into the
worker's thread-local of whichever thread makes a record, and onto the record as `InvocationId`. FastAPI runs
sync handlers in anyio threads, which copy contextvars; the broker's own threads are started through
`carry(fn)`, which runs `fn` in a copy of its starter's context — so the invocation and the OpenTelemetry
trace context follow into the close pool, the orphan pool and the reconciler's flight thread.

**Metrics** (meter `jitbroker`):
- `jit.grants.{requested,granted,denied,failed,revoked,expired}`: counters, one per audit event of that kind.
- `jit.grants.open`: observable gauge, the number of open (pending or active, unexpired) grants the last
  complete orphan pass saw in this process. That pass already reads every NSG's open rows, so the figure
  costs no extra read; the price is that it is refreshed once per sweep, reported only by the process that
  sweeps (none for an HTTP-only instance), and not at all when a sweep ran out of time or failed on an NSG
  (a stale figure is dropped after `OPEN_GAUGE_TTL_S`). A per-process up/down counter would cost nothing
  either, but it is wrong across instances and restarts (the HTTP instance counts opens, the timer instance
  counts expiries, and a recycled process forgets both).
- `jit.sweep.duration`, `jit.sweep.lag` (s): histograms, one value per sweep; lag is now minus the expiry of
  the oldest grant that was due and still open when the sweep started (0 when none was due).
- `jit.arm.retries`, `jit.arm.throttles`: counters by `code` (ARM's error code, else the HTTP status or the
  error type); a throttled answer is counted once, whether it was retried or was the last one.
- `jit.nsg.writes`: counter of NSG PUTs (reconciler and orphan pass).
- `jit.nsg.writes_per_grant`: histogram, one value per reconciler pass (not the orphan pass): the PUTs the
  pass made divided by the callers it served (each caller is one grant asking for its NSG — a request,
  extend, revoke — or one sweep batch). 1.0 means no coalescing; fifty grants served by one write record
  0.02; 0 is a pass that found the NSG already right. For "writes per grant" over a window, divide
  `jit.nsg.writes` by the granted + revoked + expired + failed counters.

**Log records operators query** (`customDimensions` in Application Insights): `audit <kind>` on logger
`jitbroker.audit` (grant_id, principal_oid, vm, vm_name, port, source, status, reason, kind); `sweep done`
(expired, undone, orphans_removed, errors, duration_ms, lag_s, out_of_time); warning `orphan rule outlived
its grant` (rule, nsg, overdue_s); warning `arm throttled` (code, what); error `notification undeliverable`
(error, tries, poison_queue).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from jitbroker.model import AuditEvent

log = logging.getLogger(__name__)
audit_log = logging.getLogger("jitbroker.audit")

P = ParamSpec("P")
R = TypeVar("R")

CONNECTION_STRING_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
SCOPE_INVOCATION_ID = "azure_functions.invocation_id"
SCOPE_THREAD_LOCAL = "azure_functions.thread_local_storage"
SCOPE_TRACE_CONTEXT = "azure_functions.trace_context"
GRANT_EVENTS = ("requested", "granted", "denied", "failed", "revoked", "expired")
OPEN_GAUGE_TTL_S = 600.0
# Probes would be most of the requests and none of the interest.
EXCLUDED_URLS = "/api/health$,/api/ready$"
# The distro's other instrumentations stay off: the Azure SDK's own spans already cover every ARM and Table
# call (with one HTTP span each), FastAPI is instrumented on the broker's app itself, the rest is unused.
_DISTRO_OFF = ("django", "fastapi", "flask", "httpx", "httpx2", "psycopg2", "requests", "urllib", "urllib3")


# ---------------------------------------------------------------------------------------------- invocations


@dataclass(frozen=True)
class Invocation:
    """A Functions invocation: its id, and the worker's thread-local that ties a thread's records to it."""

    invocation_id: str
    thread_local: Any = None


_invocation: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "jitbroker_invocation", default=None
)


def current_invocation() -> Invocation | None:
    """The invocation this code runs for, if any."""
    return _invocation.get()


@contextlib.contextmanager
def invocation(
    invocation_id: str | None,
    thread_local: Any = None,
    *,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> Iterator[None]:
    """Run the block (and every thread it starts through `carry`) for this Functions invocation.

    `traceparent`/`tracestate` (the invocation's `trace_context`) make the block's spans children of the
    host's invocation when OpenTelemetry is installed.
    """
    token = _invocation.set(Invocation(invocation_id, thread_local)) if invocation_id else None
    attached = _attach_trace(traceparent, tracestate)
    try:
        _bind_thread()
        yield
    finally:
        if attached is not None:
            _detach_trace(attached)
        if token is not None:
            _invocation.reset(token)


def carry(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, to run in another thread in a snapshot of the caller's context (invocation, trace, span).

    Each call runs in its own copy of the snapshot, so one wrapper can serve a whole pool at once.
    """
    snapshot = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return snapshot.copy().run(fn, *args, **kwargs)

    return run


def _bind_thread() -> str | None:
    """Tie this thread's records to the current invocation (the worker's thread-local); its id, if any."""
    current = _invocation.get()
    if current is None:
        return None
    local = current.thread_local
    if local is not None and getattr(local, "invocation_id", None) != current.invocation_id:
        with contextlib.suppress(
            Exception
        ):  # a foreign object that refuses attributes: only correlation lost
            local.invocation_id = current.invocation_id
    return current.invocation_id


_factory_lock = threading.Lock()
_factory_installed = False


def install_log_context() -> None:
    """Wrap the log-record factory (once per process): every record made while an invocation is current
    carries its id (`InvocationId`) and ties its thread to the invocation for the worker's log handler."""
    global _factory_installed  # noqa: PLW0603 - one factory per process
    with _factory_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            invocation_id = _bind_thread()
            if invocation_id is not None and not hasattr(record, "InvocationId"):
                record.InvocationId = invocation_id
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


Scope = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[MutableMapping[str, Any]], Any]
AsgiApp = Callable[[Scope, Receive, Send], Any]


class InvocationContext:
    """ASGI middleware for the app the Functions host serves: each request runs for its invocation.

    The scope's `azure_functions.invocation_id` and `azure_functions.thread_local_storage` go into the
    contextvar (so handler threads and the broker's own threads log for the invocation), and the host's
    `azure_functions.trace_context` becomes the request's `traceparent`, so the request span is a child of
    the host's invocation. `on_first_call` runs once, before the first scope (lifespan included) reaches
    the app: the place to start telemetry without paying for it at import.
    """

    def __init__(self, app: AsgiApp, *, on_first_call: Callable[[], None] | None = None) -> None:
        self.app = app
        self._on_first_call = on_first_call
        self._started = on_first_call is None
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._started:
            self._start()
        invocation_id = scope.get(SCOPE_INVOCATION_ID)
        if scope.get("type") != "http" or not invocation_id:
            await self.app(scope, receive, send)
            return
        with invocation(str(invocation_id), scope.get(SCOPE_THREAD_LOCAL)):
            await self.app(_with_trace_headers(scope), receive, send)

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            try:
                if self._on_first_call is not None:
                    self._on_first_call()
            except Exception:  # telemetry must never stop the API
                log.exception("could not start telemetry; the broker runs without it")
            finally:
                self._started = True


def _with_trace_headers(scope: Scope) -> Scope:
    trace = scope.get(SCOPE_TRACE_CONTEXT)
    parent = getattr(trace, "trace_parent", None)
    if not parent:
        return scope
    state = getattr(trace, "trace_state", None)
    headers = [
        (k, v) for k, v in scope.get("headers") or [] if k.lower() not in (b"traceparent", b"tracestate")
    ]
    headers.append((b"traceparent", str(parent).encode("latin-1")))
    if state:
        headers.append((b"tracestate", str(state).encode("latin-1")))
    return {**scope, "headers": headers}


# ---------------------------------------------------------------------------------------------- spans


def _attach_trace(traceparent: str | None, tracestate: str | None) -> object | None:
    if not traceparent:
        return None
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    carrier = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
    return otel_context.attach(TraceContextTextMapPropagator().extract(carrier))


def _detach_trace(token: object) -> None:
    from opentelemetry import context as otel_context

    with contextlib.suppress(Exception):
        otel_context.detach(token)  # type: ignore[arg-type]


class _Span:
    """What `span()` yields: attributes go to the OpenTelemetry span when there is one."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def set(self, **attributes: str | int | float | bool | None) -> None:
        if self._span is None:
            return
        for key, value in attributes.items():
            if value is not None:
                self._span.set_attribute(key, value)


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool | None) -> Iterator[_Span]:
    """A span around the block (its exception recorded); a no-op without OpenTelemetry."""
    try:
        from opentelemetry import trace
    except ImportError:
        yield _Span()
        return
    with trace.get_tracer("jitbroker").start_as_current_span(name) as current:
        handle = _Span(current)
        handle.set(**attributes)
        yield handle


# ---------------------------------------------------------------------------------------------- metrics


class _Instruments:
    def __init__(self) -> None:
        from opentelemetry import metrics

        meter = metrics.get_meter("jitbroker")
        self.grants = {
            kind: meter.create_counter(
                f"jit.grants.{kind}", unit="{grant}", description=f"grants {kind} (one per audit event)"
            )
            for kind in GRANT_EVENTS
        }
        self.sweep_duration = meter.create_histogram(
            "jit.sweep.duration", unit="s", description="how long one sweep took"
        )
        self.sweep_lag = meter.create_histogram(
            "jit.sweep.lag", unit="s", description="now minus the oldest due grant still open at sweep start"
        )
        self.arm_retries = meter.create_counter(
            "jit.arm.retries", unit="{retry}", description="ARM calls retried, by error code"
        )
        self.arm_throttles = meter.create_counter(
            "jit.arm.throttles", unit="{response}", description="ARM answers that were throttling, by code"
        )
        self.nsg_writes = meter.create_counter("jit.nsg.writes", unit="{write}", description="NSG PUTs")
        self.writes_per_grant = meter.create_histogram(
            "jit.nsg.writes_per_grant",
            unit="{write}",
            description="NSG PUTs of one reconciler pass divided by the callers (grants) it served",
        )
        meter.create_observable_gauge(
            "jit.grants.open",
            callbacks=[_observe_open],
            unit="{grant}",
            description="open grants seen by this process's last complete orphan pass",
        )


_instruments_lock = threading.Lock()
_instruments: _Instruments | None = None
_no_metrics = False


def _meters() -> _Instruments | None:
    global _instruments, _no_metrics  # noqa: PLW0603 - made once per process, on first use
    if _instruments is not None or _no_metrics:
        return _instruments
    with _instruments_lock:
        if _instruments is None and not _no_metrics:
            try:
                _instruments = _Instruments()
            except ImportError:
                _no_metrics = True
    return _instruments


def _safely(fn: Callable[[_Instruments], None]) -> None:
    instruments = _meters()
    if instruments is None:
        return
    try:
        fn(instruments)
    except Exception:  # a metric must never break the broker
        log.debug("could not record a metric", exc_info=True)


def grant_event(kind: str) -> None:
    """Count one audit event of `kind` (kinds other than `GRANT_EVENTS` are not counted)."""
    if kind in GRANT_EVENTS:
        _safely(lambda m: m.grants[kind].add(1))


def sweep_measured(duration_s: float, lag_s: float) -> None:
    """One sweep's duration and lag."""

    def record(m: _Instruments) -> None:
        m.sweep_duration.record(max(0.0, duration_s))
        m.sweep_lag.record(max(0.0, lag_s))

    _safely(record)


def arm_retry(code: str) -> None:
    """One ARM call retried after an answer with this code."""
    _safely(lambda m: m.arm_retries.add(1, {"code": code}))


def arm_throttle(code: str) -> None:
    """One throttling answer from ARM."""
    _safely(lambda m: m.arm_throttles.add(1, {"code": code}))


_writes = threading.local()


def nsg_write() -> None:
    """One NSG PUT (also tallied for the thread, so a pass can count its own writes)."""
    _writes.count = getattr(_writes, "count", 0) + 1
    _safely(lambda m: m.nsg_writes.add(1))


def nsg_writes_in_thread() -> int:
    """NSG PUTs this thread made so far (a pass reads it before and after)."""
    count: int = getattr(_writes, "count", 0)
    return count


def nsg_pass(writes: int, callers: int) -> None:
    """One reconciler pass: the PUTs it made for the callers it served."""
    _safely(lambda m: m.writes_per_grant.record(writes / max(1, callers)))


@dataclass
class _OpenSeen:
    count: int | None = None
    at: float = 0.0


_open_seen = _OpenSeen()


def open_grants_seen(count: int) -> None:
    """The number of open grants a complete orphan pass saw (read by the `jit.grants.open` gauge)."""
    _open_seen.count, _open_seen.at = count, time.monotonic()
    _meters()  # the gauge exists from the first sweep on


def _observe_open(_options: Any) -> list[Any]:
    from opentelemetry.metrics import Observation

    count, at = _open_seen.count, _open_seen.at
    if count is None or time.monotonic() - at > OPEN_GAUGE_TTL_S:
        return []
    return [Observation(count)]


# ---------------------------------------------------------------------------------------------- audit


_STATUS_AFTER = {
    "requested": "pending",
    "granted": "active",
    "revoked": "revoked",
    "expired": "expired",
    "failed": "failed",
    "denied": "denied",
}


def audit_record(event: AuditEvent, *, status: str | None = None, vm_name: str | None = None) -> None:
    """The audit event as a structured log record (`customDimensions`), and its counter."""
    fields: dict[str, str | int] = {"kind": event.kind}
    values: Mapping[str, str | int | None] = {
        "grant_id": event.grant_id,
        "principal_oid": event.principal,
        "actor_oid": event.actor,
        "vm": event.vm_id,
        "vm_name": vm_name,
        "port": event.port,
        "source": event.source,
        "status": _STATUS_AFTER.get(event.kind, status),
        "reason": event.reason,
    }
    fields.update({k: v for k, v in values.items() if v is not None})  # OpenTelemetry drops None, noisily
    try:
        audit_log.info("audit %s", event.kind, extra=fields, stacklevel=2)  # where the event was made
    except Exception:  # the audit trail is the table; this copy must never break it
        log.debug("could not log audit event %s", event.kind, exc_info=True)
    grant_event(event.kind)


# ---------------------------------------------------------------------------------------------- Azure Monitor


_monitor_lock = threading.Lock()
_monitor_started = False


def start_azure_monitor(asgi_app: Any | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """Start the Azure Monitor OpenTelemetry distro once, if `APPLICATIONINSIGHTS_CONNECTION_STRING` is set
    (ingestion authenticates as `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` says); then instrument
    `asgi_app` (a FastAPI app) for one span per request. When the Functions worker already configured
    OpenTelemetry (`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`), only the app is instrumented.
    True when telemetry runs."""
    global _monitor_started  # noqa: PLW0603 - once per process
    env = os.environ if environ is None else environ
    with _monitor_lock:
        if _monitor_started:
            return True
        if not env.get(CONNECTION_STRING_SETTING):
            return False
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor
            from opentelemetry import trace
        except ImportError:
            log.warning(
                "%s is set but azure-monitor-opentelemetry is not installed", CONNECTION_STRING_SETTING
            )
            return False
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # nobody configured it yet
            configure_azure_monitor(
                connection_string=env[CONNECTION_STRING_SETTING],
                logger_name="jitbroker",
                instrumentation_options={name: {"enabled": False} for name in _DISTRO_OFF},
            )
        else:
            _enable_azure_sdk_tracing()
        _log_info_and_up()
        if asgi_app is not None:
            instrument_fastapi(asgi_app)
        _monitor_started = True
        return True


def instrument_fastapi(app: Any) -> None:
    """One server span per request on this FastAPI app (route templates as span names)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        return
    FastAPIInstrumentor.instrument_app(app, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"])
    app.middleware_stack = None  # built again, instrumented, on the next call


def _enable_azure_sdk_tracing() -> None:
    """ARM and Table calls as child spans (azure-core-tracing-opentelemetry), as the distro's option does."""
    from azure.core.settings import settings
    from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan

    settings.tracing_implementation = OpenTelemetrySpan


def _log_info_and_up() -> None:
    broker = logging.getLogger("jitbroker")
    if broker.level == logging.NOTSET or broker.level > logging.INFO:
        broker.setLevel(logging.INFO)  # audit records and "sweep done" are INFO


# ---------------------------------------------------------------------------------------------- tests


@dataclass
class MemoryTelemetry:
    """In-memory OpenTelemetry pipelines for tests (`setup_for_tests`); nothing leaves the process."""

    spans: Any
    logs: Any
    metrics: Any
    handler: logging.Handler
    _closed: bool = field(default=False, repr=False)

    def clear(self) -> None:
        """Forget what was exported so far (metrics are cumulative: compare before and after instead)."""
        self.spans.clear()
        self.logs.clear()

    def close(self) -> None:
        """Stop exporting the broker's logs and Azure SDK spans (the global providers stay: they cannot be
        replaced within a process)."""
        if self._closed:
            return
        logging.getLogger("jitbroker").removeHandler(self.handler)
        from azure.core.settings import settings

        settings.tracing_implementation.unset_value()
        self._closed = True


_memory: MemoryTelemetry | None = None


def setup_for_tests() -> MemoryTelemetry:
    """Global tracer, logger and meter providers exporting to memory, the broker's logger attached, Azure SDK
    tracing on and the log-record factory installed — what `start_azure_monitor` does, without Azure.
    Once per process; later calls return the same pipelines (reattached if closed)."""
    global _memory  # noqa: PLW0603 - the global providers can be set once per process
    from opentelemetry import metrics, trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    handler_type: type[logging.Handler]
    try:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler

        handler_type = LoggingHandler
    except ImportError:  # only the SDK installed
        from opentelemetry.sdk._logs import LoggingHandler as SdkLoggingHandler

        handler_type = SdkLoggingHandler

    if _memory is None:
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            raise RuntimeError("OpenTelemetry is already configured in this process")
        spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(tracer_provider)
        logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
        set_logger_provider(logger_provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        handler = handler_type(logger_provider=logger_provider)
        _memory = MemoryTelemetry(spans=spans, logs=logs, metrics=reader, handler=handler)
    broker = logging.getLogger("jitbroker")
    if _memory.handler not in broker.handlers:
        broker.addHandler(_memory.handler)
    _memory._closed = False
    _enable_azure_sdk_tracing()
    install_log_context()
    return _memory
