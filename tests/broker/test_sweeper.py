"""The sweeper closes the doors the lifecycle could not: at expiry, after a crash, when the store lost them.

Sweeps run in this process with a chosen clock, over the tables and ARM emulator of the broker under test.
"""

from __future__ import annotations

import ipaddress
import threading
from datetime import UTC, datetime, timedelta

import pytest

from jitbroker.closing import Closer
from jitbroker.grants import GrantRequest, GrantService
from jitbroker.identity import Principal
from jitbroker.model import GrantStatus
from tests.broker.conftest import broker_rules, others

pytestmark = pytest.mark.usefixtures("clean_lab")


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_an_expired_grant_is_closed_by_the_sweep_and_not_before(as_user, arm_admin, sweep_at) -> None:
    alice = as_user("alice")
    grant = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()
    expires = parse(grant["expires_at"])

    early = sweep_at(expires - timedelta(minutes=1))
    assert early.expired == 0
    assert len(broker_rules(arm_admin.nsg("web-01-nsg"))) == 1

    report = sweep_at(expires + timedelta(seconds=1))
    assert report.expired == 1
    assert report.errors == []
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []
    assert alice.get(f"/api/v1/grants/{grant['id']}").json()["status"] == "expired"


def test_expiry_keeps_the_door_open_for_the_grant_that_has_not_expired(as_user, arm_admin, sweep_at) -> None:
    short = as_user("alice").post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()
    as_user("bob").post("/api/v1/grants", json={"vm": "web-01", "duration": "PT1H"})
    sweep_at(parse(short["expires_at"]) + timedelta(seconds=1))
    (rule,) = broker_rules(arm_admin.nsg("web-01-nsg"))
    assert rule["properties"]["sourceAddressPrefixes"] == ["203.0.113.11/32"]


def test_two_overlapping_sweeps_expire_a_grant_once_without_errors(
    as_user, arm_admin, in_process_broker, api_store
):
    grant = as_user("alice").post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()
    moment = parse(grant["expires_at"]) + timedelta(seconds=1)
    sweepers = [in_process_broker(lambda: moment).sweeper for _ in range(2)]
    reports = []
    threads = [threading.Thread(target=lambda s=s: reports.append(s.run())) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.errors == [] for r in reports)
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []
    expired_events = [e for e in api_store.audit_events(grant["id"]) if e.kind == "expired"]
    assert len(expired_events) >= 1
    assert api_store.get(grant["id"]).status is GrantStatus.EXPIRED


def test_a_rule_whose_grant_the_store_lost_is_removed_as_an_orphan(as_user, arm_admin, api_store, sweep_at):
    from dataclasses import replace

    grant = as_user("alice").post("/api/v1/grants", json={"vm": "web-01"}).json()
    stored = api_store.get(grant["id"])
    api_store.replace(replace(stored, status=GrantStatus.REVOKED))  # the store says closed; the rule remains
    assert len(broker_rules(arm_admin.nsg("web-01-nsg"))) == 1
    before = others(arm_admin.nsg("web-01-nsg"))

    report = sweep_at(datetime.now(UTC))
    assert report.orphans_removed == 1
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []
    assert others(arm_admin.nsg("web-01-nsg")) == before
    assert any(e.kind == "orphan_removed" for e in api_store.audit_events(limit=50))


class ProcessDied(BaseException):
    """Stands in for the broker process dying: nothing in the broker catches it."""


class DieBeforeWrite:
    def reconcile_all(self, *args, **kwargs):
        raise ProcessDied


class DieAfterWrite:
    def __init__(self, reconciler) -> None:
        self._reconciler = reconciler

    def reconcile_all(self, *args, **kwargs):
        self._reconciler.reconcile_all(*args, **kwargs)
        raise ProcessDied


@pytest.mark.parametrize("crash", ["after recording", "after writing the rule"])
def test_a_crash_mid_grant_ends_with_no_rule_after_the_sweep(
    crash, in_process_broker, scenario, arm_admin, api_store
):
    now = datetime.now(UTC)
    parts = in_process_broker(lambda: now)
    reconciler = DieBeforeWrite() if crash == "after recording" else DieAfterWrite(parts.reconciler)
    closer = Closer(store=parts.store, reconciler=parts.reconciler, clock=lambda: now)
    dying = GrantService(
        settings=parts.services.settings,
        store=parts.store,
        topology=parts.topology,
        reconciler=reconciler,
        closer=closer,
        clock=lambda: now,
    )
    alice = scenario.user("alice")
    principal = Principal(
        oid=alice.oid, name=alice.display_name, upn=alice.upn, tenant_id="t", roles=frozenset(alice.roles)
    )
    with pytest.raises(ProcessDied):
        dying.request(principal, ipaddress.ip_address("203.0.113.10"), GrantRequest(vm="web-01"))
    (pending,) = api_store.list_all(status=GrantStatus.PENDING)
    rules_now = broker_rules(arm_admin.nsg("web-01-nsg"))
    assert len(rules_now) == (0 if crash == "after recording" else 1)

    within_grace = in_process_broker(lambda: now + timedelta(seconds=30)).sweeper.run()
    assert within_grace.undone == 0  # a grant still being written is left alone

    report = in_process_broker(lambda: now + timedelta(minutes=3)).sweeper.run()
    assert report.undone == 1
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []
    ended = api_store.get(pending.id)
    assert ended.status is GrantStatus.FAILED
    assert "stopped before the grant became active" in (ended.reason or "")


def test_due_grants_sharing_a_rule_are_closed_with_one_nsg_write_per_nsg(
    as_user, arm_admin, sweep_at
) -> None:
    people = ["alice", "bob", "carol"]
    grants = [
        as_user(p).post("/api/v1/grants", json={"vm": "db-01", "duration": "PT10M"}).json() for p in people
    ]
    assert all(g["status"] == "active" for g in grants), grants
    nsgs = ("db-01-nsg", "app-subnet-nsg")
    rules_before = sum(len(broker_rules(arm_admin.nsg(n))) for n in nsgs)
    arm_admin.clear_requests()

    report = sweep_at(max(parse(g["expires_at"]) for g in grants) + timedelta(seconds=1))

    assert report.expired == 3 and report.errors == []
    assert all(broker_rules(arm_admin.nsg(n)) == [] for n in nsgs)
    assert rules_before == 2  # one rule per NSG holds all three sources
    assert arm_admin.count(method="PUT") == len(nsgs)  # one whole-NSG write each, not one per grant
    assert arm_admin.count(method="DELETE") == 0
