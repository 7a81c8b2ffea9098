"""The demo scenario holds every situation jit-broker must handle, in documentation address ranges only."""

from __future__ import annotations

import ipaddress

import pytest

from lab.scenario import Scenario, load_scenario, parse_azure

DOC_V4 = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
DOC_V6 = ipaddress.ip_network("2001:db8::/32")


def _in_doc_ranges(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip in DOC_V6 if ip.version == 6 else any(ip in n for n in DOC_V4)


@pytest.fixture(scope="module")
def world() -> Scenario:
    return load_scenario()


def _nsgs(world: Scenario, vm_name: str) -> tuple[str | None, tuple[str | None, ...]]:
    place = world.azure.vm(vm_name)
    rg = next(
        r for s in world.azure.subscriptions for r in s.resource_groups if r.name == place.resource_group
    )
    subnets = {f"{v.name}/{s.name}": s.nsg for v in rg.vnets for s in v.subnets}
    nic = place.vm.nics[0]
    return nic.nsg, tuple(subnets[c.subnet] for c in nic.ip_configs)


@pytest.mark.parametrize(
    ("vm", "nic_nsg", "subnet_nsg"),
    [
        ("web-01", "web-01-nsg", None),
        ("win-01", None, "app-subnet-nsg"),
        ("db-01", "db-01-nsg", "app-subnet-nsg"),
        ("bare-01", None, None),
        ("far-01", None, "outside-subnet-nsg"),
    ],
)
def test_where_each_vm_is_filtered(
    world: Scenario, vm: str, nic_nsg: str | None, subnet_nsg: str | None
) -> None:
    nic, subnets = _nsgs(world, vm)
    assert nic == nic_nsg
    assert set(subnets) == {subnet_nsg}


def test_policy_tags_power_and_os_of_the_demo_vms(world: Scenario) -> None:
    vms = {p.vm.name: p for p in world.azure.vms()}
    assert vms["web-01"].vm.admin_username == "azureuser"
    assert vms["win-01"].vm.os == "Windows" and vms["win-01"].vm.tags == {"jit-ports": "3389"}
    assert vms["db-01"].vm.tags == {"jit-ports": "22,5432", "jit-max-duration": "PT30M"}
    assert vms["stopped-01"].vm.power_state == "deallocated" and "jit-ports" in vms["stopped-01"].vm.tags
    assert "jit-ports" not in vms["legacy-01"].vm.tags
    assert vms["locked-01"].vm.tags["jit-required-role"] == "JIT.Admin"
    assert vms["far-01"].resource_group == "rg-outside"
    assert {p.location for p in vms.values()} == {"westeurope"}
    assert {p.subscription for p in vms.values()} == {"00000000-0000-4000-8000-0000000000a1"}


def test_open_and_locked_vms_carry_their_pre_existing_rules(world: Scenario) -> None:
    rules = {n.name: n.rules for s in world.azure.subscriptions for r in s.resource_groups for n in r.nsgs}
    broad = next(r for r in rules["open-01-nsg"] if r["access"] == "Allow")
    assert (broad["priority"], broad["sourceAddressPrefix"], broad["destinationPortRange"]) == (
        300,
        "Internet",
        "22",
    )
    deny = next(r for r in rules["locked-01-nsg"] if r["priority"] == 105)
    assert (deny["access"], deny["destinationPortRange"]) == ("Deny", "22")
    for name, nsg_rules in rules.items():
        assert any(r["name"] == "deny-management-inbound" and r["priority"] == 4000 for r in nsg_rules), name


def test_dual_stack_vm_and_shared_subnets(world: Scenario) -> None:
    v6 = world.azure.vm("v6-01").vm
    assert {ipaddress.ip_address(a).version for a in v6.private_ips} == {4, 6}
    assert any(c.public_ip and c.public_ip.version == "IPv6" for c in v6.nics[0].ip_configs)
    subnets = [c.subnet for p in world.azure.vms() for n in p.vm.nics for c in n.ip_configs]
    assert subnets.count("vnet-demo/app-subnet") == 3


def test_every_address_is_in_a_documentation_range(world: Scenario) -> None:
    for place in world.azure.vms():
        for nic in place.vm.nics:
            for ipc in nic.ip_configs:
                assert _in_doc_ranges(ipc.private_ip), ipc
                if ipc.public_ip and ipc.public_ip.address:
                    assert _in_doc_ranges(ipc.public_ip.address), ipc.public_ip
    for user in world.users:
        assert user.address is None or _in_doc_ranges(user.address)


def test_a_dangling_reference_is_refused_when_the_scenario_loads() -> None:
    raw = {
        "subscriptions": [
            {
                "id": "s",
                "resource_groups": [
                    {
                        "name": "rg",
                        "vnets": [
                            {"name": "v", "subnets": [{"name": "s", "address_prefixes": ["192.0.2.0/28"]}]}
                        ],
                        "vms": [
                            {
                                "name": "vm",
                                "nics": [
                                    {
                                        "name": "n",
                                        "nsg": "missing",
                                        "ip_configs": [{"subnet": "v/s", "private_ip": "192.0.2.4"}],
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    with pytest.raises(ValueError, match="unknown NSG 'missing'"):
        parse_azure(raw)
