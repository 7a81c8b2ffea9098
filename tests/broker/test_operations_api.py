"""What the people who run jit-broker call: readiness, the audit trail, and lists that page instead of
stopping silently; every error also names its code in `x-ms-error-code`, as Azure services do."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from jitbroker.api import create_app
from jitbroker.readiness import Readiness, ReadinessReport

pytestmark = pytest.mark.usefixtures("clean_lab")


def test_ready_answers_200_with_every_dependency_checked_and_needs_no_token(api_broker) -> None:
    answer = httpx.get(f"{api_broker.url}/api/ready", timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "ready", "checks": {"table_storage": "ok", "arm": "ok"}}


def test_ready_answers_503_naming_the_dependency_that_failed_and_nothing_secret() -> None:
    def arm_down() -> None:
        raise ConnectionError("https://management.example.test/?sig=secret-looking-text")

    readiness = Readiness({"table_storage": lambda: None, "arm": arm_down})
    app = create_app(lambda: pytest.fail("readiness must not build the services"), readiness=readiness.report)
    answer = TestClient(app).get("/api/ready")
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "not_ready",
        "checks": {"table_storage": "ok", "arm": "failed: ConnectionError"},
    }
    assert "secret" not in answer.text


def test_readiness_is_cached_briefly_so_a_probe_does_not_hammer_azure() -> None:
    calls: list[int] = []
    now = [0.0]
    readiness = Readiness({"arm": lambda: calls.append(1)}, cache_seconds=10, monotonic=lambda: now[0])
    for _ in range(5):
        assert readiness.report().ready
    now[0] = 11.0
    readiness.report()
    assert len(calls) == 2
    assert ReadinessReport({"a": "ok", "b": "failed: X"}).ready is False


def hang(until: threading.Event) -> None:
    until.wait(30)


def test_a_hung_dependency_is_reported_when_the_timeout_passes_not_when_it_answers() -> None:
    release = threading.Event()
    readiness = Readiness({"table_storage": lambda: None, "arm": lambda: hang(release)}, timeout_seconds=0.5)
    started = time.monotonic()
    report = readiness.report()
    took = time.monotonic() - started
    release.set()
    assert report.checks == {"table_storage": "ok", "arm": "failed: no answer within 0.5s"}
    assert took < 5, took  # the probe's answer does not wait for the hung read


def test_the_audit_trail_is_for_admins_and_auditors_only(as_user, token_for) -> None:
    alice = as_user("alice")
    refused = alice.get("/api/v1/audit")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert refused.headers["x-ms-error-code"] == "forbidden"

    auditor = as_user("dave", token=token_for("dave", roles=["JIT.Auditor"]))
    assert auditor.get("/api/v1/audit").status_code == 200
    grant = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()
    assert auditor.delete(f"/api/v1/grants/{grant['id']}").status_code == 403  # reads, never revokes


@pytest.mark.parametrize("role", ["JIT.Auditor", "JIT.Approver"])
def test_an_auditor_or_approver_role_does_not_stand_in_for_the_scope(role: str, as_user, token_for) -> None:
    other_scope = as_user("dave", token=token_for("dave", scp="User.Read", roles=[role]))
    for path in ("/api/v1/audit", "/api/v1/whoami"):
        answer = other_scope.get(path)
        assert (answer.status_code, answer.json()["error"]["code"]) == (403, "insufficient_scope"), path
    delegated = as_user("dave", token=token_for("dave", roles=[role]))
    assert delegated.get("/api/v1/whoami").status_code == 200
    requester = as_user("dave", token=token_for("dave", scp="User.Read", roles=["JIT.Requester"]))
    assert requester.get("/api/v1/whoami").status_code == 200  # the requester role does stand in


def test_audit_events_come_newest_first_filtered_and_paged_with_next_links(as_user) -> None:
    alice, bob, carol = as_user("alice"), as_user("bob"), as_user("carol")
    started = datetime.now(UTC) - timedelta(seconds=5)
    mine = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()
    alice.delete(f"/api/v1/grants/{mine['id']}")
    bobs = bob.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()

    since = started.isoformat().replace("+00:00", "Z")
    everything = carol.get("/api/v1/audit", params={"since": since}).json()["events"]
    stamps = [e["at"] for e in everything]
    assert stamps == sorted(stamps, reverse=True)
    kinds = {e["kind"] for e in everything if e["grant_id"] == mine["id"]}
    assert {"requested", "granted", "revoked"} <= kinds

    only_bob = carol.get("/api/v1/audit", params={"since": since, "user": bobs["principal"]}).json()["events"]
    # (earlier tests' events may fall in the window too: the filter, not the window, is what is checked)
    assert bobs["id"] in {e["grant_id"] for e in only_bob}
    assert {e["principal"] for e in only_bob} == {bobs["principal"]}
    assert mine["id"] not in {e["grant_id"] for e in only_bob}
    revoked = carol.get("/api/v1/audit", params={"since": "1h", "kind": "revoked", "vm": "web-01"}).json()
    assert mine["id"] in {e["grant_id"] for e in revoked["events"]}

    seen: list[dict[str, object]] = []
    page = carol.get("/api/v1/audit", params={"since": since, "limit": 2}).json()
    while True:
        seen.extend(page["events"])
        assert len(page["events"]) <= 2
        if page["nextLink"] is None:
            break
        assert page["nextLink"].startswith("/api/v1/audit?")
        page = carol.get(page["nextLink"]).json()
    assert [e["at"] for e in seen] == stamps and len(seen) == len(everything)


def test_a_time_range_in_any_zone_reads_the_same_events(as_user) -> None:
    carol = as_user("carol")
    grant = as_user("alice").post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()
    now = datetime.now(UTC)
    ids = {}
    for zone in (UTC, timezone(timedelta(hours=-12)), timezone(timedelta(hours=14))):
        since = (now - timedelta(minutes=5)).astimezone(zone).isoformat()
        until = (now + timedelta(minutes=5)).astimezone(zone).isoformat()
        answer = carol.get("/api/v1/audit", params={"since": since, "until": until, "limit": 1000})
        assert answer.status_code == 200, answer.text
        ids[str(zone)] = {e["grant_id"] for e in answer.json()["events"]}
        assert grant["id"] in ids[str(zone)], zone
    assert len({frozenset(v) for v in ids.values()}) == 1


def test_an_admins_revoke_is_an_event_of_the_owners_grant_naming_the_admin(as_user) -> None:
    bob, carol = as_user("bob"), as_user("carol")
    grant = bob.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()
    carol.delete(f"/api/v1/grants/{grant['id']}")
    carol_oid = carol.get("/api/v1/whoami").json()["principal"]

    bobs = carol.get("/api/v1/audit", params={"since": "1h", "user": grant["principal"]}).json()["events"]
    (revoked,) = [e for e in bobs if e["grant_id"] == grant["id"] and e["kind"] == "revoked"]
    assert (revoked["principal"], revoked["actor"]) == (grant["principal"], carol_oid)
    carols = carol.get("/api/v1/audit", params={"since": "1h", "user": carol_oid}).json()["events"]
    assert grant["id"] in {e["grant_id"] for e in carols if e["kind"] == "revoked"}  # what she did, too
    (requested,) = [e for e in bobs if e["grant_id"] == grant["id"] and e["kind"] == "requested"]
    assert requested["actor"] is None  # the owner acted


def test_a_refused_request_is_found_by_the_vm_it_asked_for(as_user) -> None:
    refused = as_user("alice").post("/api/v1/grants", json={"vm": "stopped-01"})
    assert refused.status_code == 409
    found = (
        as_user("carol")
        .get("/api/v1/audit", params={"since": "1h", "kind": "denied", "vm": "stopped-01"})
        .json()["events"]
    )
    assert any(e["reason"].startswith("vm_not_running") and e["grant_id"] is None for e in found), found


def test_an_audit_next_link_reads_the_range_the_first_page_read(as_user) -> None:
    carol = as_user("carol")
    for _ in range(3):
        carol.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"})
    first = carol.get("/api/v1/audit", params={"since": "1h", "limit": 1}).json()
    link = first["nextLink"]
    query = parse_qs(urlsplit(link).query)
    since, until = (datetime.fromisoformat(query[k][0]) for k in ("since", "until"))
    assert until - since == timedelta(hours=1)  # absolute: the relative "1h" does not move as pages follow
    assert carol.get(link).status_code == 200
    kinds = set(
        as_user("alice").get("/api/openapi.json").json()["components"]["schemas"]["AuditEventOut"]["properties"]
        ["kind"]["enum"]
    )  # fmt: skip
    assert {"approved", "withdrawn", "orphan_removed"} <= kinds


@pytest.mark.parametrize("path", ["/api/v1/grants", "/api/v1/vms", "/api/v1/audit"])
def test_a_cursor_too_long_to_be_ours_is_a_clear_400(path: str, as_user) -> None:
    answer = as_user("carol").get(path, params={"cursor": "k" + "A" * 2000})
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_request")
    assert "cursor" in answer.json()["error"]["message"]


def test_following_next_links_neither_repeats_nor_skips_while_grants_come_and_go(as_user) -> None:
    alice = as_user("alice")
    for vm in ("web-01", "db-01", "win-01"):
        assert alice.post("/api/v1/grants", json={"vm": vm, "duration": "PT10M"}).status_code == 201
    first = alice.get("/api/v1/grants", params={"status": "active", "limit": 2}).json()
    shown = [g["id"] for g in first["grants"]]
    alice.delete(f"/api/v1/grants/{shown[0]}")  # one already shown goes away
    newer = alice.post("/api/v1/grants", json={"vm": "v6-01", "duration": "PT10M"}).json()  # one arrives
    rest = alice.get(first["nextLink"]).json()
    later = [g["id"] for g in rest["grants"]]
    assert not set(shown) & set(later)  # nothing twice (a newcomer may show or not: it was not there before)
    active = {g["id"] for g in alice.get("/api/v1/grants", params={"status": "active"}).json()["grants"]}
    assert (active - {newer["id"]}) <= set(shown) | set(later)  # nothing that was there all along skipped


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2030-01-01T00:00:00"}, "time zone"),
        ({"since": "200d"}, "at most"),
        ({"kind": "opened"}, "kind"),
        ({"cursor": "forged"}, "cursor"),
    ],
)
def test_a_bad_audit_query_is_a_clear_400(as_user, params, fragment) -> None:
    answer = as_user("carol").get("/api/v1/audit", params=params)
    assert answer.status_code == 400, answer.text
    assert fragment in answer.json()["error"]["message"]
    assert answer.headers["x-ms-error-code"] == "invalid_request"


def test_grant_and_vm_lists_page_with_next_links_instead_of_stopping(as_user) -> None:
    carol = as_user("carol")
    for vm in ("web-01", "db-01", "win-01"):
        assert carol.post("/api/v1/grants", json={"vm": vm, "duration": "PT10M"}).status_code in (200, 201)
    first = carol.get("/api/v1/grants", params={"status": "active", "limit": 2}).json()
    assert len(first["grants"]) == 2 and first["nextLink"]
    rest = carol.get(first["nextLink"]).json()
    assert rest["nextLink"] is None
    ids = [g["id"] for g in first["grants"] + rest["grants"]]
    assert len(ids) == len(set(ids)) == 3

    vms = carol.get("/api/v1/vms", params={"limit": 1}).json()
    names = [vm["name"] for vm in vms["vms"]]
    while vms["nextLink"]:
        vms = carol.get(vms["nextLink"]).json()
        names += [vm["name"] for vm in vms["vms"]]
    assert names == [vm["name"] for vm in carol.get("/api/v1/vms").json()["vms"]]
    assert carol.get("/api/v1/vms", params={"cursor": "x1"}).status_code == 400
