"""The broker's metrics (meter `jitbroker`) move with what it does: grants, revokes, sweeps, NSG writes and
ARM's throttling — read through an in-memory metric reader, compared before and after."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest

from jitbroker.telemetry import MemoryTelemetry
from tests.telemetry.conftest import Api, Worker

pytestmark = pytest.mark.usefixtures("clean_lab")

Key = tuple[str, frozenset[tuple[str, Any]]]


def snapshot(otel: MemoryTelemetry) -> dict[Key, float]:
    """Every data point of the broker's meter: a counter's or gauge's value, a histogram's count."""
    points: dict[Key, float] = {}
    data = otel.metrics.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != "jitbroker":
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, frozenset((point.attributes or {}).items()))
                    points[key] = float(getattr(point, "value", getattr(point, "count", 0)))
    return points


def moved(before: dict[Key, float], after: dict[Key, float]) -> Counter[str]:
    """How much each metric moved (summed over its attributes); a gauge's value as it is now."""
    delta: Counter[str] = Counter()
    for key, value in after.items():
        delta[key[0]] += int(value - before.get(key, 0.0)) if key[0] != "jit.grants.open" else int(value)
    return delta


def test_counters_move_for_a_grant_and_a_revoke(api: Api, worker: Worker, otel: MemoryTelemetry) -> None:
    start = snapshot(otel)
    grant = api("POST", "/api/v1/grants", json_body={"vm": "web-01", "duration": "PT10M"}).body
    granted = snapshot(otel)
    step = moved(start, granted)
    assert step["jit.grants.requested"] == 1
    assert step["jit.grants.granted"] == 1
    assert step["jit.grants.revoked"] == 0
    assert step["jit.nsg.writes"] >= 1
    assert step["jit.nsg.writes_per_grant"] >= 1  # one histogram value per reconciler pass

    assert api("DELETE", f"/api/v1/grants/{grant['id']}").status == 200
    step = moved(granted, snapshot(otel))
    assert step["jit.grants.revoked"] == 1
    assert step["jit.grants.requested"] == 0
    assert step["jit.nsg.writes"] >= 1

    assert api("POST", "/api/v1/grants", json_body={"vm": "stopped-01"}).status == 409
    assert moved(granted, snapshot(otel))["jit.grants.denied"] == 1


def test_a_sweep_records_its_duration_lag_expiries_and_the_open_grants(
    api: Api, worker: Worker, otel: MemoryTelemetry, in_process_broker: Any
) -> None:
    short = api("POST", "/api/v1/grants", json_body={"vm": "web-01", "duration": "PT10M"}).body
    api("POST", "/api/v1/grants", user="bob", json_body={"vm": "web-01", "duration": "PT1H"})
    moment = datetime.fromisoformat(short["expires_at"].replace("Z", "+00:00")) + timedelta(seconds=30)
    before = snapshot(otel)
    report = in_process_broker(lambda: moment).sweeper.run()
    assert report.expired == 1 and report.errors == []
    step = moved(before, snapshot(otel))
    assert step["jit.grants.expired"] == 1
    assert step["jit.sweep.duration"] == 1
    assert step["jit.sweep.lag"] == 1
    assert step["jit.grants.open"] == 1  # bob's, as the orphan pass saw it
    (done,) = worker.records("sweep done")
    assert 30 <= done.extra("lag_s") < 60
    assert done.extra("expired") == 1


def test_arm_throttling_is_counted_and_logged_by_code(
    api: Api, worker: Worker, otel: MemoryTelemetry, clean_lab: Any
) -> None:
    clean_lab.add_fault(
        method="PUT",
        match="networkSecurityGroups/",
        count=1,
        status=429,
        code="TooManyRequests",
        retry_after=0,
    )
    before = snapshot(otel)
    assert api("POST", "/api/v1/grants", json_body={"vm": "web-01", "duration": "PT10M"}).status == 201
    after = snapshot(otel)
    assert (
        after.get(("jit.arm.throttles", frozenset({("code", "TooManyRequests")})), 0)
        - before.get(("jit.arm.throttles", frozenset({("code", "TooManyRequests")})), 0)
        == 1
    )
    assert (
        after.get(("jit.arm.retries", frozenset({("code", "TooManyRequests")})), 0)
        - before.get(("jit.arm.retries", frozenset({("code", "TooManyRequests")})), 0)
        == 1
    )
    (throttled,) = worker.records("arm throttled")
    assert throttled.record.levelname == "WARNING"
    assert throttled.extra("code") == "TooManyRequests"
    assert throttled.invocation_id == "inv-http"  # logged from the reconciler's flight thread
    assert throttled.thread.startswith("nsg-"), throttled.thread
