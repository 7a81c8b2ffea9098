"""The emulator's world: VMs, NICs, public IPs, subnets and NSGs built from a scenario, and the NSG mutations.

Keys are lower-cased resource ids (ARM matches ids case-insensitively); records keep the scenario's spelling
for display. Every NSG change gives the NSG a new weak etag `W/"guid"`, which all its rules share, as in
Azure."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab.arm.validation import check_name, normalize_rule
from lab.scenario import AzureSpec, IpConfigSpec, NicSpec, PublicIpSpec, SubnetSpec, VmSpec

COMPUTE = "Microsoft.Compute"
NETWORK = "Microsoft.Network"


def rg_id(sub: str, rg: str) -> str:
    """`/subscriptions/{sub}/resourceGroups/{rg}`."""
    return f"/subscriptions/{sub}/resourceGroups/{rg}"


def resource_id(sub: str, rg: str, provider: str, rtype: str, name: str) -> str:
    """A top-level resource id."""
    return f"{rg_id(sub, rg)}/providers/{provider}/{rtype}/{name}"


def new_etag() -> str:
    """A fresh weak etag as the Network RP writes them."""
    return f'W/"{uuid.uuid4()}"'


@dataclass
class RuleRecord:
    """One security rule: its name, normalized ARM properties, and provisioning state."""

    name: str
    properties: dict[str, Any]
    state: str = "Succeeded"


@dataclass
class NsgRecord:
    """One network security group."""

    id: str
    name: str
    sub: str
    rg: str
    location: str
    etag: str
    resource_guid: str
    rules: dict[str, RuleRecord] = field(default_factory=dict)
    flush_connection: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    state: str = "Succeeded"

    def rule(self, name: str) -> RuleRecord | None:
        """The rule called `name` (case-insensitive), if any."""
        return self.rules.get(name.lower())

    def rule_id(self, name: str) -> str:
        """The id of a (possibly not yet existing) rule of this NSG."""
        return f"{self.id}/securityRules/{name}"

    def touch(self) -> None:
        """A write happened: new etag."""
        self.etag = new_etag()


@dataclass
class VmRecord:
    """A VM and its run-time power state."""

    id: str
    sub: str
    rg: str
    location: str
    spec: VmSpec
    vm_id: str
    power_state: str
    nic_ids: list[str]


@dataclass
class NicRecord:
    """A NIC, the VM it belongs to and the NSG (id) on it."""

    id: str
    sub: str
    rg: str
    location: str
    spec: NicSpec
    vm_id: str
    nsg_id: str | None
    primary: bool
    resource_guid: str
    etag: str
    ip_configs: list[tuple[IpConfigSpec, str, str | None]]  # spec, subnet id, public IP id


@dataclass
class PublicIpRecord:
    """A public IP address resource and the ip configuration it is attached to."""

    id: str
    sub: str
    rg: str
    location: str
    spec: PublicIpSpec
    ip_config_id: str
    vm_key: str
    resource_guid: str
    etag: str


@dataclass
class SubnetRecord:
    """A subnet, its NSG (id) and the ip configurations in it."""

    id: str
    sub: str
    rg: str
    vnet: str
    spec: SubnetSpec
    nsg_id: str | None
    ip_config_ids: list[str]
    etag: str


@dataclass
class World:
    """Everything the emulator serves, guarded by one lock."""

    subscriptions: dict[str, str] = field(default_factory=dict)  # key -> spelled id
    resource_groups: dict[str, tuple[str, str, str]] = field(
        default_factory=dict
    )  # key -> (sub, rg, location)
    vms: dict[str, VmRecord] = field(default_factory=dict)
    nics: dict[str, NicRecord] = field(default_factory=dict)
    public_ips: dict[str, PublicIpRecord] = field(default_factory=dict)
    subnets: dict[str, SubnetRecord] = field(default_factory=dict)
    nsgs: dict[str, NsgRecord] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def nsg_associations(self, nsg_key: str) -> tuple[list[str], list[str]]:
        """The NIC ids and subnet ids an NSG is attached to."""
        nics = [n.id for n in self.nics.values() if n.nsg_id and n.nsg_id.lower() == nsg_key]
        subnets = [s.id for s in self.subnets.values() if s.nsg_id and s.nsg_id.lower() == nsg_key]
        return nics, subnets


def build_world(azure: AzureSpec, ids: Callable[[], str] = lambda: str(uuid.uuid4())) -> World:
    """Turn a scenario's Azure section into the emulator's records; scenario rules are validated like PUTs."""
    world = World()
    for sub in azure.subscriptions:
        world.subscriptions[sub.id.lower()] = sub.id
        for rg in sub.resource_groups:
            world.resource_groups[rg_id(sub.id, rg.name).lower()] = (sub.id, rg.name, rg.location)
            for nsg in rg.nsgs:
                nid = resource_id(sub.id, rg.name, NETWORK, "networkSecurityGroups", nsg.name)
                record = NsgRecord(
                    nid,
                    nsg.name,
                    sub.id,
                    rg.name,
                    rg.location,
                    new_etag(),
                    ids(),
                    flush_connection=nsg.flush_connection,
                )
                for raw in nsg.rules:
                    check_name(raw["name"])
                    props = {k: v for k, v in raw.items() if k != "name"}
                    record.rules[raw["name"].lower()] = RuleRecord(
                        raw["name"], normalize_rule(record.rule_id(raw["name"]), props)
                    )
                world.nsgs[nid.lower()] = record

            def nsg_ref(name: str | None, sub_id: str = sub.id, rg_name: str = rg.name) -> str | None:
                return (
                    None
                    if name is None
                    else resource_id(sub_id, rg_name, NETWORK, "networkSecurityGroups", name)
                )

            for vnet in rg.vnets:
                vnet_id = resource_id(sub.id, rg.name, NETWORK, "virtualNetworks", vnet.name)
                for subnet in vnet.subnets:
                    sid = f"{vnet_id}/subnets/{subnet.name}"
                    world.subnets[sid.lower()] = SubnetRecord(
                        sid, sub.id, rg.name, vnet.name, subnet, nsg_ref(subnet.nsg), [], new_etag()
                    )
            for vm in rg.vms:
                vid = resource_id(sub.id, rg.name, COMPUTE, "virtualMachines", vm.name)
                nic_ids = []
                for nic in vm.nics:
                    nic_id = resource_id(sub.id, rg.name, NETWORK, "networkInterfaces", nic.name)
                    nic_ids.append(nic_id)
                    ipcs: list[tuple[IpConfigSpec, str, str | None]] = []
                    for ipc in nic.ip_configs:
                        vnet_id = resource_id(sub.id, rg.name, NETWORK, "virtualNetworks", ipc.vnet_name)
                        subnet_id = f"{vnet_id}/subnets/{ipc.subnet_name}"
                        ipc_id = f"{nic_id}/ipConfigurations/{ipc.name}"
                        world.subnets[subnet_id.lower()].ip_config_ids.append(ipc_id)
                        pip_id = None
                        if ipc.public_ip is not None:
                            pip_id = resource_id(
                                sub.id, rg.name, NETWORK, "publicIPAddresses", ipc.public_ip.name
                            )
                            world.public_ips[pip_id.lower()] = PublicIpRecord(
                                pip_id,
                                sub.id,
                                rg.name,
                                rg.location,
                                ipc.public_ip,
                                ipc_id,
                                vid.lower(),
                                ids(),
                                new_etag(),
                            )
                        ipcs.append((ipc, subnet_id, pip_id))
                    world.nics[nic_id.lower()] = NicRecord(
                        nic_id,
                        sub.id,
                        rg.name,
                        rg.location,
                        nic,
                        vid,
                        nsg_ref(nic.nsg),
                        nic.primary,
                        ids(),
                        new_etag(),
                        ipcs,
                    )
                world.vms[vid.lower()] = VmRecord(
                    vid, sub.id, rg.name, rg.location, vm, ids(), vm.power_state, nic_ids
                )
    return world
