"""Records from the threads the broker starts reach the worker tied to their invocation, and their spans and
logs share the request's (or the sweep's) trace, with the grant's id on the audit records."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from azure.functions.timer import TimerRequest
from opentelemetry.trace import SpanKind

from jitbroker.telemetry import MemoryTelemetry
from tests.telemetry.conftest import HOST_SPAN_ID, HOST_TRACE_ID, Api, Worker

pytestmark = pytest.mark.usefixtures("clean_lab")


def trace_id(value: int) -> str:
    return f"{value:032x}"


def span_id(value: int) -> str:
    return f"{value:016x}"


def exported_logs(otel: MemoryTelemetry, body: str) -> list[Any]:
    return [entry.log_record for entry in otel.logs.get_finished_logs() if entry.log_record.body == body]


def test_handler_thread_records_carry_the_request_trace_the_grant_and_the_invocation(
    api: Api, worker: Worker, otel: MemoryTelemetry
) -> None:
    answer = api(
        "POST", "/api/v1/grants", json_body={"vm": "web-01", "duration": "PT10M"}, invocation_id="inv-1"
    )
    assert answer.status == 201, answer.body
    grant_id = answer.body["id"]

    # The worker ties the handler thread's records to the invocation (issue 1358 is what this prevents).
    for message in ("audit requested", "audit granted"):
        (seen,) = worker.records(message)
        assert seen.thread != threading.main_thread().name  # FastAPI ran the sync handler in a worker thread
        assert seen.invocation_id == "inv-1", seen
        assert seen.extra("InvocationId") == "inv-1"
        assert seen.extra("grant_id") == grant_id

    # One server span for the request, a child of the host's invocation span.
    (server,) = [s for s in otel.spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.name == "POST /api/v1/grants"
    assert trace_id(server.context.trace_id) == HOST_TRACE_ID
    assert server.parent is not None and span_id(server.parent.span_id) == HOST_SPAN_ID

    # The audit records, exported, carry the request's trace and the grant's id in their attributes.
    for body in ("audit requested", "audit granted"):
        (record,) = exported_logs(otel, body)
        assert trace_id(record.trace_id) == HOST_TRACE_ID
        assert record.attributes["grant_id"] == grant_id
        assert record.attributes["InvocationId"] == "inv-1"
    granted = exported_logs(otel, "audit granted")[0].attributes
    assert granted["vm_name"] == "web-01"
    assert granted["port"] == 22
    assert granted["source"] == "203.0.113.10/32"
    assert granted["status"] == "active"
    assert granted["principal_oid"] == "a11ce000-0000-4000-8000-000000000001"

    # ARM and Table calls are child spans in the same trace — including the NSG write, which the
    # reconciler makes from its own flight thread.
    clients = [s for s in otel.spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert clients, "no Azure SDK spans"
    assert {trace_id(s.context.trace_id) for s in clients} == {HOST_TRACE_ID}
    names = " ".join(s.name for s in otel.spans.get_finished_spans())
    assert "NetworkSecurityGroups" in names or "networkSecurityGroups" in names, names
    methods = {s.attributes.get("http.request.method") or s.attributes.get("http.method") for s in clients}
    assert "PUT" in methods, methods


def test_sweep_threads_carry_the_sweep_trace_the_grant_and_the_invocation(
    *,
    api: Api,
    worker: Worker,
    otel: MemoryTelemetry,
    in_process_broker: Any,
    api_store: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace

    import function_app
    from jitbroker.model import GrantStatus

    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    due = api("POST", "/api/v1/grants", json_body={"vm": "web-01", "duration": "PT10M"}).body
    lost = api("POST", "/api/v1/grants", json_body={"vm": "db-01", "port": 22, "duration": "PT10M"}).body
    # The store loses track of one grant: its rule stays in the NSG until the orphan pass finds it expired.
    api_store.replace(replace(api_store.get(lost["id"]), status=GrantStatus.REVOKED, reason="test: lost"))
    moment = datetime.fromisoformat(due["expires_at"].replace("Z", "+00:00")) + timedelta(minutes=3)
    sweeper = in_process_broker(lambda: moment).sweeper
    monkeypatch.setattr(function_app, "run_sweep", sweeper.run)
    otel.clear()
    worker.handler.seen.clear()

    function_app.sweep(TimerRequest(past_due=False), worker.context("inv-sweep"))

    # The expiry is recorded from the close pool's threads, the orphan from the orphan pool's.
    (expired,) = worker.records("audit expired")
    assert expired.thread.startswith("close"), expired.thread
    assert expired.invocation_id == "inv-sweep"
    assert expired.extra("grant_id") == due["id"]
    outlived = worker.records("orphan rule outlived its grant")  # db-01's NIC and subnet NSGs
    assert outlived
    for orphan in outlived:
        assert orphan.thread.startswith("orphans"), orphan.thread
        assert orphan.invocation_id == "inv-sweep"
        assert orphan.extra("overdue_s") > 60
        assert "/networkSecurityGroups/" in orphan.extra("nsg")
        assert orphan.extra("rule").startswith("jit-")

    (sweep,) = [s for s in otel.spans.get_finished_spans() if s.name == "jit.sweep"]
    assert trace_id(sweep.context.trace_id) == HOST_TRACE_ID
    assert sweep.parent is not None and span_id(sweep.parent.span_id) == HOST_SPAN_ID
    assert sweep.attributes["jit.sweep.expired"] == 1

    (record,) = exported_logs(otel, "audit expired")
    assert trace_id(record.trace_id) == HOST_TRACE_ID
    assert record.span_id == sweep.context.span_id
    assert record.attributes["grant_id"] == due["id"]
    assert record.attributes["InvocationId"] == "inv-sweep"
    warnings = exported_logs(otel, "orphan rule outlived its grant")
    assert len(warnings) == len(outlived)
    assert {trace_id(w.trace_id) for w in warnings} == {HOST_TRACE_ID}
    assert {w.attributes["rule"] for w in warnings} == {o.extra("rule") for o in outlived}
    (done,) = exported_logs(otel, "sweep done")
    assert done.attributes["expired"] == 1
    assert done.attributes["orphans_removed"] == len(outlived)
    assert done.attributes["errors"] == 0
    assert done.attributes["lag_s"] >= 180
    assert done.attributes["duration_ms"] >= 0

    # The NSG writes of the expiry (the close pool, then the reconciler's flight thread) are in the trace.
    puts = [
        s
        for s in otel.spans.get_finished_spans()
        if (s.attributes.get("http.request.method") or s.attributes.get("http.method")) == "PUT"
    ]
    assert len(puts) >= 2
    assert {trace_id(s.context.trace_id) for s in puts} == {HOST_TRACE_ID}
