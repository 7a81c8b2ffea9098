"""The emulator's JSON against the shapes of Azure's own REST API examples.

Each table copies the facts (keys and JSON types) of one example from Azure/azure-rest-api-specs:
`network/…/stable/2024-05-01/examples/{NetworkSecurityGroupGet, NetworkSecurityGroupRuleCreate,
NetworkInterfaceGet, PublicIpAddressGet, SubnetGet}.json` and
`compute/…/ComputeRP/stable/2024-07-01/examples/virtualMachineExamples/VirtualMachine_Get[_InstanceView].json`,
plus what the recorded Azure CLI conversation (reference §2.3) shows beyond them: weak etags, rule `type`, and
all four plural arrays. A shape is a dict of key -> type, nested shape, or `[shape]` for a list of them; the
emulator may add keys, never drop or retype one.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from lab.arm import ArmEmulator
from lab.arm.admin import ArmAdmin
from lab.tls import LabCA
from tests.arm.conftest import RG, SUB

REF = {"id": str}
RULE_PROPERTIES = {
    "provisioningState": str,
    "protocol": str,
    "sourcePortRange": str,
    "destinationPortRange": str,
    "sourceAddressPrefix": str,
    "destinationAddressPrefix": str,
    "access": str,
    "priority": int,
    "direction": str,
}
RULE = {"name": str, "id": str, "properties": RULE_PROPERTIES}
# Beyond the spec example, from the recorded ARM conversation.
RULE_AS_SERVED: dict[str, Any] = {
    **RULE,
    "etag": str,
    "type": str,
    "properties": {
        **RULE_PROPERTIES,
        "sourcePortRanges": list,
        "destinationPortRanges": list,
        "sourceAddressPrefixes": list,
        "destinationAddressPrefixes": list,
    },
}
NSG_GET = {
    "name": str,
    "id": str,
    "type": str,
    "location": str,
    "etag": str,
    "properties": {
        "provisioningState": str,
        # deny-management-inbound lists its ports in destinationPortRanges, so the singular is absent there.
        "securityRules": [
            {
                **RULE_AS_SERVED,
                "properties": {
                    k: v for k, v in RULE_AS_SERVED["properties"].items() if k != "destinationPortRange"
                },
            }
        ],
        "defaultSecurityRules": [{**RULE, "properties": {**RULE_PROPERTIES, "description": str}}],
        "resourceGuid": str,
        "flushConnection": bool,
        "networkInterfaces": [REF],
    },
}
NIC_GET = {
    "name": str,
    "id": str,
    "location": str,
    "type": str,
    "properties": {
        "provisioningState": str,
        "ipConfigurations": [
            {
                "name": str,
                "id": str,
                "properties": {
                    "provisioningState": str,
                    "privateIPAddress": str,
                    "privateIPAllocationMethod": str,
                    "publicIPAddress": REF,
                    "subnet": REF,
                    "primary": bool,
                    "privateIPAddressVersion": str,
                },
            }
        ],
        "dnsSettings": {"dnsServers": list, "appliedDnsServers": list, "internalDomainNameSuffix": str},
        "macAddress": str,
        "enableAcceleratedNetworking": bool,
        "disableTcpStateTracking": bool,
        "enableIPForwarding": bool,
        "networkSecurityGroup": REF,
        "primary": bool,
        "virtualMachine": REF,
        "vnetEncryptionSupported": bool,
    },
}
PUBLIC_IP_GET = {
    "name": str,
    "id": str,
    "location": str,
    "type": str,
    "properties": {
        "provisioningState": str,
        "publicIPAddressVersion": str,
        "publicIPAllocationMethod": str,
        "idleTimeoutInMinutes": int,
        "ipConfiguration": REF,
        "ipTags": list,
        "ipAddress": str,
        "dnsSettings": {"domainNameLabel": str, "fqdn": str},
    },
}
SUBNET_GET = {"id": str, "name": str, "properties": {"addressPrefix": str, "provisioningState": str}}
VM_GET = {
    "name": str,
    "id": str,
    "type": str,
    "location": str,
    "tags": dict,
    "etag": str,
    "properties": {
        "vmId": str,
        "hardwareProfile": {"vmSize": str},
        "storageProfile": {
            "imageReference": {"publisher": str, "offer": str, "sku": str, "version": str},
            "osDisk": {
                "osType": str,
                "name": str,
                "createOption": str,
                "caching": str,
                "managedDisk": {"storageAccountType": str, "id": str},
                "diskSizeGB": int,
            },
            "dataDisks": list,
        },
        "osProfile": {"computerName": str, "adminUsername": str, "secrets": list},
        "networkProfile": {"networkInterfaces": [REF]},
        "diagnosticsProfile": {"bootDiagnostics": dict},
        "provisioningState": str,
        "timeCreated": str,
    },
}
STATUS = {"code": str, "level": str, "displayStatus": str}
INSTANCE_VIEW = {"statuses": [STATUS], "disks": [{"name": str, "statuses": [STATUS]}], "vmAgent": dict}

BASE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers"
API = "?api-version=2026-03-01"  # what azure-mgmt-network sends
COMPUTE_API = "?api-version=2026-04-01"  # what azure-mgmt-compute sends for virtual machines


def assert_shape(actual: Any, shape: Any, where: str = "$") -> None:
    """Every key of `shape` is in `actual` with the same JSON type (recursively)."""
    if isinstance(shape, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, inner in shape.items():
            assert key in actual, f"{where}: missing {key!r} (has {sorted(actual)})"
            assert_shape(actual[key], inner, f"{where}.{key}")
    elif isinstance(shape, list):
        assert isinstance(actual, list) and actual, f"{where}: expected a non-empty list"
        for index, item in enumerate(actual):
            assert_shape(item, shape[0], f"{where}[{index}]")
    else:
        assert isinstance(actual, shape) and not (shape is int and isinstance(actual, bool)), (
            f"{where}: expected {shape.__name__}, got {actual!r}"
        )


@pytest.fixture
def get(arm_emulator: ArmEmulator, lab_ca: LabCA, lab: ArmAdmin) -> Any:
    def fetch(path: str, method: str = "GET", **kwargs: Any) -> requests.Response:
        response = requests.request(
            method,
            f"{arm_emulator.url}{path}",
            headers={"Authorization": "Bearer t"},
            verify=str(lab_ca.ca_bundle),
            timeout=30,
            **kwargs,
        )
        assert response.status_code < 300, response.text
        return response

    return fetch


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        (f"{BASE}/Microsoft.Network/networkSecurityGroups/web-01-nsg", NSG_GET),
        (
            f"{BASE}/Microsoft.Network/networkSecurityGroups/web-01-nsg/securityRules/allow-https-inbound",
            RULE_AS_SERVED,
        ),
        (f"{BASE}/Microsoft.Network/networkInterfaces/web-01-nic", NIC_GET),
        (f"{BASE}/Microsoft.Network/publicIPAddresses/web-01-pip", PUBLIC_IP_GET),
        (f"{BASE}/Microsoft.Network/virtualNetworks/vnet-demo/subnets/web-subnet", SUBNET_GET),
        (f"{BASE}/Microsoft.Compute/virtualMachines/win-01", VM_GET),
        (f"{BASE}/Microsoft.Compute/virtualMachines/web-01/instanceView", INSTANCE_VIEW),
    ],
)
def test_get_matches_the_spec_example_shape(get: Any, path: str, shape: dict[str, Any]) -> None:
    assert_shape(get(path + (COMPUTE_API if "Microsoft.Compute" in path else API)).json(), shape)


def test_rule_create_response_matches_the_spec_example_shape(get: Any) -> None:
    # The request body of NetworkSecurityGroupRuleCreate.json, with documentation addresses.
    body = {
        "properties": {
            "protocol": "*",
            "sourceAddressPrefix": "192.0.2.0/24",
            "destinationAddressPrefix": "198.51.100.0/24",
            "access": "Deny",
            "destinationPortRange": "8080",
            "sourcePortRange": "*",
            "priority": 100,
            "direction": "Outbound",
        }
    }
    response = get(
        f"{BASE}/Microsoft.Network/networkSecurityGroups/web-01-nsg/securityRules/rule1{API}",
        "PUT",
        json=body,
    )
    assert response.status_code in (200, 201)
    assert_shape(response.json(), RULE_AS_SERVED)
    assert {k: response.json()["properties"][k] for k in body["properties"]} == body["properties"]


def test_vm_with_expanded_instance_view_carries_it_inside_properties(get: Any) -> None:
    vm = get(f"{BASE}/Microsoft.Compute/virtualMachines/web-01{COMPUTE_API}&$expand=instanceView").json()
    assert_shape(vm, VM_GET)
    assert_shape(vm["properties"]["instanceView"], INSTANCE_VIEW)
    assert "instanceView" not in vm


def test_linux_vm_has_linux_configuration_and_nic_references_with_primary(get: Any) -> None:
    vm = get(f"{BASE}/Microsoft.Compute/virtualMachines/web-01{COMPUTE_API}").json()
    assert_shape(
        vm["properties"]["osProfile"], {"linuxConfiguration": {"disablePasswordAuthentication": bool}}
    )
    assert_shape(
        vm["properties"]["networkProfile"],
        {"networkInterfaces": [{"id": str, "properties": {"primary": bool}}]},
    )


def test_list_responses_have_the_value_and_next_link_shape(get: Any, lab: ArmAdmin) -> None:
    lab.set_knobs(page_size=4)
    first = get(f"{BASE}/Microsoft.Compute/virtualMachines{COMPUTE_API}").json()
    assert_shape(first, {"value": [VM_GET], "nextLink": str})
    assert len(first["value"]) == 4
    second = get(first["nextLink"].removeprefix(lab.url)).json()
    assert len(second["value"]) == 4
    last = get(second["nextLink"].removeprefix(lab.url)).json()
    assert set(last) == {"value"}
    assert len(last["value"]) == 2  # the demo resource group's ten VMs in pages of four


def test_operation_status_is_the_bare_status_document(get: Any) -> None:
    body = {
        "properties": {
            **{k: "*" for k in ("protocol", "sourcePortRange", "destinationPortRange")},
            "sourceAddressPrefix": "*",
            "destinationAddressPrefix": "*",
            "access": "Deny",
            "priority": 150,
            "direction": "Outbound",
        }
    }
    put = get(
        f"{BASE}/Microsoft.Network/networkSecurityGroups/web-01-nsg/securityRules/r2{API}", "PUT", json=body
    )
    status_url = put.headers["Azure-AsyncOperation"]
    status = get(status_url[status_url.index("/subscriptions/") :]).json()
    assert status == {"status": "Succeeded"}
