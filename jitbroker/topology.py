"""Where a VM's traffic is filtered and how to reach it, read from ARM and cached briefly.

VM (with instance view) -> every NIC -> each IP configuration -> public IP (address, FQDN) and subnet ->
the NIC's NSG and every subnet's NSG, deduplicated. A cold resolve costs a handful of ARM reads; within
`cache_seconds` it costs none, so a warm grant stays within its read budget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from jitbroker.arm import arm_call, parse_id
from jitbroker.clients import AzureClients
from jitbroker.errors import InvalidRequest, NotFound
from jitbroker.model import NicAddress, VmTopology
from jitbroker.rules import as_rule_view

Clock = Callable[[], datetime]


class TopologyReader:
    """Resolves VMs to their network path and NSGs, caching each answer for `cache_seconds`."""

    def __init__(
        self,
        clients: AzureClients,
        *,
        cache_seconds: float = 60,
        clock: Clock,
        attempts: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._clients = clients
        self._ttl = timedelta(seconds=cache_seconds)
        self._clock = clock
        self._retry: dict[str, Any] = {"attempts": attempts, "base_delay": base_delay, "max_delay": max_delay}
        if sleep is not None:
            self._retry["sleep"] = sleep
        self._lock = threading.Lock()
        self._vms: dict[str, tuple[datetime, VmTopology]] = {}
        self._nsgs: dict[str, tuple[datetime, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ public

    def resolve(self, vm_id: str) -> VmTopology:
        """The VM's topology (cached); `NotFound` when no such VM exists."""
        key = vm_id.lower()
        cached: VmTopology | None = self._cached(self._vms, key)
        if cached is not None:
            return cached
        topology = self._read_vm(vm_id)
        self._store(self._vms, key, topology)
        return topology

    def list_vms(self, scope: str) -> list[VmTopology]:
        """Every VM in a subscription or resource group scope, each resolved (and cached)."""
        parts = [p for p in scope.strip("/").split("/") if p]
        if len(parts) not in (2, 4) or parts[0].lower() != "subscriptions":
            raise InvalidRequest(f"{scope!r} is not /subscriptions/<id>[/resourceGroups/<name>]")
        compute = self._clients.compute_client(parts[1])
        if len(parts) == 4:
            pager: Callable[[], Any] = lambda: list(compute.virtual_machines.list(parts[3]))  # noqa: E731
        else:
            pager = lambda: list(compute.virtual_machines.list_all())  # noqa: E731
        try:
            listed = arm_call(pager, what=f"listing VMs in {scope}", **self._retry)
        except ResourceNotFoundError:
            return []
        result: list[VmTopology] = []
        for vm in listed:
            try:
                result.append(self.resolve(str(vm.id)))
            except NotFound:
                continue  # deleted between the list and the read
        return sorted(result, key=lambda t: (t.resource_group.lower(), t.name.lower()))

    def nsg(self, nsg_id: str, *, fresh: bool = False) -> dict[str, Any]:
        """The NSG as data: `id`, `name`, `location`, `rules`, `default_rules` (cached unless `fresh`)."""
        key = nsg_id.lower()
        if not fresh:
            view: dict[str, Any] | None = self._cached(self._nsgs, key)
            if view is not None:
                return view
        parsed = parse_id(nsg_id, "networkSecurityGroups")
        network = self._clients.network_client(parsed.subscription)
        try:
            raw = arm_call(
                lambda: network.network_security_groups.get(parsed.resource_group, parsed.name),
                what=f"reading NSG {parsed.name}",
                **self._retry,
            )
        except ResourceNotFoundError as err:
            raise NotFound(f"no network security group {nsg_id}") from err
        view = nsg_view(raw)
        self.remember_nsg(nsg_id, view)
        return view

    def remember_nsg(self, nsg_id: str, view: dict[str, Any]) -> None:
        """Cache an NSG view read elsewhere (the writer reads fresh before every write)."""
        self._store(self._nsgs, nsg_id.lower(), view)

    def invalidate(self, vm_id: str | None = None) -> None:
        """Forget one VM (or everything), e.g. after ARM said a cached NIC or NSG no longer exists."""
        with self._lock:
            if vm_id is None:
                self._vms.clear()
                self._nsgs.clear()
            else:
                self._vms.pop(vm_id.lower(), None)

    # ------------------------------------------------------------------ reading ARM

    def _read_vm(self, vm_id: str) -> VmTopology:
        parsed = parse_id(vm_id, "virtualMachines")
        compute = self._clients.compute_client(parsed.subscription)
        try:
            vm = arm_call(
                lambda: compute.virtual_machines.get(
                    parsed.resource_group, parsed.name, expand="instanceView"
                ),
                what=f"reading VM {parsed.name}",
                **self._retry,
            )
        except ResourceNotFoundError as err:
            raise NotFound(f"no virtual machine {vm_id}") from err
        addresses: list[NicAddress] = []
        nsg_ids: list[str] = []
        network_profile = vm.network_profile
        for ref in (network_profile.network_interfaces if network_profile else None) or []:
            nic_addresses, nic_nsgs = self._read_nic(str(ref.id))
            addresses.extend(nic_addresses)
            nsg_ids.extend(nic_nsgs)
        os_profile = vm.os_profile
        storage = vm.storage_profile
        os_disk = storage.os_disk if storage else None
        return VmTopology(
            vm_id=str(vm.id or vm_id),
            name=str(vm.name or parsed.name),
            subscription=parsed.subscription,
            resource_group=parsed.resource_group,
            location=str(vm.location or ""),
            os_type=_text(os_disk.os_type) if os_disk and os_disk.os_type else "",
            admin_username=os_profile.admin_username if os_profile else None,
            power_state=_power_state(vm),
            tags=dict(vm.tags or {}),
            addresses=tuple(addresses),
            nsg_ids=_dedupe(nsg_ids),
        )

    def _read_nic(self, nic_id: str) -> tuple[list[NicAddress], list[str]]:
        parsed = parse_id(nic_id, "networkInterfaces")
        network = self._clients.network_client(parsed.subscription)
        try:
            nic = arm_call(
                lambda: network.network_interfaces.get(parsed.resource_group, parsed.name),
                what=f"reading NIC {parsed.name}",
                **self._retry,
            )
        except ResourceNotFoundError:
            return [], []  # a dangling reference: nothing reachable through it
        nsgs: list[str] = []
        if nic.network_security_group is not None and nic.network_security_group.id:
            nsgs.append(str(nic.network_security_group.id))
        addresses: list[NicAddress] = []
        for config in nic.ip_configurations or []:
            if not config.private_ip_address:
                continue
            public_ip, fqdn = self._read_public_ip(config.public_ip_address)
            subnet_id = str(config.subnet.id) if config.subnet is not None and config.subnet.id else None
            if subnet_id is not None:
                nsgs.extend(self._read_subnet_nsg(subnet_id))
            version = _text(config.private_ip_address_version or "IPv4")
            addresses.append(
                NicAddress(
                    private_ip=str(config.private_ip_address),
                    version=6 if version.lower() == "ipv6" else 4,
                    public_ip=public_ip,
                    fqdn=fqdn,
                    subnet_id=subnet_id,
                )
            )
        return addresses, nsgs

    def _read_public_ip(self, ref: Any) -> tuple[str | None, str | None]:
        if ref is None or not getattr(ref, "id", None):
            return None, None
        parsed = parse_id(str(ref.id), "publicIPAddresses")
        network = self._clients.network_client(parsed.subscription)
        try:
            pip = arm_call(
                lambda: network.public_ip_addresses.get(parsed.resource_group, parsed.name),
                what=f"reading public IP {parsed.name}",
                **self._retry,
            )
        except ResourceNotFoundError:
            return None, None
        fqdn = pip.dns_settings.fqdn if pip.dns_settings is not None else None
        return (str(pip.ip_address) if pip.ip_address else None), (str(fqdn) if fqdn else None)

    def _read_subnet_nsg(self, subnet_id: str) -> list[str]:
        parsed = parse_id(subnet_id, "subnets")
        network = self._clients.network_client(parsed.subscription)
        try:
            subnet = arm_call(
                lambda: network.subnets.get(parsed.resource_group, parsed.parent, parsed.name),
                what=f"reading subnet {parsed.name}",
                **self._retry,
            )
        except ResourceNotFoundError:
            return []
        nsg = subnet.network_security_group
        return [str(nsg.id)] if nsg is not None and nsg.id else []

    # ------------------------------------------------------------------ cache

    def _cached(self, cache: dict[str, tuple[datetime, Any]], key: str) -> Any:
        with self._lock:
            entry = cache.get(key)
            if entry is None:
                return None
            stored_at, value = entry
            if self._clock() - stored_at >= self._ttl:
                del cache[key]
                return None
            return value

    def _store(self, cache: dict[str, tuple[datetime, Any]], key: str, value: Any) -> None:
        if self._ttl <= timedelta(0):
            return
        with self._lock:
            cache[key] = (self._clock(), value)


def nsg_view(raw: Any) -> dict[str, Any]:
    """The JSON-ish view of an azure-mgmt NSG model (or ARM JSON) that planning and warnings read."""
    props = raw.get("properties") if isinstance(raw, dict) else None
    if props is not None:
        rules = props.get("securityRules") or []
        defaults = props.get("defaultSecurityRules") or []
        ident, name, location = raw.get("id"), raw.get("name"), raw.get("location")
    else:
        rules = raw.security_rules or []
        defaults = raw.default_security_rules or []
        ident, name, location = raw.id, raw.name, raw.location
    return {
        "id": str(ident or ""),
        "name": str(name or ""),
        "location": str(location or ""),
        "rules": [as_rule_view(r).as_dict() for r in rules],
        "default_rules": [as_rule_view(r).as_dict() for r in defaults],
    }


def _text(value: Any) -> str:
    """An SDK enum's wire value (`"Linux"`, not `OperatingSystemTypes.LINUX`), or the string itself."""
    return str(getattr(value, "value", value))


def _power_state(vm: Any) -> str:
    view = vm.instance_view
    for status in (view.statuses if view is not None else None) or []:
        code = str(status.code or "")
        if code.lower().startswith("powerstate/"):
            return code.split("/", 1)[1].lower()
    return "unknown"


def _dedupe(ids: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    result: list[str] = []
    for ident in ids:
        if ident.lower() not in seen:
            seen.add(ident.lower())
            result.append(ident)
    return tuple(result)
