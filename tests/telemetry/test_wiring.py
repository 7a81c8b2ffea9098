"""How telemetry is wired: nothing of the Azure Monitor distro at import (cold start), the distro on the first
invocation when a connection string is set, and a broker that works without OpenTelemetry installed.

Each case runs in a fresh interpreter: global OpenTelemetry providers can be set once per process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from jitbroker import telemetry

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("azure.monitor", "opentelemetry.sdk", "opentelemetry.instrumentation")
# Nothing may leave the machine: ingestion, live metrics and statsbeat all point at a closed local port.
FAKE_CONNECTION_STRING = (
    "InstrumentationKey=00000000-0000-4000-8000-000000000000;"
    "IngestionEndpoint=http://127.0.0.1:9/;LiveEndpoint=http://127.0.0.1:9/"
)


def run_python(code: str, **env: str | None) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "APPLICATIONINSIGHTS_CONNECTION_STRING"}
    environ["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_importing_function_app_without_a_connection_string_imports_no_azure_monitor() -> None:
    out = run_python(
        f"""
        import sys
        import function_app
        print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))
        """
    )
    assert out.strip() == "[]"


def test_with_a_connection_string_the_distro_starts_on_the_first_invocation_not_at_import() -> None:
    out = run_python(
        f"""
        import asyncio, logging, os, sys, threading
        from types import SimpleNamespace
        import azure.functions as func
        import function_app
        print("at import:", sorted(m for m in sys.modules if m.startswith({HEAVY!r})))
        (api,) = [f for f in function_app.app.get_functions() if f.get_function_name() == "api"]
        handler = api.get_user_function()
        context = SimpleNamespace(invocation_id="inv-1", thread_local_storage=threading.local(),
                                  trace_context=None, function_name="api", function_directory=".",
                                  retry_context=None)
        request = func.HttpRequest("GET", "http://localhost/api/health", body=b"", headers={{}})
        response = asyncio.run(handler(request, context))
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from azure.core.settings import settings
        print("status:", response.status_code)
        print("distro:", "azure.monitor.opentelemetry" in sys.modules)
        print("sdk provider:", isinstance(trace.get_tracer_provider(), TracerProvider))
        print("app instrumented:", function_app.broker_api._is_instrumented_by_opentelemetry)
        print("azure sdk tracing:", settings.tracing_implementation() is not None)
        print("broker logs exported:", any(type(h).__name__ == "LoggingHandler"
                                           for h in logging.getLogger("jitbroker").handlers))
        sys.stdout.flush()
        os._exit(0)  # no exporter flush towards the closed port at exit
        """,
        APPLICATIONINSIGHTS_CONNECTION_STRING=FAKE_CONNECTION_STRING,
    )
    assert "at import: []" in out
    for line in (
        "status: 200",
        "distro: True",
        "sdk provider: True",
        "app instrumented: True",
        "azure sdk tracing: True",
        "broker logs exported: True",
    ):
        assert line in out, out


def test_without_opentelemetry_installed_the_broker_telemetry_is_a_no_op() -> None:
    out = run_python(
        """
        import importlib.abc, logging, sys, threading
        from datetime import UTC, datetime

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "opentelemetry" or name.startswith("azure.monitor"):
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, Missing())
        from jitbroker import arm, closing, reconciler, sweeper, telemetry
        from jitbroker.model import AuditEvent

        telemetry.install_log_context()
        local = threading.local()
        seen = []
        with telemetry.invocation("inv-1", local, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"):
            with telemetry.span("jit.sweep") as span:
                span.set(expired=1)
                telemetry.grant_event("granted")
                telemetry.sweep_measured(0.5, 1.0)
                telemetry.arm_retry("TooManyRequests")
                telemetry.arm_throttle("TooManyRequests")
                telemetry.nsg_write()
                telemetry.nsg_pass(1, 2)
                telemetry.open_grants_seen(3)
                event = AuditEvent("granted", datetime.now(UTC), "g-1", "oid", "203.0.113.10/32", "vm", 22)
                telemetry.audit_record(event)
                make = logging.getLogger("jitbroker.x").makeRecord
                record = lambda: seen.append(make("x", 20, "f", 1, "m", (), None).InvocationId)
                thread = threading.Thread(target=telemetry.carry(record))
                thread.start(); thread.join()
        print("seen:", seen, getattr(local, "invocation_id", None))
        environ = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "x"}
        print("monitor:", telemetry.start_azure_monitor(environ=environ))
        print("otel:", [m for m in sys.modules if m.startswith("opentelemetry")])
        """
    )
    assert "seen: ['inv-1'] inv-1" in out, out
    assert "monitor: False" in out
    assert "otel: []" in out


def test_a_telemetry_start_that_fails_never_stops_the_api() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])
        calls.append(getattr(telemetry.current_invocation(), "invocation_id", "none"))

    def broken() -> None:
        raise RuntimeError("no telemetry today")

    wrapped = telemetry.InvocationContext(app, on_first_call=broken)
    local = threading.local()
    scope = {
        "type": "http",
        "headers": [],
        telemetry.SCOPE_INVOCATION_ID: "inv-9",
        telemetry.SCOPE_THREAD_LOCAL: local,
    }
    asyncio.run(wrapped(scope, None, None))  # type: ignore[arg-type]
    asyncio.run(wrapped({"type": "http", "headers": []}, None, None))  # type: ignore[arg-type]
    assert calls == ["http", "inv-9", "http", "none"]
    assert local.invocation_id == "inv-9"
