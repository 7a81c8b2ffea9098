"""What the sweeper does for approvals and notifications: approvals that never opened a door lapse, people are
told shortly before a door closes, and the lifecycle's events reach the publisher in order."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitbroker.config import Settings
from jitbroker.events import Event
from jitbroker.grants import GrantRequest
from jitbroker.identity import Principal
from jitbroker.model import GrantStatus
from jitbroker.runtime import build

pytestmark = pytest.mark.usefixtures("clean_lab")


class Recorder:
    """A publisher that keeps what it was handed."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self, grant_id: str | None = None) -> list[str]:
        return [e.kind for e in self.events if grant_id is None or (e.grant and e.grant.id == grant_id)]


@pytest.fixture
def broker_at(api_broker_env: dict[str, str], identity_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, api_broker_env[name])
    recorder = Recorder()

    def make(moment: datetime) -> Any:
        return build(Settings.from_env(api_broker_env), clock=lambda: moment, publisher=recorder)

    make.recorder = recorder  # type: ignore[attr-defined]
    return make


def principal(scenario: Any, name: str) -> Principal:
    user = scenario.user(name)
    return Principal(
        oid=user.oid,
        name=user.display_name,
        upn=user.upn,
        tenant_id=scenario.tenant.tenant_id,
        roles=frozenset(user.roles),
    )


def test_the_lifecycle_publishes_each_step_of_an_approved_grant(broker_at, scenario) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    broker = broker_at(now)
    bob, carol = principal(scenario, "bob"), principal(scenario, "carol")
    address = ipaddress.ip_address(scenario.user("bob").address)
    grant, _ = broker.services.grants.request(bob, address, GrantRequest(vm="prod-01", port=22))
    assert grant.status is GrantStatus.AWAITING_APPROVAL
    opened = broker.services.approvals.approve(carol, grant.id, "on call")
    assert opened.status is GrantStatus.ACTIVE
    broker.services.grants.revoke(bob, grant.id)

    recorder = broker_at.recorder
    assert recorder.kinds(grant.id) == ["requested", "approved", "granted", "revoked"]
    mine = [e for e in recorder.events if e.grant and e.grant.id == grant.id]
    requested = next(e for e in mine if e.kind == "requested")
    assert requested.payload()["approve"]["command"] == f"jit approve {grant.id}"
    # the requester and the justification are the grant's: the event repeats neither (docs/notifications.md)
    assert (requested.actor, requested.reason) == (None, None)
    approved = next(e for e in recorder.events if e.kind == "approved")
    assert approved.actor is not None and approved.actor.oid == carol.oid and approved.reason == "on call"


def test_an_approval_that_cannot_open_the_door_in_its_window_lapses(broker_at, scenario, arm_admin) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    broker = broker_at(now)
    bob, carol = principal(scenario, "bob"), principal(scenario, "carol")
    address = ipaddress.ip_address(scenario.user("bob").address)
    grant, _ = broker.services.grants.request(bob, address, GrantRequest(vm="prod-01", port=22))
    store = broker.store
    from dataclasses import replace

    # approved, but the door was never written (the broker died right after recording the approval)
    approved = store.replace(
        replace(
            grant,
            status=GrantStatus.PENDING,
            expires_at=now + timedelta(minutes=30),
            decided_by=carol.oid,
            decided_at=now,
        )
    )
    within = broker_at(now + timedelta(minutes=10)).sweeper.run()
    assert within.undone == 0 and store.get(approved.id).status is GrantStatus.PENDING
    later = broker_at(now + timedelta(minutes=16)).sweeper.run()
    assert later.undone == 1
    assert store.get(approved.id).status is GrantStatus.FAILED


def test_people_are_told_once_shortly_before_a_door_closes(broker_at, scenario) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    alice = principal(scenario, "alice")
    address = ipaddress.ip_address(scenario.user("alice").address)
    grant, _ = broker_at(now).services.grants.request(
        alice, address, GrantRequest(vm="web-01", port=22, duration=timedelta(minutes=30))
    )
    recorder = broker_at.recorder
    for minute in range(0, 31):  # one sweep a minute, as the timer runs
        broker_at(now + timedelta(minutes=minute, seconds=30)).sweeper.run()
    assert recorder.kinds(grant.id).count("expiring") == 1
    warning = next(e for e in recorder.events if e.kind == "expiring" and e.grant and e.grant.id == grant.id)
    assert warning.payload()["extend"]["command"].startswith(f"jit extend {grant.id}")
    assert "expired" in recorder.kinds(grant.id)
