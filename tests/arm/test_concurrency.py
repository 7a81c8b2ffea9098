"""Overlapping writes on one NSG, in each of the behaviours Azure has shown (the `concurrency` knob).

Every test starts two operations on web-01-nsg: the first is slow (`lro_ms`), the second arrives while it is
still InProgress. The knob decides what the second meets; a rollback only ever reverts the failed operation's
own change."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.mgmt.network import NetworkManagementClient

from lab.arm import ArmEmulator, Knobs
from lab.arm.admin import ArmAdmin
from lab.scenario import Scenario
from lab.tls import LabCA
from tests.arm.conftest import NSG, RG, SUB, arm_code, arm_message, create, jit_rule

RULE_WRITE = "Microsoft.Network/networkSecurityGroups/securityRules/write"
SLOW = 60_000  # longer than any test: only for operations nobody waits on
BRIEF = 1000  # long enough for a second write to overlap, short enough to wait for (Retry-After: 1)


def start(network: NetworkManagementClient, name: str, **overrides: Any) -> Any:
    """Begin a rule PUT and return its poller without waiting."""
    return network.security_rules.begin_create_or_update(
        RG, NSG, name, jit_rule(**overrides), polling_interval=0
    )


def rules(lab: ArmAdmin) -> dict[str, dict[str, Any]]:
    """web-01-nsg's rules by name, as ARM shows them (operations settled first)."""
    return {r["name"]: r for r in lab.nsg(NSG)["properties"]["securityRules"]}


def states(lab: ArmAdmin) -> dict[str, str]:
    """Each rule's provisioningState, and the NSG's under its own name."""
    nsg = lab.nsg(NSG)
    found = {r["name"]: r["properties"]["provisioningState"] for r in nsg["properties"]["securityRules"]}
    return {**found, NSG: nsg["properties"]["provisioningState"]}


def test_the_default_mode_is_reject(lab: ArmAdmin) -> None:
    assert lab.knobs()["concurrency"] == "reject"
    assert Knobs().concurrency == "reject"


def test_an_unknown_mode_is_refused(lab: ArmAdmin) -> None:
    with pytest.raises(RuntimeError, match="unknown concurrency mode"):
        lab.set_knobs(concurrency="queue")
    with pytest.raises(ValueError, match="unknown concurrency mode"):
        Knobs(concurrency="queue")


def test_the_mode_can_be_given_at_construction_and_comes_back_on_reset(demo: Scenario, lab_ca: LabCA) -> None:
    with ArmEmulator(demo, lab_ca, knobs={"concurrency": "supersede"}) as emulator:
        admin = ArmAdmin(emulator.url, verify=lab_ca.ca_bundle)
        assert admin.set_knobs(concurrency="accept")["concurrency"] == "accept"
        admin.reset()
        assert admin.knobs()["concurrency"] == "supersede"
        assert emulator.set_knobs(concurrency="throttle").concurrency == "throttle"


# ---- reject ------------------------------------------------------------------------------------------------


def test_reject_refuses_the_second_write_with_409_and_leaves_the_first_running(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=BRIEF, concurrency="reject")
    first = start(network, "jit-first")
    with pytest.raises(ResourceExistsError) as caught:
        start(network, "jit-second", priority=111)
    assert arm_code(caught.value) == "AnotherOperationInProgress"
    assert first.result().provisioning_state == "Succeeded"
    assert "jit-second" not in rules(lab)


# ---- throttle ----------------------------------------------------------------------------------------------


def test_throttle_answers_429_retryable_with_retry_after(raw_put: Any, lab: ArmAdmin) -> None:
    lab.set_knobs(lro_ms=SLOW, concurrency="throttle")
    assert raw_put("jit-first", 110).status_code == 201
    refused = raw_put("jit-second", 111)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    error = refused.json()["error"]
    assert (error["code"], error["message"]) == ("RetryableError", "A retryable error occured.")
    [detail] = error["details"]
    assert detail["code"] == "RetryableErrorDueToAnotherOperation"
    guid = lab.nsg(NSG)["properties"]["resourceGuid"]
    assert detail["message"].startswith("Operation PutSecurityRuleOperation (")
    assert f") is updating resource {guid}. The call can be retried in " in detail["message"]
    assert "jit-second" not in rules(lab)


def test_throttle_is_retried_by_azure_core_after_retry_after_and_then_accepted(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=BRIEF, concurrency="throttle")
    first = start(network, "jit-first")
    lab.set_knobs(lro_ms=0)  # the first keeps its deadline
    second = create(network, "jit-second", jit_rule(priority=111))  # 429, waits Retry-After, retried
    assert second.provisioning_state == "Succeeded"
    assert [r["status"] for r in lab.requests() if r["op"] == RULE_WRITE] == [201, 429, 201]
    assert first.result().provisioning_state == "Succeeded"


# ---- lro_failed --------------------------------------------------------------------------------------------


def test_lro_failed_accepts_the_write_then_fails_its_operation_and_rolls_it_back(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=BRIEF, concurrency="lro_failed")
    first = start(network, "jit-first")
    second = start(network, "jit-second", priority=111)
    assert second.status() == "InProgress"
    assert states(lab)["jit-second"] == "Updating"  # accepted and applied, for now
    with pytest.raises(HttpResponseError) as caught:
        second.result()
    assert arm_code(caught.value) == "AnotherOperationInProgress"
    assert "Another operation on this or dependent resource is in progress" in arm_message(caught.value)
    assert first.result().provisioning_state == "Succeeded"
    assert "jit-first" in rules(lab) and "jit-second" not in rules(lab)
    assert states(lab)[NSG] == "Succeeded"


def test_lro_failed_rollback_restores_the_running_operations_version_of_the_same_rule(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=BRIEF, concurrency="lro_failed")
    first = start(network, "jit-x", source_address_prefix="203.0.113.1")
    second = start(network, "jit-x", source_address_prefix="203.0.113.2")
    with pytest.raises(HttpResponseError):
        second.result()
    assert first.result().source_address_prefix == "203.0.113.1"
    x = rules(lab)["jit-x"]["properties"]
    assert (x["sourceAddressPrefix"], x["provisioningState"]) == ("203.0.113.1", "Succeeded")


def test_lro_failed_delete_keeps_the_rule(network: NetworkManagementClient, lab: ArmAdmin) -> None:
    create(network, "jit-keep", jit_rule())
    lab.set_knobs(lro_ms=BRIEF, concurrency="lro_failed")
    first = start(network, "jit-first", priority=111)
    deleting = network.security_rules.begin_delete(RG, NSG, "jit-keep", polling_interval=0)
    assert states(lab)["jit-keep"] == "Deleting"
    with pytest.raises(HttpResponseError) as caught:
        deleting.result()
    assert arm_code(caught.value) == "AnotherOperationInProgress"
    first.result()
    assert states(lab)["jit-keep"] == "Succeeded"


def test_lro_failed_rollbacks_never_leave_two_rules_in_one_priority_slot(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    create(network, "jit-old", jit_rule(priority=120))
    lab.set_knobs(lro_ms=BRIEF, concurrency="lro_failed")
    first = start(network, "jit-first", priority=111)
    # Two whole-NSG PUTs while it runs: the first moves slot 120 from jit-old to jit-b, the second is computed
    # on that (jit-b still Updating) and adds jit-c. Both fail; the first to roll back must not put jit-old
    # back beside the second's jit-b.
    moving = put_whole(network, lambda rules: [r for r in rules if r.name != "jit-old"] + [_b()])
    adding = put_whole(network, lambda rules: [*rules, jit_rule(name="jit-c", priority=121)])
    for poller in (moving, adding):
        with pytest.raises(HttpResponseError):
            poller.result()
    first.result()
    slots = [(r["properties"]["direction"], r["properties"]["priority"]) for r in rules(lab).values()]
    assert len(slots) == len(set(slots)), rules(lab)
    assert states(lab)[NSG] == "Succeeded"


def _b() -> Any:
    return jit_rule(name="jit-b", priority=120, source_address_prefix="203.0.113.2")


def put_whole(network: NetworkManagementClient, edit: Any) -> Any:
    """Begin a whole-NSG PUT of the rules as read, edited by `edit`, guarded by the etag read."""
    nsg = network.network_security_groups.get(RG, NSG)
    nsg.security_rules = edit(list(nsg.security_rules or []))
    return network.network_security_groups.begin_create_or_update(
        RG, NSG, nsg, headers={"If-Match": nsg.etag}, polling_interval=0
    )


# ---- supersede ---------------------------------------------------------------------------------------------


def test_supersede_cancels_the_running_operation_and_keeps_its_change(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=BRIEF, concurrency="supersede")
    first = start(network, "jit-first")
    lab.set_knobs(lro_ms=0)
    second = create(network, "jit-second", jit_rule(priority=111))
    assert second.provisioning_state == "Succeeded"
    with pytest.raises(HttpResponseError) as caught:
        first.result()
    assert arm_code(caught.value) == "Canceled"
    assert "CanceledAndSupersededDueToAnotherOperation" in str(caught.value)
    # Not rolled back: the second write was accepted with the first one's rule already in the NSG.
    assert states(lab) == {
        "allow-https-inbound": "Succeeded",
        "deny-management-inbound": "Succeeded",
        "jit-first": "Succeeded",
        "jit-second": "Succeeded",
        NSG: "Succeeded",
    }


def test_a_superseded_poll_names_the_operation_that_superseded_it(
    raw_put: Any, raw: Any, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=SLOW, concurrency="supersede")
    first = raw_put("jit-first", 110)
    second = raw_put("jit-second", 111)
    assert (first.status_code, second.status_code) == (201, 201)
    polled = raw("GET", first.headers["Azure-AsyncOperation"]).json()
    first_id = first.headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]
    second_id = second.headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]
    assert polled == {
        "status": "Canceled",
        "error": {
            "code": "Canceled",
            "message": "Operation was canceled.",
            "details": [
                {
                    "code": "CanceledAndSupersededDueToAnotherOperation",
                    "message": f"Operation PutSecurityRuleOperation ({first_id}) was canceled and superseded "
                    f"by operation PutSecurityRuleOperation ({second_id}).",
                }
            ],
        },
    }
    # The kept change stays Updating until the superseding operation ends.
    assert states(lab)["jit-first"] == "Updating"
    assert raw("GET", second.headers["Azure-AsyncOperation"]).json() == {"status": "InProgress"}


def test_a_superseded_delete_still_completes_with_the_write_that_superseded_it(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    create(network, "jit-gone", jit_rule())
    lab.set_knobs(lro_ms=BRIEF, concurrency="supersede")
    deleting = network.security_rules.begin_delete(RG, NSG, "jit-gone", polling_interval=0)
    lab.set_knobs(lro_ms=0)
    create(network, "jit-next", jit_rule(priority=111))
    with pytest.raises(HttpResponseError) as caught:
        deleting.result()
    assert arm_code(caught.value) == "Canceled"
    assert "jit-gone" not in rules(lab) and "jit-next" in rules(lab)


# ---- accept ------------------------------------------------------------------------------------------------


def test_accept_lets_parallel_writes_proceed_and_each_applies(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=BRIEF, concurrency="accept")
    etags = [network.network_security_groups.get(RG, NSG).etag]
    pollers = []
    for i in range(3):
        pollers.append(start(network, f"jit-{i}", priority=120 + i))
        etags.append(network.network_security_groups.get(RG, NSG).etag)
    assert len(set(etags)) == 4  # every accepted write gave the NSG a new etag
    assert [r["status"] for r in lab.requests() if r["op"] == RULE_WRITE] == [201, 201, 201]
    assert [p.result().provisioning_state for p in pollers] == ["Succeeded"] * 3
    assert {"jit-0", "jit-1", "jit-2"} <= set(rules(lab))


def test_accept_a_rule_stays_updating_until_its_own_operation_ends(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=SLOW, concurrency="accept")
    start(network, "jit-slow")
    lab.set_knobs(lro_ms=0)
    create(network, "jit-fast", jit_rule(priority=111))
    assert states(lab)["jit-slow"] == "Updating"
    assert states(lab)["jit-fast"] == "Succeeded"
    assert states(lab)[NSG] == "Updating"


def test_accept_a_failed_operation_never_undoes_a_later_write(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=BRIEF, concurrency="accept")
    lab.add_fault(
        method="PUT", match="/securityRules/jit-doomed", lro_status="Failed", code="InternalServerError"
    )
    doomed = start(network, "jit-doomed", source_address_prefix="203.0.113.1")
    later_other = start(network, "jit-kept", priority=111)
    with pytest.raises(HttpResponseError):
        doomed.result()
    assert later_other.result().provisioning_state == "Succeeded"
    assert "jit-doomed" not in rules(lab) and "jit-kept" in rules(lab)


def test_accept_a_failed_write_of_a_rule_leaves_the_later_write_of_the_same_rule(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=BRIEF, concurrency="accept")
    lab.add_fault(method="PUT", match="/securityRules/jit-x", lro_status="Failed", count=1)
    failing = start(network, "jit-x", source_address_prefix="203.0.113.1")
    later = start(network, "jit-x", source_address_prefix="203.0.113.2")
    with pytest.raises(HttpResponseError):
        failing.result()
    assert later.result().source_address_prefix == "203.0.113.2"
    x = rules(lab)["jit-x"]["properties"]
    assert (x["sourceAddressPrefix"], x["provisioningState"]) == ("203.0.113.2", "Succeeded")


def test_accept_a_failed_rule_write_under_a_later_whole_nsg_put_keeps_the_nsg_put(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=BRIEF, concurrency="accept")
    lab.add_fault(method="PUT", match="/securityRules/jit-x", lro_status="Failed", count=1)
    failing = start(network, "jit-x", source_address_prefix="203.0.113.1")
    nsg = network.network_security_groups.get(RG, NSG)  # sees jit-x, Updating
    nsg.security_rules = [r for r in nsg.security_rules if r.name != "jit-x"] + [
        jit_rule(name="jit-y", priority=111)
    ]
    whole = network.network_security_groups.begin_create_or_update(
        RG, NSG, nsg, headers={"If-Match": nsg.etag}, polling_interval=0
    )
    with pytest.raises(HttpResponseError):
        failing.result()
    whole.result()
    assert "jit-x" not in rules(lab) and "jit-y" in rules(lab)


# ---- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture
def raw(arm_emulator: ArmEmulator, lab_ca: LabCA, lab: ArmAdmin) -> Any:
    def call(method: str, url: str, **kwargs: Any) -> requests.Response:
        target = url if url.startswith("https://") else arm_emulator.url + url
        return requests.request(
            method,
            target,
            headers={"Authorization": "Bearer t"},
            verify=str(lab_ca.ca_bundle),
            timeout=30,
            **kwargs,
        )

    return call


@pytest.fixture
def raw_put(raw: Any) -> Any:
    def put(name: str, priority: int) -> requests.Response:
        path = (
            f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
            f"Microsoft.Network/networkSecurityGroups/{NSG}/securityRules/{name}?api-version=2026-03-01"
        )
        body = {
            "properties": {
                "protocol": "Tcp",
                "sourceAddressPrefix": "203.0.113.10",
                "sourcePortRange": "*",
                "destinationAddressPrefix": "192.0.2.4",
                "destinationPortRange": "22",
                "access": "Allow",
                "priority": priority,
                "direction": "Inbound",
            }
        }
        response: requests.Response = raw("PUT", path, json=body)
        return response

    return put
