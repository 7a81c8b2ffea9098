"""Approvals: prod-01 (tag `jit-approval: required`) opens only when a second person says yes, and the door's
clock starts at that yes. Driven over HTTP against the lab broker, with the rule checked in the emulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.broker.conftest import broker_rules

pytestmark = pytest.mark.usefixtures("clean_lab")

PROD = "prod-01-nsg"


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def ask(client: httpx.Client, **extra: str) -> httpx.Response:
    return client.post("/api/v1/grants", json={"vm": "prod-01", "duration": "PT30M", **extra})


def test_a_request_on_an_approval_vm_waits_with_no_rule_and_asking_again_returns_the_same_request(
    as_user, arm_admin
) -> None:
    bob = as_user("bob")
    first = ask(bob, justification="deploy hotfix")
    assert first.status_code == 202, first.text
    grant = first.json()
    assert grant["status"] == "awaiting_approval"
    assert first.headers["Location"] == f"/api/v1/grants/{grant['id']}" and first.headers["Retry-After"]
    approval = grant["approval"]
    assert approval["approver_role"] == "JIT.Approver" and approval["decided_by"] is None
    assert approval["requested_duration"] == "PT30M" and approval["wait_until"]
    assert broker_rules(arm_admin.nsg(PROD)) == []

    again = ask(bob)  # still waiting: the same request, still 202
    assert again.status_code == 202 and again.json()["id"] == grant["id"]
    assert bob.get(f"/api/v1/grants/{grant['id']}").json()["status"] == "awaiting_approval"


def test_an_approver_sees_what_waits_for_them_and_nobody_approves_their_own(as_user, token_for) -> None:
    bob, carol, alice = as_user("bob"), as_user("carol"), as_user("alice")
    bobs = ask(bob).json()
    carols = ask(carol).json()

    waiting_for_carol = [
        g["id"] for g in carol.get("/api/v1/grants", params={"awaiting": "me"}).json()["grants"]
    ]
    assert bobs["id"] in waiting_for_carol and carols["id"] not in waiting_for_carol
    assert alice.get("/api/v1/grants", params={"awaiting": "me"}).json()["grants"] == []

    own = carol.post(f"/api/v1/grants/{carols['id']}/approve", json={})
    assert own.status_code == 403 and "own request" in own.json()["error"]["message"]
    no_role = alice.post(f"/api/v1/grants/{bobs['id']}/approve", json={})
    assert no_role.status_code == 403 and "JIT.Approver" in no_role.json()["error"]["message"]
    admin_only = as_user("dave", token=token_for("dave", roles=["JIT.Admin"]))
    assert admin_only.post(f"/api/v1/grants/{bobs['id']}/approve", json={}).status_code == 403


def test_approval_opens_the_door_for_the_requested_duration_counted_from_the_approval(
    as_user, arm_admin
) -> None:
    bob, carol = as_user("bob"), as_user("carol")
    grant = ask(bob).json()

    answer = carol.post(f"/api/v1/grants/{grant['id']}/approve", json={"reason": "change CHG-42"})
    assert answer.status_code in (200, 202), answer.text
    approved = bob.get(f"/api/v1/grants/{grant['id']}").json()
    assert approved["status"] == "active"
    decided = parse(approved["approval"]["decided_at"])
    assert approved["approval"]["decided_by_name"] and approved["approval"]["reason"] == "change CHG-42"
    assert parse(approved["expires_at"]) - decided == timedelta(minutes=30)
    assert decided >= parse(grant["created_at"])
    (rule,) = broker_rules(arm_admin.nsg(PROD))
    assert rule["properties"]["sourceAddressPrefixes"] == [approved["source"]]
    assert rule["name"].endswith(parse(approved["expires_at"]).strftime("x%Y%m%dT%H%M%SZ"))

    twice = carol.post(f"/api/v1/grants/{grant['id']}/approve", json={})
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "not_awaiting_approval"


def test_a_revoked_approved_grant_is_not_reopened_without_a_new_approval(as_user, arm_admin) -> None:
    bob, carol = as_user("bob"), as_user("carol")
    grant = ask(bob).json()
    carol.post(f"/api/v1/grants/{grant['id']}/approve", json={})
    assert bob.delete(f"/api/v1/grants/{grant['id']}").json()["status"] == "revoked"
    assert broker_rules(arm_admin.nsg(PROD)) == []

    again = ask(bob)
    assert again.status_code == 202 and again.json()["id"] != grant["id"]
    assert again.json()["status"] == "awaiting_approval"
    assert broker_rules(arm_admin.nsg(PROD)) == []


def test_a_denied_request_ends_denied_with_the_approvers_reason_and_no_rule(as_user, arm_admin) -> None:
    bob, carol = as_user("bob"), as_user("carol")
    grant = ask(bob).json()
    assert (
        carol.post(f"/api/v1/grants/{grant['id']}/deny", json={}).status_code == 422
    )  # a reason is required
    denied = carol.post(f"/api/v1/grants/{grant['id']}/deny", json={"reason": "not during the freeze"})
    assert denied.status_code == 200, denied.text
    body = denied.json()
    assert body["status"] == "denied" and body["approval"]["reason"] == "not during the freeze"
    assert body["approval"]["decided_by"] == carol.get("/api/v1/whoami").json()["principal"]
    assert broker_rules(arm_admin.nsg(PROD)) == []
    assert carol.post(f"/api/v1/grants/{grant['id']}/approve", json={}).status_code == 409


def test_the_requester_withdraws_a_waiting_request_and_nobody_can_approve_it_after(as_user) -> None:
    bob, carol, alice = as_user("bob"), as_user("carol"), as_user("alice")
    grant = ask(bob).json()
    assert alice.post(f"/api/v1/grants/{grant['id']}/withdraw").status_code == 403  # not alice's request
    withdrawn = bob.post(f"/api/v1/grants/{grant['id']}/withdraw")
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
    assert bob.post(f"/api/v1/grants/{grant['id']}/withdraw").json()["status"] == "withdrawn"  # idempotent
    assert carol.post(f"/api/v1/grants/{grant['id']}/approve", json={}).status_code == 409
    other = ask(bob).json()
    assert bob.delete(f"/api/v1/grants/{other['id']}").json()["status"] == "withdrawn"  # DELETE withdraws too


def test_a_waiting_request_cannot_be_extended_its_clock_has_not_started(as_user) -> None:
    bob = as_user("bob")
    grant = ask(bob).json()
    refused = bob.post(f"/api/v1/grants/{grant['id']}/extend", json={"duration": "1h"})
    assert refused.status_code == 409 and "approver" in refused.json()["error"]["message"]


def test_an_unanswered_request_expires_with_a_reason_and_every_step_is_audited(
    as_user, sweep_at, api_store
) -> None:
    bob = as_user("bob")
    grant = ask(bob).json()
    report = sweep_at(datetime.now(UTC) + timedelta(hours=2))
    assert report.errors == []
    ended = bob.get(f"/api/v1/grants/{grant['id']}").json()
    assert ended["status"] == "expired" and "nobody approved" in ended["reason"]
    kinds = [e.kind for e in api_store.audit_events(grant["id"])]
    assert kinds == ["requested", "expired"]


def test_the_audit_trail_tells_who_approved_and_why(as_user, api_store) -> None:
    bob, carol = as_user("bob"), as_user("carol")
    grant = ask(bob).json()
    carol.post(f"/api/v1/grants/{grant['id']}/approve", json={"reason": "on call"})
    events = api_store.audit_events(grant["id"])
    approved = next(e for e in events if e.kind == "approved")
    assert approved.reason == "on call"
    assert approved.actor == carol.get("/api/v1/whoami").json()["principal"]  # who said yes
    assert approved.principal == grant["principal"]  # whose door it is
    assert [e.kind for e in events][:3] == ["requested", "approved", "granted"]
