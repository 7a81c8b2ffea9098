"""Limits per person: at most JIT_MAX_OPEN_GRANTS_PER_PRINCIPAL open grants (10) and
JIT_MAX_SOURCES_PER_PRINCIPAL distinct sources among them (3); beyond, 429 with `Retry-After` until the
soonest of the caller's grants ends. Asking again for an open grant extends it and is never refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.broker.conftest import broker_rules

pytestmark = pytest.mark.usefixtures("clean_lab")

OVERRIDE_ROLES = ["JIT.Requester", "JIT.SourceOverride"]
# Every (VM, port) alice may open in the demo scenario.
TARGETS = [("web-01", 22), ("win-01", 3389), ("db-01", 22), ("db-01", 5432), ("open-01", 22), ("v6-01", 22)]
OTHER = "198.51.100.7"  # a second source alice names (the lab lets documentation ranges in)


def ask(client: Any, vm: str, port: int, source: str | None = None, duration: str = "1h") -> Any:
    body: dict[str, Any] = {"vm": vm, "port": port, "duration": duration}
    if source is not None:
        body["source"] = source
    return client.post("/api/v1/grants", json=body)


def retry_after(response: Any) -> int:
    return int(response.headers["Retry-After"])


def seconds_left(grant: dict[str, Any]) -> float:
    expires = datetime.fromisoformat(grant["expires_at"].replace("Z", "+00:00"))
    return (expires - datetime.now(UTC)).total_seconds()


def test_the_eleventh_open_grant_is_refused_until_one_ends(as_user, token_for, arm_admin) -> None:
    alice = as_user("alice", token=token_for("alice", roles=OVERRIDE_ROLES))
    made = []
    for n, (vm, port) in enumerate(TARGETS):
        response = ask(alice, vm, port, duration="10m" if n == 0 else "25m")
        assert response.status_code == 201, response.text
        made.append(response.json())
    for vm, port in TARGETS[:4]:
        response = ask(alice, vm, port, OTHER, duration="25m")
        assert response.status_code == 201, response.text
        made.append(response.json())
    rules_before = {r["name"] for r in broker_rules(arm_admin.nsg("open-01-nsg"))}

    eleventh = ask(alice, "open-01", 22, OTHER)

    assert eleventh.status_code == 429, eleventh.text
    error = eleventh.json()["error"]
    assert error["code"] == "too_many_grants"
    assert "10 open grants" in error["message"]
    assert seconds_left(made[0]) - 5 <= retry_after(eleventh) <= seconds_left(made[0]) + 5  # the 10m one
    assert {r["name"] for r in broker_rules(arm_admin.nsg("open-01-nsg"))} == rules_before

    again = ask(alice, "web-01", 22, duration="20m")  # an open grant asked for again: extended, not new
    assert again.status_code == 200, again.text
    assert again.json()["id"] == made[0]["id"]

    assert alice.delete(f"/api/v1/grants/{made[1]['id']}").json()["status"] == "revoked"
    assert ask(alice, "open-01", 22, OTHER).status_code == 201  # room again
    assert as_user("bob").post("/api/v1/grants", json={"vm": "web-01"}).status_code == 201  # per person


def test_a_fourth_distinct_source_is_refused_until_a_source_is_released(as_user, token_for) -> None:
    alice = as_user("alice", token=token_for("alice", roles=OVERRIDE_ROLES))
    own = ask(alice, "web-01", 22, duration="25m")
    assert own.status_code == 201, own.text
    assert ask(alice, "web-01", 22, "198.51.100.7", duration="10m").status_code == 201
    assert ask(alice, "db-01", 22, "198.51.100.7", duration="20m").status_code == 201  # still two sources
    third = ask(alice, "web-01", 22, "198.51.100.8", duration="25m")
    assert third.status_code == 201, third.text

    fourth = ask(alice, "web-01", 22, "198.51.100.9")

    assert fourth.status_code == 429, fourth.text
    assert fourth.json()["error"]["code"] == "too_many_sources"
    assert "3 different sources" in fourth.json()["error"]["message"]
    # 198.51.100.7 is let in until its later grant ends (20m): the soonest a source is released.
    assert 19 * 60 <= retry_after(fourth) <= 20 * 60
    assert ask(alice, "db-01", 5432, "198.51.100.8", duration="10m").status_code == 201  # a source it has

    assert alice.delete(f"/api/v1/grants/{third.json()['id']}").status_code == 200
    assert ask(alice, "db-01", 5432, "198.51.100.8", duration="10m").status_code == 200  # asked again
    assert ask(alice, "win-01", 3389, "198.51.100.9").status_code == 429  # .8 is still held by db-01:5432


def test_refusals_for_limits_are_audited(as_user, token_for, api_store) -> None:
    alice = as_user("alice", token=token_for("alice", roles=OVERRIDE_ROLES))
    for source in ("198.51.100.7", "198.51.100.8", "198.51.100.9"):
        assert ask(alice, "web-01", 22, source).status_code == 201
    assert ask(alice, "web-01", 22, "198.51.100.10").status_code == 429
    (denied,) = [
        e for e in api_store.audit_events(limit=100_000) if e.kind == "denied" and e.source == "198.51.100.10"
    ]
    assert denied.reason.startswith("too_many_sources: ")
