"""The lab's world, read from a scenario file: tenant, users, and the Azure resources the ARM emulator serves.

A scenario is one JSON file with three sections::

    {
      "tenant": {"tenant_id": "...", "api_client_id": "...", "app_id_uri": "api://..."},
      "users":  [{"name": "alice", "oid": "...", "upn": "...", "display_name": "...",
                  "roles": ["JIT.Requester"], "address": "203.0.113.10"}],
      "azure": {
        "location": "westeurope",                       # default for every resource group
        "subscriptions": [{
          "id": "00000000-0000-4000-8000-0000000000a1", "name": "jit-demo",
          "resource_groups": [{
            "name": "rg-jit-demo",                      # optional "location" overrides the default
            "vnets": [{"name": "vnet-demo", "address_prefixes": ["192.0.2.0/25", "2001:db8:0:1::/64"],
                       "subnets": [{"name": "web-subnet", "address_prefixes": ["192.0.2.0/28"],
                                    "nsg": "web-subnet-nsg"}]}],          # "nsg" optional (null: none)
            "nsgs": [{"name": "web-01-nsg", "flush_connection": false,
                      "rules": [{"name": "deny-management-inbound", "priority": 4000,
                                 "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
                                 "sourceAddressPrefix": "*", "sourcePortRange": "*",
                                 "destinationAddressPrefix": "*", "destinationPortRanges": ["22", "3389"]}]}],
            "vms": [{"name": "web-01", "os": "Linux", "admin_username": "azureuser",
                     "size": "Standard_B2s", "power_state": "running", "tags": {"jit-ports": "22"},
                     "nics": [{"name": "web-01-nic", "nsg": "web-01-nsg",            # "nsg" optional
                               "ip_configs": [{"name": "ipconfig1", "subnet": "vnet-demo/web-subnet",
                                               "private_ip": "192.0.2.4",
                                               "public_ip": {"name": "web-01-pip", "address": "198.51.100.10",
                                                             "dns_label": "web-01"}}]}]}]
          }]
        }]
      }
    }

Rules use ARM's own property names (what `GET …/securityRules/{name}` shows under `properties`), so a rule
can be copied between a scenario and a real NSG. References stay inside one resource group: a NIC or subnet
names its NSG, an ip config names its subnet as `vnet/subnet`. An ip config's address family comes from its
address; a public IP is `Static` unless it says `"allocation": "Dynamic"` (a Dynamic address is hidden while
its VM is deallocated, as in Azure). Power states are Azure's: running, stopped, deallocated, starting,
stopping, deallocating.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_SCENARIO = Path(__file__).parent / "scenarios" / "demo.json"
POWER_STATES = ("running", "stopped", "deallocated", "starting", "stopping", "deallocating")


@dataclass(frozen=True)
class TenantSpec:
    """The Entra ID tenant and the broker's app registration the lab's tokens are for."""

    tenant_id: str
    api_client_id: str
    app_id_uri: str


@dataclass(frozen=True)
class UserSpec:
    """A person in the lab: who they are to Entra ID, their app roles, their address in the network lab."""

    name: str
    oid: str
    upn: str
    display_name: str
    roles: tuple[str, ...]
    address: str | None = None


@dataclass(frozen=True)
class PublicIpSpec:
    """A public IP address resource in front of an ip config."""

    name: str
    address: str | None
    dns_label: str | None = None
    allocation: str = "Static"

    @property
    def version(self) -> str:
        """ARM's `publicIPAddressVersion`, from the address (IPv4 when none is set)."""
        if self.address and ipaddress.ip_address(self.address).version == 6:
            return "IPv6"
        return "IPv4"


@dataclass(frozen=True)
class IpConfigSpec:
    """One ip configuration of a NIC: a private address in a subnet, maybe a public IP."""

    name: str
    subnet: str
    private_ip: str
    public_ip: PublicIpSpec | None = None
    primary: bool = False

    @property
    def version(self) -> str:
        """ARM's `privateIPAddressVersion`."""
        return "IPv6" if ipaddress.ip_address(self.private_ip).version == 6 else "IPv4"

    @property
    def vnet_name(self) -> str:
        """The virtual network part of the `vnet/subnet` reference."""
        return self.subnet.split("/", 1)[0]

    @property
    def subnet_name(self) -> str:
        """The subnet part of the `vnet/subnet` reference."""
        return self.subnet.split("/", 1)[1]


@dataclass(frozen=True)
class NicSpec:
    """A network interface; `nsg` names the NIC-level NSG in the same resource group."""

    name: str
    ip_configs: tuple[IpConfigSpec, ...]
    nsg: str | None = None
    primary: bool = True


@dataclass(frozen=True)
class VmSpec:
    """A virtual machine as its owner configured it."""

    name: str
    os: str
    admin_username: str
    size: str
    power_state: str
    tags: Mapping[str, str]
    nics: tuple[NicSpec, ...]

    @property
    def private_ips(self) -> tuple[str, ...]:
        """Every private address of the VM, primary NIC first."""
        return tuple(ipc.private_ip for nic in self.nics for ipc in nic.ip_configs)


@dataclass(frozen=True)
class NsgSpec:
    """A network security group and the rules it starts with (ARM property names)."""

    name: str
    rules: tuple[Mapping[str, Any], ...] = ()
    flush_connection: bool = False


@dataclass(frozen=True)
class SubnetSpec:
    """A subnet; `nsg` names the subnet-level NSG in the same resource group."""

    name: str
    address_prefixes: tuple[str, ...]
    nsg: str | None = None


@dataclass(frozen=True)
class VnetSpec:
    """A virtual network and its subnets."""

    name: str
    address_prefixes: tuple[str, ...]
    subnets: tuple[SubnetSpec, ...]


@dataclass(frozen=True)
class ResourceGroupSpec:
    """A resource group and everything in it."""

    name: str
    location: str
    vnets: tuple[VnetSpec, ...] = ()
    nsgs: tuple[NsgSpec, ...] = ()
    vms: tuple[VmSpec, ...] = ()


@dataclass(frozen=True)
class SubscriptionSpec:
    """An Azure subscription and its resource groups."""

    id: str
    name: str
    resource_groups: tuple[ResourceGroupSpec, ...]


@dataclass(frozen=True)
class VmPlace:
    """A VM together with where it lives, for callers that search the whole world."""

    subscription: str
    resource_group: str
    location: str
    vm: VmSpec


@dataclass(frozen=True)
class AzureSpec:
    """The Azure side of a scenario: subscriptions down to VMs, NICs, IPs, subnets and NSGs."""

    location: str = "westeurope"
    subscriptions: tuple[SubscriptionSpec, ...] = ()

    def vms(self) -> Iterator[VmPlace]:
        """Every VM with its subscription, resource group and location."""
        for sub in self.subscriptions:
            for rg in sub.resource_groups:
                for vm in rg.vms:
                    yield VmPlace(sub.id, rg.name, rg.location, vm)

    def vm(self, name: str) -> VmPlace:
        """The VM called `name` (KeyError names the known ones when there is none)."""
        for place in self.vms():
            if place.vm.name.lower() == name.lower():
                return place
        known = ", ".join(p.vm.name for p in self.vms())
        raise KeyError(f"no VM {name!r} in the scenario (known: {known})")


@dataclass(frozen=True)
class Scenario:
    """A whole lab world: the tenant and its users, and the Azure resources the ARM emulator serves."""

    tenant: TenantSpec
    users: tuple[UserSpec, ...]
    azure: AzureSpec = field(default_factory=AzureSpec)

    def user(self, name: str) -> UserSpec:
        """The user called `name` (KeyError names the known ones when there is none)."""
        for user in self.users:
            if user.name == name:
                return user
        known = ", ".join(u.name for u in self.users)
        raise KeyError(f"no user {name!r} in the scenario (known: {known})")


def load_scenario(path: Path | str | None = None) -> Scenario:
    """Read a scenario file; the shipped demo scenario when no path is given."""
    raw = json.loads(Path(path or DEMO_SCENARIO).read_text(encoding="utf-8"))
    tenant = TenantSpec(**raw["tenant"])
    users = tuple(
        UserSpec(
            name=u["name"],
            oid=u["oid"],
            upn=u["upn"],
            display_name=u["display_name"],
            roles=tuple(u.get("roles", ())),
            address=u.get("address"),
        )
        for u in raw["users"]
    )
    return Scenario(tenant=tenant, users=users, azure=parse_azure(raw.get("azure") or {}))


def parse_azure(raw: Mapping[str, Any]) -> AzureSpec:
    """Turn a scenario's `azure` section into typed specs; ValueError early on a dangling reference."""
    location = raw.get("location", "westeurope")
    subs = tuple(
        SubscriptionSpec(
            id=s["id"],
            name=s.get("name", s["id"]),
            resource_groups=tuple(_parse_rg(rg, location) for rg in s.get("resource_groups", ())),
        )
        for s in raw.get("subscriptions", ())
    )
    spec = AzureSpec(location=location, subscriptions=subs)
    for sub in spec.subscriptions:
        for rg in sub.resource_groups:
            _check_references(rg)
    return spec


def _parse_rg(raw: Mapping[str, Any], default_location: str) -> ResourceGroupSpec:
    return ResourceGroupSpec(
        name=raw["name"],
        location=raw.get("location", default_location),
        vnets=tuple(
            VnetSpec(
                name=v["name"],
                address_prefixes=tuple(v.get("address_prefixes", ())),
                subnets=tuple(
                    SubnetSpec(s["name"], tuple(s["address_prefixes"]), s.get("nsg"))
                    for s in v.get("subnets", ())
                ),
            )
            for v in raw.get("vnets", ())
        ),
        nsgs=tuple(
            NsgSpec(
                name=n["name"],
                rules=tuple(dict(r) for r in n.get("rules", ())),
                flush_connection=bool(n.get("flush_connection", False)),
            )
            for n in raw.get("nsgs", ())
        ),
        vms=tuple(_parse_vm(vm) for vm in raw.get("vms", ())),
    )


def _parse_vm(raw: Mapping[str, Any]) -> VmSpec:
    power = raw.get("power_state", "running")
    if power not in POWER_STATES:
        raise ValueError(f"VM {raw['name']}: power_state {power!r} is not one of {', '.join(POWER_STATES)}")
    nics = []
    for n_index, nic in enumerate(raw.get("nics", ())):
        ipcs = []
        for i_index, ipc in enumerate(nic.get("ip_configs", ())):
            pip = ipc.get("public_ip")
            ipcs.append(
                IpConfigSpec(
                    name=ipc.get("name", f"ipconfig{i_index + 1}"),
                    subnet=ipc["subnet"],
                    private_ip=ipc["private_ip"],
                    primary=ipc.get("primary", i_index == 0),
                    public_ip=None
                    if pip is None
                    else PublicIpSpec(
                        name=pip["name"],
                        address=pip.get("address"),
                        dns_label=pip.get("dns_label"),
                        allocation=pip.get("allocation", "Static"),
                    ),
                )
            )
        nics.append(
            NicSpec(name=nic["name"], ip_configs=tuple(ipcs), nsg=nic.get("nsg"), primary=n_index == 0)
        )
    return VmSpec(
        name=raw["name"],
        os=raw.get("os", "Linux"),
        admin_username=raw.get("admin_username", "azureuser"),
        size=raw.get("size", "Standard_B2s"),
        power_state=power,
        tags=dict(raw.get("tags", {})),
        nics=tuple(nics),
    )


def _check_references(rg: ResourceGroupSpec) -> None:
    nsgs = {n.name for n in rg.nsgs}
    subnets = {f"{v.name}/{s.name}" for v in rg.vnets for s in v.subnets}
    for vnet in rg.vnets:
        for subnet in vnet.subnets:
            if subnet.nsg is not None and subnet.nsg not in nsgs:
                raise ValueError(f"subnet {vnet.name}/{subnet.name} names unknown NSG {subnet.nsg!r}")
    for vm in rg.vms:
        for nic in vm.nics:
            if nic.nsg is not None and nic.nsg not in nsgs:
                raise ValueError(f"NIC {nic.name} names unknown NSG {nic.nsg!r}")
            for ipc in nic.ip_configs:
                if ipc.subnet not in subnets:
                    raise ValueError(f"NIC {nic.name} names unknown subnet {ipc.subnet!r}")
