"""What the network lab builds, read from a scenario: VMs with their addresses and NSG path, subnets, callers.

Pure: it decides names and addresses; `namespaces.py` creates them. Addresses are the scenario's
(documentation ranges only). What the lab adds itself, also from documentation ranges:

- each subnet's gateway is its first host address (Azure's `.1`), owned by the router;
- callers get the scenario user's IPv4 address and an IPv6 one in `CALLER_V6_NET` with the same last number;
- the root namespace's side of the link to the router: `HOST_V4` (198.51.100.1) and `HOST_V6`, where the
  broker and other lab services bind so callers reach them with their own address, no NAT.

Only VMs that are running get a namespace (a deallocated VM answers nobody, as in Azure). A VM's NSG path is
its primary NIC's NSG, then the NSG of the subnet of that NIC's first ip config; other NICs are not modelled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lab.scenario import NsgSpec, Scenario

PREFIX = "jl-"
ROUTER_NS = "jl-router"
HOST_V4 = "198.51.100.1"
ROUTER_UPLINK_V4 = "198.51.100.0"
HOST_LINK_V4_PREFIX = 31
HOST_V6 = "2001:db8:b::1"
ROUTER_UPLINK_V6 = "2001:db8:b::"
HOST_LINK_V6_PREFIX = 127
CALLER_V4_NET = ipaddress.ip_network("203.0.113.0/24")
CALLER_V6_NET = ipaddress.ip_network("2001:db8:203::/64")
CALLER_GATEWAY_V4 = "203.0.113.1"
CALLER_GATEWAY_V6 = "2001:db8:203::1"


@dataclass(frozen=True)
class SubnetNet:
    """A subnet as the router sees it: a bridge holding the gateway address of each prefix."""

    key: str  # "rg/vnet/subnet", lower case
    bridge: str
    prefixes: tuple[str, ...]

    @property
    def gateways(self) -> tuple[str, ...]:
        """The router's address in each prefix, with the prefix length ("192.0.2.1/28")."""
        out = []
        for prefix in self.prefixes:
            net = ipaddress.ip_network(prefix)
            out.append(f"{net.network_address + 1}/{net.prefixlen}")
        return tuple(out)


@dataclass(frozen=True)
class VmAddress:
    """One private address of a VM (with its subnet's prefix length) and the public IP NATed to it."""

    private_ip: str
    prefixlen: int
    gateway: str
    public_ip: str | None

    @property
    def version(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.private_ip).version


@dataclass(frozen=True)
class VmNet:
    """A VM as the network lab builds it."""

    name: str
    namespace: str
    router_link: str  # the veth end in the router namespace
    subnet: SubnetNet
    admin_username: str
    addresses: tuple[VmAddress, ...]
    nsg_path: tuple[str, ...]  # NSG ids, NIC NSG first; lower case

    @property
    def public_ips(self) -> tuple[str, ...]:
        """The VM's public addresses (what callers dial)."""
        return tuple(a.public_ip for a in self.addresses if a.public_ip)

    @property
    def private_ips(self) -> tuple[str, ...]:
        """The VM's private addresses (what its NSG rules name)."""
        return tuple(a.private_ip for a in self.addresses)


@dataclass(frozen=True)
class CallerNet:
    """A person's machine: a namespace with their scenario address."""

    name: str
    namespace: str
    router_link: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    """Everything the network lab builds, plus the NSGs as the scenario starts them."""

    vms: tuple[VmNet, ...]
    subnets: tuple[SubnetNet, ...]
    callers: tuple[CallerNet, ...]
    vnet_prefixes: tuple[str, ...]
    initial_nsgs: Mapping[str, dict[str, Any]]

    def vm(self, name: str) -> VmNet:
        """The VM called `name` (KeyError names the ones the lab built)."""
        for vm in self.vms:
            if vm.name.lower() == name.lower():
                return vm
        raise KeyError(f"no VM {name!r} in the network lab (built: {', '.join(v.name for v in self.vms)})")

    def caller(self, name: str) -> CallerNet:
        """The caller called `name` (KeyError names the known ones)."""
        for caller in self.callers:
            if caller.name == name:
                return caller
        raise KeyError(
            f"no caller {name!r} in the network lab (known: {', '.join(c.name for c in self.callers)})"
        )


def nsg_id(subscription: str, resource_group: str, name: str) -> str:
    """An NSG's ARM id, lower case (ARM ids compare case-insensitively)."""
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Network/networkSecurityGroups/{name}"
    ).lower()


def nsg_json_from_spec(nsg_id_: str, spec: NsgSpec) -> dict[str, Any]:
    """The ARM JSON of an NSG as the scenario starts it (used until the emulator tells otherwise)."""
    return {
        "id": nsg_id_,
        "name": spec.name,
        "properties": {
            "flushConnection": spec.flush_connection,
            "securityRules": [
                {"name": r["name"], "properties": {k: v for k, v in r.items() if k != "name"}}
                for r in spec.rules
            ],
        },
    }


def build_topology(scenario: Scenario, vms: Iterable[str] | None = None) -> Topology:
    """Plan the lab for `vms` (every running VM when None), and a caller per user with an address."""
    wanted = None if vms is None else {v.lower() for v in vms}
    subnets: dict[str, SubnetNet] = {}
    vnet_prefixes: list[str] = []
    subnet_nsgs: dict[str, str | None] = {}
    nsgs: dict[str, dict[str, Any]] = {}
    for sub in scenario.azure.subscriptions:
        for rg in sub.resource_groups:
            for nsg in rg.nsgs:
                nid = nsg_id(sub.id, rg.name, nsg.name)
                nsgs[nid] = nsg_json_from_spec(nid, nsg)
            for vnet in rg.vnets:
                vnet_prefixes.extend(vnet.address_prefixes)
                for spec in vnet.subnets:
                    key = f"{rg.name}/{vnet.name}/{spec.name}".lower()
                    subnets[key] = SubnetNet(key, f"jlb-{len(subnets)}", spec.address_prefixes)
                    subnet_nsgs[key] = nsg_id(sub.id, rg.name, spec.nsg) if spec.nsg else None
    built: list[VmNet] = []
    used: set[str] = set()
    for place in scenario.azure.vms():
        vm = place.vm
        if (wanted is not None and vm.name.lower() not in wanted) or (
            wanted is None and vm.power_state != "running"
        ):
            continue
        if not vm.nics or not vm.nics[0].ip_configs:
            continue
        nic = vm.nics[0]
        subnet = subnets[f"{place.resource_group}/{nic.ip_configs[0].subnet}".lower()]
        addresses = []
        for ipc in nic.ip_configs:
            own = subnets[f"{place.resource_group}/{ipc.subnet}".lower()]
            used.add(own.key)
            addresses.append(
                _vm_address(own, ipc.private_ip, ipc.public_ip.address if ipc.public_ip else None)
            )
        path = []
        if nic.nsg:
            path.append(nsg_id(place.subscription, place.resource_group, nic.nsg))
        subnet_nsg = subnet_nsgs[subnet.key]
        if subnet_nsg:
            path.append(subnet_nsg)
        built.append(
            VmNet(
                name=vm.name,
                namespace=f"{PREFIX}vm-{vm.name}",
                router_link=f"jlv-{len(built)}",
                subnet=subnet,
                admin_username=vm.admin_username,
                addresses=tuple(addresses),
                nsg_path=tuple(path),
            )
        )
    callers = tuple(
        CallerNet(
            name=user.name,
            namespace=f"{PREFIX}c-{user.name}",
            router_link=f"jlc-{i}",
            addresses=(user.address, caller_v6(user.address)),
        )
        for i, user in enumerate(u for u in scenario.users if u.address)
        if user.address
    )
    return Topology(
        vms=tuple(built),
        subnets=tuple(s for s in subnets.values() if s.key in used),
        callers=callers,
        vnet_prefixes=tuple(vnet_prefixes),
        initial_nsgs=nsgs,
    )


def caller_v6(address: str) -> str:
    """The IPv6 address the lab gives a caller: `CALLER_V6_NET` with the IPv4 address's last number."""
    last = int(ipaddress.IPv4Address(address)) & 0xFF
    return str(CALLER_V6_NET.network_address + last)


def _vm_address(subnet: SubnetNet, private_ip: str, public_ip: str | None) -> VmAddress:
    ip = ipaddress.ip_address(private_ip)
    for prefix in subnet.prefixes:
        net = ipaddress.ip_network(prefix)
        if ip in net:
            return VmAddress(private_ip, net.prefixlen, str(net.network_address + 1), public_ip)
    raise ValueError(f"{private_ip} is in none of subnet {subnet.key}'s prefixes {subnet.prefixes}")
