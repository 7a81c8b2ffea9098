"""Two answers to one waiting request at once: exactly one is recorded, the other is told who answered and
leaves no event, and a door an approval opened is never marked closed behind its back.

The race is made deterministic by handing the second answer a store whose first read returns the request as
it was before the first answer (both people read `awaiting_approval`; one writes first)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from jitbroker.approvals import ApprovalService, NotAwaiting
from jitbroker.closing import Closer
from jitbroker.grants import GrantService
from jitbroker.identity.principal import Principal
from jitbroker.model import GrantStatus
from tests.broker.conftest import broker_rules, retag

pytestmark = pytest.mark.usefixtures("clean_lab")

PROD = "prod-01-nsg"


class ReadBeforeTheOtherAnswer:
    """The store as the losing answer met it: its first read is the request as it was before."""

    def __init__(self, store: Any, before: Any) -> None:
        self._store, self._before = store, before

    def get(self, grant_id: str) -> Any:
        if self._before is not None:
            before, self._before = self._before, None
            return before
        return self._store.get(grant_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def now() -> datetime:
    return datetime.now(UTC)


def approvals(parts: Any, store: Any) -> ApprovalService:
    closer = Closer(store=store, reconciler=parts.reconciler, clock=now)
    return ApprovalService(
        settings=parts.services.settings,
        store=store,
        topology=parts.topology,
        activator=parts.services.grants,
        closer=closer,
        clock=now,
    )


def person(scenario: Any, name: str, roles: list[str]) -> Principal:
    user = scenario.user(name)
    return Principal(user.oid, user.display_name, user.upn, scenario.tenant.tenant_id, frozenset(roles))


def waiting(as_user: Any) -> dict[str, Any]:
    response = as_user("bob").post("/api/v1/grants", json={"vm": "prod-01", "duration": "PT30M"})
    assert response.status_code == 202, response.text
    return dict(response.json())


def kinds(store: Any, grant_id: str) -> list[str]:
    return [e.kind for e in store.audit_events(grant_id)]


@pytest.mark.parametrize("late", ["deny", "withdraw", "second approve"])
def test_an_answer_that_lost_to_an_approval_changes_nothing_and_leaves_no_event(
    late, as_user, api_store, arm_admin, in_process_broker, *, scenario
) -> None:
    grant = waiting(as_user)
    before = api_store.get(grant["id"])  # what the late answer read
    approved = as_user("carol").post(f"/api/v1/grants/{grant['id']}/approve", json={"reason": "ok"})
    assert approved.json()["status"] == "active"
    assert len(broker_rules(arm_admin.nsg(PROD))) == 1

    service = approvals(in_process_broker(now), ReadBeforeTheOtherAnswer(api_store, before))
    approver, bob = person(scenario, "dave", ["JIT.Approver"]), person(scenario, "bob", ["JIT.Requester"])
    with pytest.raises(NotAwaiting, match=r"answered meanwhile: it is active by carol@contoso\.test"):
        if late == "deny":
            service.deny(approver, grant["id"], "too late")
        elif late == "withdraw":
            service.withdraw(bob, grant["id"])
        else:
            service.approve(approver, grant["id"], "me too")

    assert api_store.get(grant["id"]).status is GrantStatus.ACTIVE
    assert len(broker_rules(arm_admin.nsg(PROD))) == 1  # the door the approval opened stays open
    assert kinds(api_store, grant["id"]) == ["requested", "approved", "granted"]


def test_an_approval_that_lost_to_a_deny_opens_nothing_and_leaves_no_event(
    as_user, api_store, arm_admin, in_process_broker, scenario
) -> None:
    grant = waiting(as_user)
    before = api_store.get(grant["id"])
    denied = as_user("carol").post(f"/api/v1/grants/{grant['id']}/deny", json={"reason": "freeze"})
    assert denied.json()["status"] == "denied"

    service = approvals(in_process_broker(now), ReadBeforeTheOtherAnswer(api_store, before))
    with pytest.raises(NotAwaiting, match=r"it is denied by carol@contoso\.test"):
        service.approve(person(scenario, "dave", ["JIT.Approver"]), grant["id"], None)

    assert api_store.get(grant["id"]).status is GrantStatus.DENIED
    assert broker_rules(arm_admin.nsg(PROD)) == []
    assert kinds(api_store, grant["id"]) == ["requested", "denied"]


def test_a_revoke_that_read_the_request_before_its_approval_closes_the_open_door(
    as_user, api_store, arm_admin, in_process_broker, scenario
) -> None:
    grant = waiting(as_user)
    before = api_store.get(grant["id"])
    as_user("carol").post(f"/api/v1/grants/{grant['id']}/approve", json={})
    assert len(broker_rules(arm_admin.nsg(PROD))) == 1

    parts = in_process_broker(now)
    stale = ReadBeforeTheOtherAnswer(api_store, before)
    service = GrantService(
        settings=parts.services.settings,
        store=stale,
        topology=parts.topology,
        reconciler=parts.reconciler,
        closer=Closer(store=stale, reconciler=parts.reconciler, clock=now),
        clock=now,
    )
    closed = service.revoke(person(scenario, "bob", ["JIT.Requester"]), grant["id"])

    assert closed.status is GrantStatus.REVOKED  # what bob asked for: the door closes, whatever it became
    assert broker_rules(arm_admin.nsg(PROD)) == []
    assert kinds(api_store, grant["id"]) == ["requested", "approved", "granted", "revoked"]


def test_two_answers_sent_at_once_over_http_record_exactly_one_decision(
    as_user, token_for, api_store, arm_admin
) -> None:
    carol = as_user("carol")
    dave = as_user("dave", token=token_for("dave", roles=["JIT.Approver"]))
    for attempt in range(4):
        grant = waiting(as_user)
        url = f"/api/v1/grants/{grant['id']}"
        with ThreadPoolExecutor(2) as pool:
            yes = pool.submit(carol.post, f"{url}/approve", json={})
            no = pool.submit(dave.post, f"{url}/deny", json={"reason": f"no {attempt}"})
            answers = [yes.result(), no.result()]
        final = as_user("bob").get(url).json()["status"]
        decisions = [k for k in kinds(api_store, grant["id"]) if k in ("approved", "denied")]
        assert len(decisions) == 1, (decisions, [a.text for a in answers])
        assert (final == "active") == (decisions == ["approved"])
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 409], [a.text for a in answers]
        (loser,) = [a for a in answers if a.status_code == 409]
        assert loser.json()["error"]["code"] == "not_awaiting_approval"
        assert (len(broker_rules(arm_admin.nsg(PROD))) == 1) == (final == "active")
        as_user("bob").delete(url)


def test_approving_a_request_whose_vm_opted_out_ends_it_failed_with_the_reason(
    as_user, api_store, arm, arm_admin
) -> None:
    grant = waiting(as_user)
    retag(arm, "prod-01", {"owner": "ops"})  # jit-ports removed while the request waited
    carol = as_user("carol")
    answer = carol.post(f"/api/v1/grants/{grant['id']}/approve", json={})

    assert (answer.status_code, answer.json()["error"]["code"]) == (403, "vm_not_eligible")
    ended = as_user("bob").get(f"/api/v1/grants/{grant['id']}").json()
    assert ended["status"] == "failed" and "no longer opens port 22" in ended["reason"]
    assert grant["id"] not in [g["id"] for g in carol.get("/api/v1/grants?awaiting=me").json()["grants"]]
    assert broker_rules(arm_admin.nsg(PROD)) == []
    assert kinds(api_store, grant["id"]) == ["requested", "failed"]


def test_approving_a_stopped_vm_is_refused_and_the_request_keeps_waiting(as_user, arm_admin) -> None:
    grant = waiting(as_user)
    arm_admin.set_power("prod-01", "deallocated")
    answer = as_user("carol").post(f"/api/v1/grants/{grant['id']}/approve", json={})
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "vm_not_running")
    assert as_user("bob").get(f"/api/v1/grants/{grant['id']}").json()["status"] == "awaiting_approval"

    arm_admin.set_power("prod-01", "running")
    again = as_user("carol").post(f"/api/v1/grants/{grant['id']}/approve", json={})
    assert again.json()["status"] == "active"


def test_the_audit_api_filters_by_the_approval_kinds(as_user) -> None:
    approved = waiting(as_user)
    as_user("carol").post(f"/api/v1/grants/{approved['id']}/approve", json={})
    as_user("bob").delete(f"/api/v1/grants/{approved['id']}")  # closed: the next ask is a new request
    withdrawn = waiting(as_user)
    as_user("bob").post(f"/api/v1/grants/{withdrawn['id']}/withdraw")
    carol = as_user("carol")
    for kind, grant in (("approved", approved), ("withdrawn", withdrawn)):
        answer = carol.get("/api/v1/audit", params={"since": "1h", "kind": kind})
        assert answer.status_code == 200, answer.text
        assert grant["id"] in [e["grant_id"] for e in answer.json()["events"]]
        assert {e["kind"] for e in answer.json()["events"]} == {kind}


def test_an_approval_whose_request_changed_only_elsewhere_still_goes_through(
    as_user, api_store, arm_admin, in_process_broker, scenario
) -> None:
    grant = waiting(as_user)
    before = api_store.get(grant["id"])
    api_store.replace(dataclasses.replace(before, justification="ticket added"), before=before)

    service = approvals(in_process_broker(now), ReadBeforeTheOtherAnswer(api_store, before))
    opened = service.approve(person(scenario, "carol", ["JIT.Approver"]), grant["id"], None)

    assert opened.status is GrantStatus.ACTIVE and opened.justification == "ticket added"
    assert len(broker_rules(arm_admin.nsg(PROD))) == 1
    assert kinds(api_store, grant["id"]) == ["requested", "approved", "granted"]
