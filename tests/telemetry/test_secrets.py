"""No token or key reaches an exported span, log or metric attribute, through a whole grant lifecycle, its
error paths and a sweep: every bearer token sent (whole, payload, signature), the broker's own ARM token, the
managed identity's `IDENTITY_HEADER` secret, and the storage account key of the lab's connection string."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

from jitbroker.telemetry import MemoryTelemetry
from lab.tokens import BAD_TOKENS
from tests.telemetry.conftest import Api, Worker

JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
SHARED_KEY = re.compile(r"SharedKey(Lite)?\s+\w+:[A-Za-z0-9+/=]{16,}")


class Secrets:
    def __init__(self, *, account_key: str, identity_header: str) -> None:
        self.fragments = {account_key, identity_header}

    def token(self, token: str) -> str:
        """Remember a token (whole, payload, signature) and hand it back."""
        self.fragments.update(p for p in (token, *token.split(".")[1:]) if len(p) >= 12)
        return token

    def found_in(self, text: str) -> list[str]:
        leaks = [f"secret fragment {f[:6]}…" for f in self.fragments if f in text]
        leaks += [f"JWT-shaped text {m.group()[:12]}…" for m in JWT_SHAPE.finditer(text)]
        leaks += [f"SharedKey signature {m.group()[:16]}…" for m in SHARED_KEY.finditer(text)]
        return leaks


def exported_text(otel: MemoryTelemetry) -> list[str]:
    """Every exported span, log record and metric point, as text: names, bodies and every attribute."""
    lines: list[str] = []
    for span in otel.spans.get_finished_spans():
        lines.append(f"span {span.name} {dict(span.attributes or {})!r} {span.status.description or ''}")
        lines.extend(f"event {e.name} {dict(e.attributes or {})!r}" for e in span.events)
        lines.extend(f"link {dict(link.attributes or {})!r}" for link in span.links)
        lines.append(f"resource {dict(span.resource.attributes)!r}")
    for entry in otel.logs.get_finished_logs():
        record = entry.log_record
        lines.append(f"log {record.body!r} {dict(record.attributes or {})!r}")
    data = otel.metrics.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                lines.extend(
                    f"metric {metric.name} {dict(p.attributes or {})!r}" for p in metric.data.data_points
                )
    return lines


def test_no_token_or_key_reaches_an_exported_attribute(
    *,
    api: Api,
    worker: Worker,
    otel: MemoryTelemetry,
    token_for: Any,
    issuer: Any,
    api_broker_env: dict[str, str],
    identity_env: dict[str, str],
    in_process_broker: Any,
    broker_now: Any,
    clean_lab: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import function_app
    from jitbroker.clients import PUBLIC_ARM_AUDIENCE

    key = next(
        p.removeprefix("AccountKey=")
        for p in api_broker_env["JIT_TABLE_CONNECTION_STRING"].split(";")
        if p.startswith("AccountKey=")
    )
    secrets = Secrets(account_key=key, identity_header=identity_env["IDENTITY_HEADER"])
    alice = secrets.token(token_for("alice"))
    carol = secrets.token(token_for("carol"))

    grant = api("POST", "/api/v1/grants", token=alice, json_body={"vm": "web-01", "duration": "PT10M"})
    assert grant.status == 201, grant.body
    gid = grant.body["id"]
    assert (
        api("POST", "/api/v1/grants", token=alice, json_body={"vm": "web-01", "duration": "PT20M"}).status
        == 200
    )
    assert (
        api("POST", f"/api/v1/grants/{gid}/extend", token=alice, json_body={"duration": "PT30M"}).status
        == 200
    )
    assert api("GET", "/api/v1/grants?status=active", token=alice).status == 200
    assert api("GET", "/api/v1/grants?all=true", user="carol", token=carol).status == 200
    assert api("GET", "/api/v1/vms", token=alice).status == 200
    assert api("DELETE", f"/api/v1/grants/{gid}", user="carol", token=carol).body["status"] == "revoked"
    for make in BAD_TOKENS.values():
        bad = secrets.token(make(issuer, "mallory"))
        assert (
            api("POST", "/api/v1/grants", user="mallory", token=bad, json_body={"vm": "web-01"}).status == 401
        )
    assert api("POST", "/api/v1/grants", token=alice, json_body={"vm": "web-01", "x": 1}).status == 422
    assert api("GET", "/api/v1/grants/g-00000000000000000000", token=alice).status == 404
    assert api("POST", "/api/v1/grants", token=alice, json_body={"vm": "stopped-01"}).status == 409
    clean_lab.add_fault(method="PUT", match="networkSecurityGroups/", count=50, status=500)
    try:
        failed = api("POST", "/api/v1/grants", token=alice, json_body={"vm": "win-01", "protocol": "rdp"})
        assert failed.status >= 500, failed.body
    finally:
        clean_lab.clear_faults()

    short = api(
        "POST", "/api/v1/grants", token=alice, json_body={"vm": "db-01", "port": 22, "duration": "PT5M"}
    )
    assert short.status == 201, short.body
    later = datetime.fromisoformat(short.body["expires_at"].replace("Z", "+00:00")) + timedelta(minutes=2)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    monkeypatch.setattr(function_app, "run_sweep", in_process_broker(lambda: later).sweeper.run)
    function_app.sweep(TimerRequest(past_due=True), worker.context("inv-sweep"))

    # The broker's own ARM token, as its credential cached it.
    secrets.token(broker_now.topology._clients.credential.get_token(PUBLIC_ARM_AUDIENCE).token)

    lines = exported_text(otel)
    assert sum(line.startswith("span ") for line in lines) > 50, "expected server, ARM and Table spans"
    assert any(line.startswith("log 'audit expired'") for line in lines)
    assert any("exception" in line for line in lines), "expected the ARM failure's exception to be exported"
    leaks = {line[:80]: found for line in lines if (found := secrets.found_in(line))}
    assert leaks == {}
