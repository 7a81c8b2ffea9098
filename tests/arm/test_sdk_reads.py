"""Reading the demo world through the real azure-mgmt-compute / azure-mgmt-network clients."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient

from lab.arm.admin import ArmAdmin
from tests.arm.conftest import RG, SUB, arm_code


def _name(resource_id: str) -> str:
    return resource_id.rsplit("/", 1)[-1]


def _subnet_parts(subnet_id: str) -> tuple[str, str, str]:
    parts = subnet_id.split("/")
    return parts[4], parts[8], parts[10]


def test_vm_to_nic_to_public_ip_to_subnet_to_nsg_resolves_web_01(
    compute: ComputeManagementClient, network: NetworkManagementClient
) -> None:
    vm = compute.virtual_machines.get(RG, "web-01", expand="instanceView")
    assert vm.tags == {"jit-ports": "22"}
    assert vm.storage_profile.os_disk.os_type == "Linux"
    assert vm.os_profile.admin_username == "azureuser"
    assert [s.code for s in vm.instance_view.statuses] == [
        "ProvisioningState/succeeded",
        "PowerState/running",
    ]
    nic_ref = vm.network_profile.network_interfaces[0]
    assert nic_ref.primary is True

    nic = network.network_interfaces.get(RG, _name(nic_ref.id))
    assert _name(nic.network_security_group.id) == "web-01-nsg"
    ipc = nic.ip_configurations[0]
    assert ipc.private_ip_address == "192.0.2.4"
    assert ipc.private_ip_address_version == "IPv4"

    pip = network.public_ip_addresses.get(RG, _name(ipc.public_ip_address.id))
    assert pip.ip_address == "198.51.100.10"
    assert pip.dns_settings.fqdn == "web-01.westeurope.cloudapp.azure.com"

    rg, vnet, subnet_name = _subnet_parts(ipc.subnet.id)
    subnet = network.subnets.get(rg, vnet, subnet_name)
    assert subnet.network_security_group is None  # web-01 is guarded by its NIC NSG only

    nsg = network.network_security_groups.get(RG, "web-01-nsg")
    assert [r.name for r in nsg.security_rules] == ["allow-https-inbound", "deny-management-inbound"]
    assert [i.id for i in nsg.network_interfaces] == [nic.id]


def test_windows_vm_is_guarded_by_its_subnet_nsg_only(
    compute: ComputeManagementClient, network: NetworkManagementClient
) -> None:
    vm = compute.virtual_machines.get(RG, "win-01")
    assert vm.storage_profile.os_disk.os_type == "Windows"
    assert vm.os_profile.windows_configuration is not None
    nic = network.network_interfaces.get(RG, _name(vm.network_profile.network_interfaces[0].id))
    assert nic.network_security_group is None
    subnet = network.subnets.get(*_subnet_parts(nic.ip_configurations[0].subnet.id))
    assert _name(subnet.network_security_group.id) == "app-subnet-nsg"
    nsg = network.network_security_groups.get(RG, "app-subnet-nsg")
    assert [s.id for s in nsg.subnets] == [subnet.id]


def test_db_01_has_both_nic_and_subnet_nsg_and_its_policy_tags(
    compute: ComputeManagementClient, network: NetworkManagementClient
) -> None:
    vm = compute.virtual_machines.get(RG, "db-01")
    assert vm.tags == {"jit-ports": "22,5432", "jit-max-duration": "PT30M"}
    nic = network.network_interfaces.get(RG, "db-01-nic")
    subnet = network.subnets.get(*_subnet_parts(nic.ip_configurations[0].subnet.id))
    assert _name(nic.network_security_group.id) == "db-01-nsg"
    assert _name(subnet.network_security_group.id) == "app-subnet-nsg"
    assert network.network_security_groups.get(RG, "db-01-nsg").flush_connection is True


def test_dual_stack_vm_has_ipv4_and_ipv6_private_and_public_addresses(
    network: NetworkManagementClient,
) -> None:
    nic = network.network_interfaces.get(RG, "v6-01-nic")
    versions = {c.private_ip_address_version: c.private_ip_address for c in nic.ip_configurations}
    assert versions == {"IPv4": "192.0.2.52", "IPv6": "2001:db8:0:1::4"}
    v6_pip = network.public_ip_addresses.get(RG, _name(nic.ip_configurations[1].public_ip_address.id))
    assert v6_pip.public_ip_address_version == "IPv6"
    assert v6_pip.ip_address == "2001:db8:ffff::16"


def test_bare_vm_has_no_nsg_anywhere(network: NetworkManagementClient) -> None:
    nic = network.network_interfaces.get(RG, "bare-01-nic")
    assert nic.network_security_group is None
    assert (
        network.subnets.get(*_subnet_parts(nic.ip_configurations[0].subnet.id)).network_security_group is None
    )


def test_deallocated_vm_reports_its_power_state_and_loses_its_dynamic_public_ip(
    compute: ComputeManagementClient, network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    view = compute.virtual_machines.instance_view(RG, "stopped-01")
    assert view.statuses is not None
    assert view.statuses[1].code == "PowerState/deallocated"
    assert view.statuses[1].display_status == "VM deallocated"
    assert network.public_ip_addresses.get(RG, "stopped-01-pip").ip_address is None

    lab.set_power("stopped-01", "running")
    statuses = compute.virtual_machines.instance_view(RG, "stopped-01").statuses
    assert statuses is not None and statuses[1].code == "PowerState/running"
    assert network.public_ip_addresses.get(RG, "stopped-01-pip").ip_address == "198.51.100.13"


def test_vm_lists_follow_next_links_by_resource_group_and_subscription(
    compute: ComputeManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(page_size=3)
    in_rg = [str(vm.name) for vm in compute.virtual_machines.list(RG)]
    everywhere = [str(vm.name) for vm in compute.virtual_machines.list_all()]
    assert len(in_rg) == 10
    assert "far-01" not in in_rg
    assert sorted(everywhere) == sorted([*in_rg, "far-01"])
    list_calls = [r for r in lab.requests() if r["path"].endswith("/virtualMachines")]
    assert len(list_calls) == 4 + 4  # ceil(10/3) pages in the RG, ceil(11/3) in the subscription


def test_nsg_lists_cover_resource_group_and_subscription(network: NetworkManagementClient) -> None:
    in_rg = {n.name for n in network.network_security_groups.list(RG)}
    everywhere = {n.name for n in network.network_security_groups.list_all()}
    assert "outside-subnet-nsg" not in in_rg
    assert everywhere == in_rg | {"outside-subnet-nsg"}


def test_every_nsg_carries_azures_six_default_rules(network: NetworkManagementClient) -> None:
    nsg = network.network_security_groups.get(RG, "web-01-nsg")
    defaults = {(r.name, r.priority, r.direction, r.access) for r in nsg.default_security_rules}
    assert defaults == {
        ("AllowVnetInBound", 65000, "Inbound", "Allow"),
        ("AllowAzureLoadBalancerInBound", 65001, "Inbound", "Allow"),
        ("DenyAllInBound", 65500, "Inbound", "Deny"),
        ("AllowVnetOutBound", 65000, "Outbound", "Allow"),
        ("AllowInternetOutBound", 65001, "Outbound", "Allow"),
        ("DenyAllOutBound", 65500, "Outbound", "Deny"),
    }
    assert network.default_security_rules.get(RG, "web-01-nsg", "DenyAllInBound").priority == 65500


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c, n: c.virtual_machines.get(RG, "nope-01"), "ResourceNotFound"),
        (lambda c, n: n.network_interfaces.get(RG, "nope-nic"), "ResourceNotFound"),
        (lambda c, n: n.public_ip_addresses.get(RG, "nope-pip"), "ResourceNotFound"),
        (lambda c, n: n.network_security_groups.get(RG, "nope-nsg"), "ResourceNotFound"),
        (lambda c, n: n.security_rules.get(RG, "web-01-nsg", "nope-rule"), "NotFound"),
        (lambda c, n: n.subnets.get(RG, "vnet-demo", "nope-subnet"), "NotFound"),
        (lambda c, n: c.virtual_machines.get("rg-nope", "web-01"), "ResourceGroupNotFound"),
    ],
)
def test_unknown_resources_raise_resource_not_found_with_arms_code(
    compute: ComputeManagementClient, network: NetworkManagementClient, call, code: str
) -> None:
    with pytest.raises(ResourceNotFoundError) as caught:
        call(compute, network)
    assert caught.value.status_code == 404
    assert arm_code(caught.value) == code


def test_request_log_names_the_rbac_action_of_each_read(
    compute: ComputeManagementClient, network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    compute.virtual_machines.get(RG, "web-01")
    compute.virtual_machines.instance_view(RG, "web-01")
    network.network_interfaces.get(RG, "web-01-nic")
    network.public_ip_addresses.get(RG, "web-01-pip")
    network.subnets.get(RG, "vnet-demo", "web-subnet")
    network.network_security_groups.get(RG, "web-01-nsg")
    network.security_rules.list(RG, "web-01-nsg").next()
    assert [r["op"] for r in lab.requests()] == [
        "Microsoft.Compute/virtualMachines/read",
        "Microsoft.Compute/virtualMachines/instanceView/read",
        "Microsoft.Network/networkInterfaces/read",
        "Microsoft.Network/publicIPAddresses/read",
        "Microsoft.Network/virtualNetworks/subnets/read",
        "Microsoft.Network/networkSecurityGroups/read",
        "Microsoft.Network/networkSecurityGroups/securityRules/read",
    ]
    assert all(r["status"] == 200 and r["query"].startswith("api-version=") for r in lab.requests())
    assert lab.count("Microsoft.Compute/virtualMachines/read") == 1
    assert SUB in lab.requests()[0]["path"]
