"""Granting over real HTTP: uvicorn -> FastAPI -> Table Storage (Azurite) + ARM (the emulator)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.broker.conftest import broker_rules, nsg_id, others, sources

pytestmark = pytest.mark.usefixtures("clean_lab")


def test_a_grant_opens_one_rule_for_the_callers_address_on_the_vms_nic_nsg(as_user, arm_admin) -> None:
    before = others(arm_admin.nsg("web-01-nsg"))
    response = as_user("alice").post("/api/v1/grants", json={"vm": "web-01", "duration": "PT30M"})
    assert response.status_code == 201, response.text
    grant = response.json()
    assert grant["status"] == "active"
    assert (grant["vm"], grant["port"], grant["protocol"]) == ("web-01", 22, "ssh")
    assert grant["source"] == "203.0.113.10/32"
    assert grant["connect"]["private_ip"] == "192.0.2.4"
    assert grant["connect"]["public_ip"] == "198.51.100.10"
    assert grant["connect"]["username"] == "azureuser"
    assert [r["nsg_id"].lower() for r in grant["nsg_rules"]] == [nsg_id("web-01-nsg").lower()]

    nsg = arm_admin.nsg("web-01-nsg")
    (rule,) = broker_rules(nsg)
    props = rule["properties"]
    assert sources(rule) == {"203.0.113.10/32"}
    assert props["destinationAddressPrefix"] == "192.0.2.4"
    assert props["destinationPortRange"] == "22"
    assert (props["protocol"], props["access"], props["direction"]) == ("Tcp", "Allow", "Inbound")
    assert 100 <= props["priority"] <= 199
    assert others(nsg) == before  # every pre-existing rule unchanged, byte for byte


def test_a_vm_behind_a_subnet_nsg_only_gets_its_rule_there(as_user, arm_admin) -> None:
    response = as_user("bob").post("/api/v1/grants", json={"vm": "win-01", "protocol": "rdp"})
    assert response.status_code == 201, response.text
    assert response.json()["port"] == 3389
    (rule,) = broker_rules(arm_admin.nsg("app-subnet-nsg"))
    assert rule["properties"]["destinationAddressPrefix"] == "192.0.2.20"
    assert sources(rule) == {"203.0.113.11/32"}


def test_a_vm_behind_nic_and_subnet_nsgs_gets_a_rule_in_both(as_user, arm_admin) -> None:
    response = as_user("alice").post("/api/v1/grants", json={"vm": "db-01", "port": 22})
    assert response.status_code == 201, response.text
    assert len(response.json()["nsg_rules"]) == 2
    for name in ("db-01-nsg", "app-subnet-nsg"):
        (rule,) = broker_rules(arm_admin.nsg(name))
        assert rule["properties"]["destinationAddressPrefix"] == "192.0.2.21"


def test_an_ipv6_caller_gets_an_ipv6_rule_on_a_dual_stack_vm(as_user, arm_admin) -> None:
    response = as_user("alice", address="2001:db8::10").post("/api/v1/grants", json={"vm": "v6-01"})
    assert response.status_code == 201, response.text
    assert response.json()["source"] == "2001:db8::10/128"
    assert response.json()["connect"]["private_ip"] == "2001:db8:0:1::4"
    (rule,) = broker_rules(arm_admin.nsg("v6-01-nsg"))
    assert sources(rule) == {"2001:db8::10/128"}


def effective_rule(nsg: dict[str, Any]) -> dict[str, Any]:
    """The key's rule with the latest expiry; any other broker rule left beside it must be superseded (a
    subset of its sources, ending earlier), never a second door."""
    ours = sorted(broker_rules(nsg), key=lambda r: r["name"])
    newest = ours[-1]
    for older in ours[:-1]:
        assert sources(older) <= sources(newest), older
    return newest


def test_an_ipv6_caller_to_an_ipv4_only_vm_is_told_to_retry_over_ipv4(as_user, arm_admin) -> None:
    response = as_user("alice", address="[2001:db8::10]:5678").post("/api/v1/grants", json={"vm": "web-01"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "address_family_mismatch"
    assert "IPv4" in response.json()["error"]["message"]
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []


def test_asking_again_returns_the_same_grant_extended_without_a_second_rule(as_user, arm_admin) -> None:
    alice = as_user("alice")
    first = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"})
    assert first.status_code == 201
    arm_admin.clear_requests()
    again = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT20M"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["expires_at"] > first.json()["expires_at"]
    rule = effective_rule(arm_admin.nsg("web-01-nsg"))
    assert sources(rule) == {"203.0.113.10/32"}  # one source, not a second one
    assert arm_admin.count(method="PUT") <= 1  # the rule is renamed for its new expiry at most once
    assert arm_admin.count(method="DELETE") == 0  # the superseded rule goes at its own expiry


def test_two_people_share_one_coalesced_rule_and_revoking_one_keeps_the_other(as_user, arm_admin) -> None:
    alice_grant = as_user("alice").post("/api/v1/grants", json={"vm": "web-01"}).json()
    bob = as_user("bob")
    bob_grant = bob.post("/api/v1/grants", json={"vm": "web-01"}).json()
    rule = effective_rule(arm_admin.nsg("web-01-nsg"))
    assert sources(rule) == {"203.0.113.10/32", "203.0.113.11/32"}

    assert bob.delete(f"/api/v1/grants/{bob_grant['id']}").json()["status"] == "revoked"
    (rule,) = broker_rules(arm_admin.nsg("web-01-nsg"))
    assert sources(rule) == {"203.0.113.10/32"}
    assert alice_grant["status"] == "active"


def test_revoke_by_owner_closes_the_door_and_is_idempotent(as_user, arm_admin) -> None:
    alice = as_user("alice")
    grant = alice.post("/api/v1/grants", json={"vm": "web-01"}).json()
    first = alice.delete(f"/api/v1/grants/{grant['id']}")
    assert first.status_code == 200
    assert first.json()["status"] == "revoked"
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []
    second = alice.delete(f"/api/v1/grants/{grant['id']}")
    assert (second.status_code, second.json()["status"]) == (200, "revoked")


def test_an_admin_may_revoke_anyones_grant_another_user_may_not(as_user, arm_admin) -> None:
    grant = as_user("alice").post("/api/v1/grants", json={"vm": "web-01"}).json()
    denied = as_user("bob").delete(f"/api/v1/grants/{grant['id']}")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "forbidden"
    assert len(broker_rules(arm_admin.nsg("web-01-nsg"))) == 1
    assert as_user("bob").get(f"/api/v1/grants/{grant['id']}").status_code == 403

    revoked = as_user("carol").delete(f"/api/v1/grants/{grant['id']}")
    assert (revoked.status_code, revoked.json()["status"]) == (200, "revoked")
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []


def test_extend_moves_the_expiry_within_the_limits(as_user, arm_admin) -> None:
    alice = as_user("alice")
    grant = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "10m"}).json()
    longer = alice.post(f"/api/v1/grants/{grant['id']}/extend", json={"duration": "2h"})
    assert longer.status_code == 200, longer.text
    assert longer.json()["expires_at"] > grant["expires_at"]
    rule = effective_rule(arm_admin.nsg("web-01-nsg"))
    assert rule["name"].endswith("x" + longer.json()["expires_at"].replace("-", "").replace(":", ""))

    too_long = alice.post(f"/api/v1/grants/{grant['id']}/extend", json={"duration": "PT5H"})
    assert too_long.status_code == 400
    assert "longer than the maximum" in too_long.json()["error"]["message"]
    assert (
        as_user("bob").post(f"/api/v1/grants/{grant['id']}/extend", json={"duration": "1h"}).status_code
        == 403
    )

    alice.delete(f"/api/v1/grants/{grant['id']}")
    ended = alice.post(f"/api/v1/grants/{grant['id']}/extend", json={"duration": "1h"})
    assert (ended.status_code, ended.json()["error"]["code"]) == (409, "conflict")


def test_extend_never_passes_the_maximum_total(as_user) -> None:
    alice = as_user("alice")
    grant = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "4h"}).json()
    capped = alice.post(f"/api/v1/grants/{grant['id']}/extend", json={"duration": "4h"})
    assert capped.status_code == 200
    # Created just now with PT8H total: asking now + 4h is within it, so no cap yet.
    assert capped.json()["expires_at"] >= grant["expires_at"]


@pytest.mark.parametrize(
    "case",
    [
        ("alice", {"vm": "legacy-01"}, 403, "vm_not_eligible"),
        ("alice", {"vm": "stopped-01"}, 409, "vm_not_running"),
        ("alice", {"vm": "bare-01"}, 409, "no_nsg"),
        ("alice", {"vm": "locked-01"}, 403, "vm_not_eligible"),
        ("alice", {"vm": "web-01", "port": 3389}, 403, "vm_not_eligible"),
        ("alice", {"vm": "nope-01"}, 404, "not_found"),
        ("dave", {"vm": "web-01"}, 403, "forbidden"),
        ("alice", {"vm": "web-01", "source": "0.0.0.0/0"}, 400, "invalid_request"),
        ("alice", {"vm": "web-01", "source": "Internet"}, 400, "invalid_request"),
        ("alice", {"vm": "web-01", "source": "203.0.113.0/24"}, 400, "invalid_request"),
        ("alice", {"vm": "web-01", "duration": "PT9H"}, 400, "invalid_request"),
        ("alice", {"vm": "web-01", "duration": "soon"}, 400, "invalid_request"),
        ("alice", {"vm": "db-01", "duration": "PT45M"}, 400, "invalid_request"),
        (
            "alice",
            {
                "vm": "/subscriptions/00000000-0000-4000-8000-0000000000a1/resourceGroups/other/providers/"
                "Microsoft.Compute/virtualMachines/web-01"
            },
            403,
            "vm_not_eligible",
        ),
    ],
)
def test_policy_refusals_have_their_status_code_and_a_message(as_user, arm_admin, case) -> None:
    user, body, status, code = case
    response = as_user(user).post("/api/v1/grants", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []


def test_a_required_role_lets_its_holder_in_with_a_warning_about_a_winning_deny(as_user) -> None:
    response = as_user("carol").post("/api/v1/grants", json={"vm": "locked-01"})
    assert response.status_code == 201, response.text


def test_a_broad_allow_already_open_is_reported_as_a_warning(as_user) -> None:
    response = as_user("alice").post("/api/v1/grants", json={"vm": "open-01"})
    assert response.status_code == 201, response.text
    assert any("allow-ssh-from-internet" in w for w in response.json()["warnings"])


def test_a_vm_can_be_named_by_its_full_resource_id(as_user) -> None:
    vm_id = (
        "/subscriptions/00000000-0000-4000-8000-0000000000a1/resourceGroups/rg-jit-demo/providers/"
        "Microsoft.Compute/virtualMachines/web-01"
    )
    response = as_user("alice").post("/api/v1/grants", json={"vm": vm_id})
    assert response.status_code == 201, response.text
    assert response.json()["vm_id"].lower() == vm_id.lower()


def test_listing_shows_my_grants_and_everyones_only_to_admins(as_user) -> None:
    alice, bob, carol = as_user("alice"), as_user("bob"), as_user("carol")
    mine = alice.post("/api/v1/grants", json={"vm": "web-01"}).json()
    bobs = bob.post("/api/v1/grants", json={"vm": "web-01"}).json()
    listed = alice.get("/api/v1/grants", params={"status": "active"}).json()["grants"]
    assert mine["id"] in {g["id"] for g in listed}
    assert bobs["id"] not in {g["id"] for g in listed}
    assert alice.get("/api/v1/grants", params={"all": "true"}).status_code == 403
    everyone = carol.get("/api/v1/grants", params={"all": "true", "vm": "web-01"}).json()["grants"]
    assert {mine["id"], bobs["id"]} <= {g["id"] for g in everyone}
    assert alice.get("/api/v1/grants", params={"status": "sleeping"}).status_code == 422
    assert alice.get(f"/api/v1/grants/{mine['id']}").json()["id"] == mine["id"]
    assert alice.get("/api/v1/grants/g-doesnotexist").status_code == 404


def test_vms_lists_what_the_caller_may_request(as_user) -> None:
    names = {vm["name"]: vm for vm in as_user("alice").get("/api/v1/vms").json()["vms"]}
    assert {"web-01", "win-01", "db-01", "stopped-01", "v6-01"} <= set(names)
    assert "legacy-01" not in names and "locked-01" not in names
    assert names["db-01"]["ports"] == [22, 5432]
    assert names["stopped-01"]["power_state"] == "deallocated"
    assert names["win-01"]["os"] == "Windows"
    assert "locked-01" in {vm["name"] for vm in as_user("carol").get("/api/v1/vms").json()["vms"]}


def test_vms_say_which_vm_needs_an_approval_and_whose(as_user) -> None:
    names = {vm["name"]: vm for vm in as_user("bob").get("/api/v1/vms").json()["vms"]}
    prod, web = names["prod-01"], names["web-01"]
    assert (prod["approval_required"], prod["approver_role"]) == (True, "JIT.Approver")
    assert (web["approval_required"], web["approver_role"]) == (False, None)


def test_whoami_shows_the_principal_roles_and_address(as_user, scenario) -> None:
    me = as_user("carol", address="198.51.100.1, 203.0.113.20:4444").get("/api/v1/whoami").json()
    assert me["principal"] == scenario.user("carol").oid
    assert me["roles"] == ["JIT.Admin", "JIT.Approver", "JIT.Requester"]
    assert me["is_admin"] is True
    assert me["address"] == "203.0.113.20"  # the right-most X-Forwarded-For element, port stripped


def test_a_revoke_whose_rule_write_fails_is_still_revoked_and_says_the_sweeper_finishes_it(
    as_user, arm_admin, sweep_at
) -> None:
    alice = as_user("alice")
    grant = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT30M"}).json()
    arm_admin.add_fault(
        method="PUT",
        match="networkSecurityGroups/web-01-nsg",
        count=1,
        status=403,
        code="AuthorizationFailed",
    )

    answer = alice.delete(f"/api/v1/grants/{grant['id']}")

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "revoked"
    assert any("sweeper" in w for w in answer.json()["warnings"])
    assert len(broker_rules(arm_admin.nsg("web-01-nsg"))) == 1  # the write failed: the door is still there
    assert alice.get(f"/api/v1/grants/{grant['id']}").json()["status"] == "revoked"  # recorded first

    report = sweep_at(datetime.now(UTC))  # the very next sweep, long before the grant's own expiry
    assert report.orphans_removed == 1 and report.errors == []
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []
