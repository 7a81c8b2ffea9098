"""Whole-NSG PUTs as a reconciler makes them: GET the NSG, replace its own rules, PUT it back with `If-Match`.

The body is what the SDK sends after a GET (the model from `network_security_groups.get`), or the GET's raw
JSON bytes as they came; both must be accepted with their read-only parts, and every rule the writer did not
change must read back exactly as before."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.rest import HttpRequest
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import SecurityRule

from lab.arm.admin import ArmAdmin
from tests.arm.conftest import NSG, RG, SUB, arm_code, arm_message, create, jit_rule

NSG_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkSecurityGroups/{NSG}"
FOREIGN_RULE = {
    "properties": {
        "description": "Corp bastions to the web tier (owned by the network team)",
        "protocol": "Tcp",
        "sourceAddressPrefixes": ["198.51.100.0/28", "198.51.100.64/27", "203.0.113.200"],
        "sourcePortRange": "*",
        "destinationAddressPrefix": "192.0.2.0/26",
        "destinationPortRanges": ["22", "3389-3390", "8443"],
        "access": "Allow",
        "priority": 300,
        "direction": "Inbound",
    }
}


def raw_get(network: NetworkManagementClient, nsg: str = NSG) -> tuple[dict[str, Any], str]:
    """The NSG's JSON and ETag header exactly as ARM answered, through the SDK's pipeline."""
    path = NSG_PATH.removesuffix(NSG) + nsg
    response = network.send_request(HttpRequest("GET", f"{path}?api-version=2026-03-01"))
    response.raise_for_status()
    return response.json(), response.headers["ETag"]


def rules_as_served(lab: ArmAdmin) -> dict[str, dict[str, Any]]:
    """Each rule's JSON without what every write may change (its etag, its transient provisioningState)."""
    out = {}
    for served in lab.nsg(NSG)["properties"]["securityRules"]:
        rule = {k: v for k, v in served.items() if k != "etag"}
        rule["properties"] = {k: v for k, v in served["properties"].items() if k != "provisioningState"}
        out[rule["name"]] = rule
    return out


def error_body(exc: HttpResponseError) -> Any:
    """The JSON body of the error response, as ARM sent it."""
    assert exc.response is not None
    return json.loads(exc.response.text())


@pytest.fixture
def decorated(network: NetworkManagementClient, lab: ArmAdmin) -> dict[str, Any]:
    """web-01-nsg with a foreign multi-prefix rule, tags and flushConnection set; its JSON afterwards."""
    network.security_rules.begin_create_or_update(
        RG, NSG, "corp-bastion-inbound", SecurityRule(FOREIGN_RULE), polling_interval=0
    ).result()
    body, etag = raw_get(network)
    body["tags"] = {"owner": "network-team", "cost-center": "4711"}
    body["properties"]["flushConnection"] = True
    network.network_security_groups.begin_create_or_update(
        RG, NSG, io.BytesIO(json.dumps(body).encode()), headers={"If-Match": etag}, polling_interval=0
    ).result()
    return lab.nsg(NSG)


def test_sdk_round_trip_keeps_every_unchanged_rule_and_property(
    network: NetworkManagementClient, lab: ArmAdmin, decorated: dict[str, Any]
) -> None:
    before = rules_as_served(lab)
    nsg = network.network_security_groups.get(RG, NSG)
    nsg.security_rules.append(jit_rule(name="jit-alice-22", priority=110))
    written = network.network_security_groups.begin_create_or_update(
        RG, NSG, nsg, headers={"If-Match": nsg.etag}, polling_interval=0
    ).result()
    assert written.etag != nsg.etag
    after = rules_as_served(lab)
    assert {k: v for k, v in after.items() if k != "jit-alice-22"} == before
    assert after["jit-alice-22"]["properties"]["sourceAddressPrefix"] == "203.0.113.10/32"
    served = lab.nsg(NSG)
    assert served["tags"] == {"owner": "network-team", "cost-center": "4711"}
    assert served["properties"]["flushConnection"] is True
    assert served["location"] == decorated["location"]
    assert served["properties"]["resourceGuid"] == decorated["properties"]["resourceGuid"]
    assert served["properties"]["provisioningState"] == "Succeeded"


def test_unchanged_rules_read_back_byte_for_byte_apart_from_the_etag(
    network: NetworkManagementClient, lab: ArmAdmin, decorated: dict[str, Any]
) -> None:
    untouched = {r["name"]: r for r in decorated["properties"]["securityRules"]}
    nsg = network.network_security_groups.get(RG, NSG)
    nsg.security_rules.append(jit_rule(name="jit-alice-22", priority=110))
    network.network_security_groups.begin_create_or_update(
        RG, NSG, nsg, headers={"If-Match": nsg.etag}, polling_interval=0
    ).result()
    now = {r["name"]: r for r in lab.nsg(NSG)["properties"]["securityRules"]}
    for name, rule in untouched.items():
        assert json.dumps({**now[name], "etag": None}) == json.dumps({**rule, "etag": None}), name
    # The foreign rule as ARM shows what its owner wrote: all four plural arrays, nothing else added.
    assert untouched["corp-bastion-inbound"]["properties"] == {
        "provisioningState": "Succeeded",
        **FOREIGN_RULE["properties"],
        "sourcePortRanges": [],
        "destinationAddressPrefixes": [],
    }


def test_raw_json_round_trip_with_every_read_only_property_is_accepted(
    network: NetworkManagementClient, lab: ArmAdmin, decorated: dict[str, Any]
) -> None:
    before = rules_as_served(lab)
    body, etag = raw_get(network)
    assert {
        "provisioningState",
        "resourceGuid",
        "defaultSecurityRules",
        "networkInterfaces",
    } <= set(body["properties"])
    assert {"etag", "id", "type"} <= set(body)
    mine = {**FOREIGN_RULE["properties"], "priority": 111, "sourceAddressPrefixes": ["203.0.113.7"]}
    body["properties"]["securityRules"].append({"name": "jit-bob-22", "properties": mine})
    poller = network.network_security_groups.begin_create_or_update(
        RG,
        NSG,
        io.BytesIO(json.dumps(body).encode()),
        headers={"If-Match": etag},
        content_type="application/json",
        polling_interval=0,
    )
    result = poller.result()
    assert "jit-bob-22" in [r.name for r in result.security_rules]
    after = rules_as_served(lab)
    assert {k: v for k, v in after.items() if k != "jit-bob-22"} == before
    served = lab.nsg(NSG)
    assert served["tags"] == decorated["tags"] and served["properties"]["flushConnection"] is True
    assert len(served["properties"]["defaultSecurityRules"]) == 6


def test_raw_json_round_trip_of_a_subnet_nsg_keeps_its_subnets(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    body, etag = raw_get(network, "app-subnet-nsg")
    assert body["properties"]["subnets"]
    body["properties"]["securityRules"].append(
        {"name": "jit-carol-22", "properties": {**FOREIGN_RULE["properties"], "priority": 111}}
    )
    network.network_security_groups.begin_create_or_update(
        RG,
        "app-subnet-nsg",
        io.BytesIO(json.dumps(body).encode()),
        headers={"If-Match": etag},
        polling_interval=0,
    ).result()
    after, _ = raw_get(network, "app-subnet-nsg")
    assert after["properties"]["subnets"] == body["properties"]["subnets"]
    assert [r["name"] for r in after["properties"]["securityRules"]] == [
        "deny-management-inbound",
        "jit-carol-22",
    ]


def test_a_stale_etag_is_412_with_nrps_recorded_body(network: NetworkManagementClient, lab: ArmAdmin) -> None:
    nsg = network.network_security_groups.get(RG, NSG)
    create(network, "jit-meanwhile", jit_rule())  # another writer: the NSG's etag moves on
    nsg.security_rules.append(jit_rule(name="jit-late", priority=111))
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_create_or_update(
            RG, NSG, nsg, headers={"If-Match": nsg.etag}, polling_interval=0
        )
    assert caught.value.status_code == 412
    current = lab.nsg(NSG)["etag"]
    assert error_body(caught.value) == {
        "error": {
            "code": "PreconditionFailed",
            "message": "Precondition failed.",
            "details": [
                {
                    "code": "PreconditionFailedEtagMismatch",
                    "message": f"Etag provided in if-match header {nsg.etag} does not match etag {current} "
                    f"of resource {NSG_PATH} in NRP data store.",
                }
            ],
        }
    }
    assert arm_code(caught.value) == "PreconditionFailed"
    assert "jit-late" not in [r["name"] for r in lab.nsg(NSG)["properties"]["securityRules"]]


@pytest.mark.parametrize("write", ["rule PUT", "rule DELETE", "NSG PUT"])
def test_every_accepted_write_gives_the_nsg_a_new_etag(
    network: NetworkManagementClient, lab: ArmAdmin, write: str
) -> None:
    create(network, "jit-there", jit_rule())
    nsg = network.network_security_groups.get(RG, NSG)
    if write == "rule PUT":
        create(network, "jit-other", jit_rule(priority=111))
    elif write == "rule DELETE":
        network.security_rules.begin_delete(RG, NSG, "jit-there", polling_interval=0).result()
    else:
        network.network_security_groups.begin_create_or_update(RG, NSG, nsg, polling_interval=0).result()
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_create_or_update(RG, NSG, nsg, headers={"If-Match": nsg.etag})
    assert caught.value.status_code == 412


def test_if_match_is_compared_as_nrp_quotes_it(network: NetworkManagementClient, lab: ArmAdmin) -> None:
    for spell in (lambda guid: guid, lambda guid: f'"{guid}"', lambda guid: f'W/"{guid}"'):
        body, etag = raw_get(network)
        given = spell(etag.removeprefix('W/"').removesuffix('"'))
        network.network_security_groups.begin_create_or_update(
            RG, NSG, io.BytesIO(json.dumps(body).encode()), headers={"If-Match": given}, polling_interval=0
        ).result()
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_create_or_update(
            RG, NSG, io.BytesIO(json.dumps(body).encode()), headers={"If-Match": "invalid"}
        )
    [detail] = error_body(caught.value)["error"]["details"]
    assert detail["message"].startswith(
        'Etag provided in if-match header W/"invalid" does not match etag W/"'
    )


def test_if_none_match_star_refuses_an_existing_nsg(network: NetworkManagementClient) -> None:
    nsg = network.network_security_groups.get(RG, NSG)
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_create_or_update(RG, NSG, nsg, headers={"If-None-Match": "*"})
    assert caught.value.status_code == 412


@pytest.mark.parametrize(
    ("rule", "code"),
    [
        (
            {"sourceAddressPrefixes": ["203.0.113.7", "2001:db8::7"]},
            "ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies",
        ),
        ({"sourceAddressPrefixes": []}, "SecurityRuleParametersMissing"),
        ({"priority": 4097}, "SecurityRuleInvalidPriority"),
    ],
)
def test_rules_inside_a_whole_nsg_put_are_validated_like_rule_puts(
    network: NetworkManagementClient, lab: ArmAdmin, rule: dict[str, Any], code: str
) -> None:
    before = lab.nsg(NSG)
    body, etag = raw_get(network)
    body["properties"]["securityRules"].append(
        {"name": "jit-bad", "properties": {**FOREIGN_RULE["properties"], "priority": 111, **rule}}
    )
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_create_or_update(
            RG, NSG, io.BytesIO(json.dumps(body).encode()), headers={"If-Match": etag}
        )
    assert caught.value.status_code == 400
    assert arm_code(caught.value) == code
    assert "jit-bad" in arm_message(caught.value) or code == "SecurityRuleInvalidPriority"
    assert lab.nsg(NSG) == before


def test_a_whole_nsg_put_is_a_write_like_any_other_while_an_operation_runs(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(lro_ms=60_000)
    network.security_rules.begin_create_or_update(RG, NSG, "jit-slow", jit_rule(), polling_interval=0)
    nsg = network.network_security_groups.get(RG, NSG)  # fresh etag: only the running operation is in the way
    with pytest.raises(ResourceExistsError) as caught:
        network.network_security_groups.begin_create_or_update(RG, NSG, nsg, headers={"If-Match": nsg.etag})
    assert arm_code(caught.value) == "AnotherOperationInProgress"
