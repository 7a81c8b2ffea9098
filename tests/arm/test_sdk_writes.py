"""Writing security rules through the SDK's long-running-operation pollers, and how ARM refuses bad writes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.mgmt.network import NetworkManagementClient

from lab.arm import ArmEmulator
from lab.arm.admin import ArmAdmin
from tests.arm.conftest import NSG, RG, SUB, arm_code, arm_message, create, jit_rule

RULE_WRITE = "Microsoft.Network/networkSecurityGroups/securityRules/write"
POLL = "Microsoft.Network/locations/operations/read"


def test_create_polls_the_operation_then_reads_the_rule_back_succeeded(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    etag_before = network.network_security_groups.get(RG, NSG).etag
    lab.clear_requests()
    rule = create(network, "jit-alice-22", jit_rule())
    assert rule.provisioning_state == "Succeeded"
    assert rule.source_address_prefix == "203.0.113.10/32"
    assert rule.etag is not None and rule.etag.startswith('W/"') and rule.etag != etag_before
    assert [(r["method"], r["status"], r["op"]) for r in lab.requests()] == [
        ("PUT", 201, RULE_WRITE),
        ("GET", 200, POLL),
        ("GET", 200, "Microsoft.Network/networkSecurityGroups/securityRules/read"),
    ]
    nsg = network.network_security_groups.get(RG, NSG)
    assert nsg.etag == rule.etag  # every rule carries its NSG's etag
    assert "jit-alice-22" in [r.name for r in nsg.security_rules]


def test_updating_an_existing_rule_answers_200(network: NetworkManagementClient, lab: ArmAdmin) -> None:
    create(network, "jit-alice-22", jit_rule())
    lab.clear_requests()
    updated = create(
        network,
        "jit-alice-22",
        jit_rule(source_address_prefixes=["203.0.113.10", "203.0.113.11"], source_address_prefix=None),
    )
    assert updated.source_address_prefixes == ["203.0.113.10", "203.0.113.11"]
    assert lab.requests()[0]["status"] == 200


def test_delete_polls_the_operation_and_the_rule_is_gone(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    create(network, "jit-alice-22", jit_rule())
    lab.clear_requests()
    assert network.security_rules.begin_delete(RG, NSG, "jit-alice-22", polling_interval=0).result() is None
    assert [(r["method"], r["status"]) for r in lab.requests()] == [("DELETE", 202), ("GET", 200)]
    assert "jit-alice-22" not in [r.name for r in network.security_rules.list(RG, NSG)]


def test_rule_stays_updating_until_the_operation_finishes(
    network: NetworkManagementClient, lab: ArmAdmin, arm_emulator: ArmEmulator
) -> None:
    lab.set_knobs(lro_ms=60_000)
    poller = network.security_rules.begin_create_or_update(
        RG, NSG, "jit-slow", jit_rule(), polling_interval=0
    )
    assert poller.status() == "InProgress"
    assert network.security_rules.get(RG, NSG, "jit-slow").provisioning_state == "Updating"
    assert network.network_security_groups.get(RG, NSG).provisioning_state == "Updating"
    lab.set_knobs(lro_ms=0)  # a later write would still be refused: the operation keeps its deadline
    with pytest.raises(ResourceExistsError):
        create(network, "jit-other", jit_rule(priority=111))


def test_second_write_while_an_operation_runs_is_refused_with_another_operation_in_progress(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=60_000)
    network.security_rules.begin_create_or_update(RG, NSG, "jit-first", jit_rule(), polling_interval=0)
    with pytest.raises(ResourceExistsError) as caught:
        network.security_rules.begin_create_or_update(RG, NSG, "jit-second", jit_rule(priority=111))
    assert caught.value.status_code == 409
    assert arm_code(caught.value) == "AnotherOperationInProgress"
    assert "/providers/Microsoft.Network/locations/westeurope/operations/" in arm_message(caught.value)
    # No Retry-After on the refusal, so azure-core does not retry it behind the broker's back.
    assert lab.count(RULE_WRITE, status=409) == 1
    # Other NSGs are not blocked.
    lab.set_knobs(lro_ms=0)
    create(network, "jit-db", jit_rule(destination_address_prefix="192.0.2.21"), nsg="db-01-nsg")


def test_concurrent_writers_on_one_nsg_get_exactly_one_acceptance(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=60_000)
    outcomes: list[str] = []
    start = threading.Barrier(6)

    def write(i: int) -> None:
        start.wait()
        try:
            network.security_rules.begin_create_or_update(RG, NSG, f"jit-{i}", jit_rule(priority=120 + i))
            outcomes.append("accepted")
        except ResourceExistsError as exc:
            outcomes.append(arm_code(exc))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["AnotherOperationInProgress"] * 5 + ["accepted"]


def test_same_priority_and_direction_is_a_security_rule_conflict(network: NetworkManagementClient) -> None:
    with pytest.raises(HttpResponseError) as caught:
        create(network, "jit-clash", jit_rule(priority=200))  # allow-https-inbound holds 200 Inbound
    assert caught.value.status_code == 400
    assert arm_code(caught.value) == "SecurityRuleConflict"
    assert "allow-https-inbound conflicts with rule" in arm_message(caught.value)
    assert create(network, "jit-out", jit_rule(priority=200, direction="Outbound")).priority == 200


@pytest.mark.parametrize(
    ("name", "overrides", "code"),
    [
        ("jit-low", {"priority": 99}, "SecurityRuleInvalidPriority"),
        ("jit-high", {"priority": 4097}, "SecurityRuleInvalidPriority"),
        ("-bad-name", {}, "InvalidResourceName"),
        ("bad-name.", {}, "InvalidResourceName"),
        ("x" * 81, {}, "InvalidResourceName"),
        ("jit-hostbits", {"source_address_prefix": "203.0.113.10/24"}, "SecurityRuleInvalidAddressPrefix"),
        ("jit-any", {"source_address_prefix": "any"}, "SecurityRuleInvalidAddressPrefix"),
        ("jit-v6-32", {"source_address_prefix": "2001:db8::1/32"}, "SecurityRuleInvalidAddressPrefix"),
        ("jit-port", {"destination_port_range": "70000"}, "SecurityRuleInvalidPortRange"),
        ("jit-range", {"destination_port_range": "30-20"}, "SecurityRuleInvalidPortRange"),
        (
            "jit-tag-list",
            {"source_address_prefix": None, "source_address_prefixes": ["Internet", "203.0.113.10"]},
            "SecurityRuleParameterContainsUnsupportedValue",
        ),
        (
            "jit-star-list",
            {"source_address_prefix": None, "source_address_prefixes": ["*"]},
            "SecurityRuleParameterContainsUnsupportedValue",
        ),
        (
            "jit-mixed",
            {"source_address_prefix": None, "source_address_prefixes": ["203.0.113.10", "2001:db8::10"]},
            "ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies",
        ),
        (
            "jit-mixed-sides",  # an IPv6 caller to an IPv4 destination
            {"source_address_prefix": "2001:db8::10"},
            "ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies",
        ),
        ("jit-no-source", {"source_address_prefix": None}, "SecurityRuleParametersMissing"),
        (
            "jit-empty-sources",
            {"source_address_prefix": None, "source_address_prefixes": []},
            "SecurityRuleParametersMissing",
        ),
        ("jit-no-destination", {"destination_address_prefix": None}, "SecurityRuleParametersMissing"),
        ("jit-proto", {"protocol": "Gre"}, "InvalidRequestFormat"),
        ("jit-long", {"description": "d" * 141}, "InvalidRequestFormat"),
    ],
)
def test_invalid_rules_are_refused_with_arms_error_code(
    network: NetworkManagementClient, lab: ArmAdmin, name: str, overrides: dict[str, Any], code: str
) -> None:
    with pytest.raises(HttpResponseError) as caught:
        create(network, name, jit_rule(**overrides))
    assert caught.value.status_code == 400
    assert arm_code(caught.value) == code
    assert [r.name for r in network.security_rules.list(RG, NSG)] == [
        "allow-https-inbound",
        "deny-management-inbound",
    ]


def test_prefix_and_port_forms_arm_accepts(network: NetworkManagementClient) -> None:
    rule = create(
        network,
        "jit-forms",
        jit_rule(
            source_address_prefix=None,
            source_address_prefixes=["203.0.113.0/28", "203.0.113.64"],
            destination_port_range=None,
            destination_port_ranges=["22", "3389-3390"],
        ),
    )
    assert rule.source_address_prefixes == ["203.0.113.0/28", "203.0.113.64"]
    assert rule.destination_port_ranges == ["22", "3389-3390"]
    assert rule.source_address_prefix is None
    tagged = create(network, "jit-tag", jit_rule(priority=111, source_address_prefix="Sql.WestEurope"))
    assert tagged.source_address_prefix == "Sql.WestEurope"
    v6 = create(
        network,
        "jit-v6",
        jit_rule(
            priority=112,
            source_address_prefix=None,
            source_address_prefixes=["2001:db8:1::/48", "2001:db8:2::7"],
            destination_address_prefix="2001:db8:0:1::4",
        ),
    )
    assert v6.destination_address_prefix == "2001:db8:0:1::4"
    # Service tags and '*' belong to no address family.
    anywhere = create(
        network,
        "jit-v6-any",
        jit_rule(priority=113, source_address_prefix="2001:db8::9", destination_address_prefix="*"),
    )
    assert anywhere.provisioning_state == "Succeeded"


def test_a_rule_may_name_its_source_by_application_security_group(network: NetworkManagementClient) -> None:
    asg = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/applicationSecurityGroups/bh"
    rule = create(
        network,
        "jit-asg",
        jit_rule(source_address_prefix=None, source_application_security_groups=[{"id": asg}]),
    )
    assert rule.source_application_security_groups[0].id == asg


def test_a_canceled_operation_raises_and_leaves_the_nsg_as_it_was(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    before = [r.name for r in network.security_rules.list(RG, NSG)]
    lab.add_fault(
        method="PUT",
        match="/securityRules/jit-doomed",
        lro_status="Canceled",
        code="CanceledAndSupersededDueToAnotherOperation",
    )
    with pytest.raises(HttpResponseError) as caught:
        create(network, "jit-doomed", jit_rule())
    assert arm_code(caught.value) == "Canceled"
    assert "CanceledAndSupersededDueToAnotherOperation" in str(caught.value)
    assert [r.name for r in network.security_rules.list(RG, NSG)] == before
    assert (
        create(network, "jit-doomed", jit_rule()).provisioning_state == "Succeeded"
    )  # the fault was used up


def test_a_failed_delete_keeps_the_rule(network: NetworkManagementClient, lab: ArmAdmin) -> None:
    create(network, "jit-keep", jit_rule())
    lab.add_fault(method="DELETE", match="jit-keep", lro_status="Failed", code="InternalServerError")
    with pytest.raises(HttpResponseError) as caught:
        network.security_rules.begin_delete(RG, NSG, "jit-keep", polling_interval=0).result()
    assert arm_code(caught.value) == "InternalServerError"
    assert network.security_rules.get(RG, NSG, "jit-keep").provisioning_state == "Succeeded"


def test_an_nsg_holds_at_most_1000_rules(network: NetworkManagementClient) -> None:
    nsg = network.network_security_groups.get(RG, "legacy-01-nsg")
    nsg.security_rules = [
        jit_rule(priority=100 + i, name=f"r{i}", destination_port_range=str(1000 + i)) for i in range(1001)
    ]
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_create_or_update(
            RG, "legacy-01-nsg", nsg, polling_interval=0
        ).result()
    assert arm_code(caught.value) == "SecurityRuleCountLimitReached"
    nsg.security_rules = nsg.security_rules[:1000]
    result = network.network_security_groups.begin_create_or_update(
        RG, "legacy-01-nsg", nsg, polling_interval=0
    )
    assert len(result.result().security_rules) == 1000


def test_subscribers_hear_every_nsg_change_with_its_full_json(
    network: NetworkManagementClient, arm_emulator: ArmEmulator, lab: ArmAdmin
) -> None:
    seen: list[tuple[str, str, list[tuple[str, str]]]] = []
    arm_emulator.subscribe(
        lambda nsg_id, body: seen.append(
            (
                nsg_id,
                body["properties"]["provisioningState"],
                [
                    (r["name"], r["properties"]["provisioningState"])
                    for r in body["properties"]["securityRules"]
                ],
            )
        )
    )
    create(network, "jit-heard", jit_rule())
    network.security_rules.begin_delete(RG, NSG, "jit-heard", polling_interval=0).result()
    mine = [s for s in seen if s[0].endswith(f"/networkSecurityGroups/{NSG}")]
    assert [(state, [r for r in rules if r[0] == "jit-heard"]) for _, state, rules in mine] == [
        ("Updating", [("jit-heard", "Updating")]),
        ("Succeeded", [("jit-heard", "Succeeded")]),
        ("Updating", [("jit-heard", "Deleting")]),
        ("Succeeded", []),
    ]


def test_reset_restores_the_scenarios_nsgs(network: NetworkManagementClient, lab: ArmAdmin) -> None:
    original = lab.nsg(NSG)
    create(network, "jit-temp", jit_rule())
    network.security_rules.begin_delete(RG, NSG, "deny-management-inbound", polling_interval=0).result()
    lab.set_knobs(lro_ms=5)
    lab.reset()
    restored = lab.nsg(NSG)

    def without_etags(nsg: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "etag"} for r in nsg["properties"]["securityRules"]]

    assert without_etags(restored) == without_etags(original)
    assert lab.knobs()["lro_ms"] == 0
    assert lab.requests() == []
