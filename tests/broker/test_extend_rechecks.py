"""An extend re-checks what a request checks — role, opt-in, port, required role, scope, power — with the
request's own refusals, so losing eligibility ends the renewals instead of riding them to the maximum total.

Real HTTP to the api broker (topology cache off); the VM's tags are changed in the running emulator the way
an owner would change them in the portal.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from jitbroker.closing import Closer
from jitbroker.errors import VmNotEligible
from jitbroker.grants import GrantService
from jitbroker.identity.principal import Principal
from tests.broker.conftest import broker_rules, retag

pytestmark = pytest.mark.usefixtures("clean_lab")


def granted(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/grants", json=body)
    assert response.status_code == 201, response.text
    grant: dict[str, Any] = response.json()
    return grant


def refused(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    message: str = response.json()["error"]["message"]
    return message


def extend(client: Any, grant: dict[str, Any], duration: str = "1h") -> Any:
    return client.post(f"/api/v1/grants/{grant['id']}/extend", json={"duration": duration})


def test_an_extend_after_the_requester_role_is_gone_is_forbidden(as_user, token_for, api_store) -> None:
    grant = granted(as_user("alice"), {"vm": "web-01", "duration": "10m"})
    roleless = as_user("alice", token=token_for("alice", roles=None))  # the role was taken away
    message = refused(extend(roleless, grant), 403, "forbidden")
    assert "JIT.Requester" in message
    assert as_user("alice").get(f"/api/v1/grants/{grant['id']}").json()["expires_at"] == grant["expires_at"]
    denied = [e for e in api_store.audit_events(grant["id"]) if e.kind == "denied"]
    assert [(e.detail, e.reason.split(":")[0]) for e in denied] == [("extend", "forbidden")]


def test_an_extend_after_the_vm_opted_out_is_refused_as_a_request_would_be(as_user, arm) -> None:
    alice = as_user("alice")
    grant = granted(alice, {"vm": "web-01", "duration": "10m"})
    retag(arm, "web-01", {"owner": "ops"})  # jit-ports removed
    refused(extend(alice, grant), 403, "vm_not_eligible")
    refused(alice.post("/api/v1/grants", json={"vm": "web-01"}), 403, "vm_not_eligible")  # the same answer


def test_an_extend_of_a_port_no_longer_opted_in_is_refused(as_user, arm) -> None:
    alice = as_user("alice")
    grant = granted(alice, {"vm": "db-01", "port": 5432, "duration": "10m"})
    retag(arm, "db-01", {"jit-ports": "22", "jit-max-duration": "PT30M"})
    message = refused(extend(alice, grant, "20m"), 403, "vm_not_eligible")
    assert "5432" in message


def test_an_extend_after_the_vm_requires_a_role_the_owner_lacks_is_refused(as_user, arm) -> None:
    alice = as_user("alice")
    grant = granted(alice, {"vm": "web-01", "duration": "10m"})
    retag(arm, "web-01", {"jit-ports": "22", "jit-required-role": "JIT.Admin"})
    assert "JIT.Admin" in refused(extend(alice, grant), 403, "vm_not_eligible")


def test_an_extend_of_a_stopped_vm_is_refused(as_user, arm_admin) -> None:
    alice = as_user("alice")
    grant = granted(alice, {"vm": "web-01", "duration": "10m"})
    arm_admin.set_power("web-01", "deallocated")
    refused(extend(alice, grant), 409, "vm_not_running")
    arm_admin.set_power("web-01", "running")
    assert extend(alice, grant).status_code == 200  # eligible again: the renewal goes through


def test_an_extend_uses_the_vms_duration_limit_as_it_is_now(as_user, arm, api_store) -> None:
    alice = as_user("alice")
    grant = granted(alice, {"vm": "web-01", "duration": "10m"})
    retag(arm, "web-01", {"jit-ports": "22", "jit-max-duration": "PT15M"})
    assert "longer than the maximum" in refused(extend(alice, grant, "20m"), 400, "invalid_request")
    denied = [e for e in api_store.audit_events(grant["id"]) if e.kind == "denied"]
    assert [(e.detail, e.reason.split(":")[0]) for e in denied] == [("extend", "invalid_request")]
    assert extend(alice, grant, "15m").status_code == 200


def test_a_vm_that_starts_wanting_approvals_stretches_no_door_opened_before(as_user, arm, api_store) -> None:
    alice = as_user("alice")
    grant = granted(alice, {"vm": "web-01", "duration": "10m"})
    retag(arm, "web-01", {"jit-ports": "22", "jit-approval": "required"})
    assert "now needs an approval" in refused(extend(alice, grant), 409, "conflict")
    again = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "30m"})
    assert again.status_code == 202 and again.json()["status"] == "awaiting_approval"
    assert again.json()["id"] != grant["id"]
    assert alice.get(f"/api/v1/grants/{grant['id']}").json()["expires_at"] == grant["expires_at"]
    denied = [e for e in api_store.audit_events(grant["id"]) if e.kind == "denied"]
    assert [e.detail for e in denied] == ["extend"]


def test_every_refused_extend_of_a_grant_is_a_denied_event_of_it(as_user, api_store) -> None:
    alice = as_user("alice")
    grant = granted(alice, {"vm": "web-01", "duration": "10m"})
    refused(extend(as_user("bob"), grant), 403, "forbidden")  # not the owner
    alice.delete(f"/api/v1/grants/{grant['id']}")
    refused(extend(alice, grant), 409, "conflict")  # revoked already
    denied = [e for e in api_store.audit_events(grant["id"]) if e.kind == "denied"]
    reasons = [(e.detail, e.reason.split(":")[0]) for e in denied]
    assert reasons == [("extend", "forbidden"), ("extend", "conflict")]
    bob = as_user("bob").get("/api/v1/whoami").json()["principal"]
    assert (denied[0].principal, denied[0].actor) == (grant["principal"], bob)  # whose, and who tried


def test_an_admin_revokes_but_does_not_extend_someone_elses_grant(as_user, arm_admin) -> None:
    grant = granted(as_user("alice"), {"vm": "web-01", "duration": "10m"})
    carol = as_user("carol")
    assert "owner" in refused(extend(carol, grant), 403, "forbidden")
    assert carol.delete(f"/api/v1/grants/{grant['id']}").json()["status"] == "revoked"
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []


def test_an_extend_of_a_vm_now_outside_the_brokers_scopes_is_refused(
    in_process_broker, scenario, as_user
) -> None:
    grant = granted(as_user("alice"), {"vm": "web-01", "duration": "10m"})
    now = datetime.now(UTC)
    parts = in_process_broker(lambda: now)
    narrowed = dataclasses.replace(
        parts.services.settings,
        allowed_scopes=("/subscriptions/00000000-0000-4000-8000-0000000000a1/resourceGroups/rg-outside",),
    )
    service = GrantService(
        settings=narrowed,
        store=parts.store,
        topology=parts.topology,
        reconciler=parts.reconciler,
        closer=Closer(store=parts.store, reconciler=parts.reconciler, clock=lambda: now),
        clock=lambda: now,
    )
    alice = scenario.user("alice")
    principal = Principal(alice.oid, alice.display_name, alice.upn, "t", frozenset(alice.roles))
    with pytest.raises(VmNotEligible, match="outside the subscriptions and resource groups"):
        service.extend(principal, grant["id"], parts.services.settings.default_duration)
