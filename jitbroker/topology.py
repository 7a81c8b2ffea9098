"""Where a VM's traffic is filtered and how to reach it, read from ARM and cached briefly.

VM (with instance view) -> every NIC -> each IP configuration -> public IP (address, FQDN) and subnet ->
the NIC's NSG and every subnet's NSG, deduplicated. A cold resolve costs a handful of ARM reads; within
`cache_seconds` it costs none, so a warm grant stays within its read budget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from azure.core.exceptions import ResourceNotFoundError

from jitbroker.arm import ResourceId, arm_call, parse_id
from jitbroker.clients import AzureClients
from jitbroker.errors import InvalidRequest, NotFound
from jitbroker.model import VM_DELETED, NicAddress, VmTopology
from jitbroker.rules import as_rule_view

Clock = Callable[[], datetime]
T = TypeVar("T")

DELETED = VM_DELETED


class TopologyReader:
    """Resolves VMs to their network path and NSGs, caching each answer for `cache_seconds`.

    Three caches share the TTL: scope listings (name lookup and `GET /api/v1/vms`), VM records (the VM with
    its instance view: power state, tags, NIC references) and resolved topologies. Concurrent misses on one
    key read ARM once; the others wait for that answer.
    """

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
        self._clock = clock
        self._retry: dict[str, Any] = {"attempts": attempts, "base_delay": base_delay, "max_delay": max_delay}
        if sleep is not None:
            self._retry["sleep"] = sleep
        ttl = timedelta(seconds=cache_seconds)
        self._scopes: _TtlCache[tuple[ListedVm, ...]] = _TtlCache(ttl, clock)
        self._records: _TtlCache[Any] = _TtlCache(ttl, clock)
        self._vms: _TtlCache[VmTopology] = _TtlCache(ttl, clock)
        self._nsgs: _TtlCache[dict[str, Any]] = _TtlCache(ttl, clock)

    # ------------------------------------------------------------------ public

    def resolve(self, vm_id: str) -> VmTopology:
        """The VM's topology (cached); `NotFound` when no such VM exists."""
        parsed = parse_id(vm_id, "virtualMachines")  # refuse a non-VM id before any call
        key = vm_id.lower()
        cached = self._vms.get(key)
        if cached is not None:
            return cached[1]

        def load() -> tuple[datetime, VmTopology]:
            # The topology is as old as the VM record it is built from, so power state is never older than
            # the TTL, however the two caches interleave.
            read_at, vm = self._record(vm_id)
            return read_at, self._topology(vm, vm_id, parsed.subscription, parsed.resource_group, parsed.name)

        return self._vms.get_or_load(key, load)[1]

    def power_state(self, vm_id: str) -> str:
        """The power state from a cached resolve or VM record, else one ARM read (not the network path)."""
        resolved = self._vms.get(vm_id.lower())
        if resolved is not None:
            return resolved[1].power_state
        return _power_state(self._record(vm_id)[1])

    def list_vms(self, scope: str) -> list[VmTopology]:
        """Every VM in a subscription or resource group scope (the listing is cached).

        One ARM list per scope and TTL. Name, tags, OS and admin user come from the listing; power state and
        the network path are read only for the VMs whose `power_state`, `addresses` or `nsg_ids` are used
        (see `ListedVm`), so finding one VM by name resolves that VM alone.
        """
        parts = [p for p in scope.strip("/").split("/") if p]
        if len(parts) not in (2, 4) or parts[0].lower() != "subscriptions":
            raise InvalidRequest(f"{scope!r} is not /subscriptions/<id>[/resourceGroups/<name>]")
        key = "/".join(parts).lower()
        return list(self._scopes.get_or_load(key, lambda: self._list(scope, parts))[1])

    def nsg(self, nsg_id: str, *, fresh: bool = False) -> dict[str, Any]:
        """The NSG as data: `id`, `name`, `location`, `rules`, `default_rules` (cached unless `fresh`)."""
        key = nsg_id.lower()
        if not fresh:
            cached = self._nsgs.get(key)
            if cached is not None:
                return cached[1]
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
        self._nsgs.put(nsg_id.lower(), view)

    def invalidate(self, vm_id: str | None = None) -> None:
        """Forget one VM (or everything), e.g. after ARM said a cached NIC or NSG no longer exists."""
        if vm_id is None:
            for cache in (self._scopes, self._records, self._vms, self._nsgs):
                cache.clear()
        else:
            self._records.pop(vm_id.lower())
            self._vms.pop(vm_id.lower())

    # ------------------------------------------------------------------ reading ARM

    def _list(self, scope: str, parts: list[str]) -> tuple[datetime, tuple[ListedVm, ...]]:
        compute = self._clients.compute_client(parts[1])
        if len(parts) == 4:
            pager: Callable[[], Any] = lambda: list(compute.virtual_machines.list(parts[3]))  # noqa: E731
        else:
            pager = lambda: list(compute.virtual_machines.list_all())  # noqa: E731
        listed_at = self._clock()
        try:
            listed = arm_call(pager, what=f"listing VMs in {scope}", **self._retry)
        except ResourceNotFoundError:
            return listed_at, ()
        vms = [self._listed(vm) for vm in listed if vm.id]
        return listed_at, tuple(sorted(vms, key=lambda t: (t.resource_group.lower(), t.name.lower())))

    def _listed(self, vm: Any) -> ListedVm:
        parsed = parse_id(str(vm.id), "virtualMachines")
        os_profile = vm.os_profile
        storage = vm.storage_profile
        os_disk = storage.os_disk if storage else None
        return ListedVm(
            self,
            vm_id=str(vm.id),
            name=str(vm.name or parsed.name),
            subscription=parsed.subscription,
            resource_group=parsed.resource_group,
            location=str(vm.location or ""),
            os_type=_text(os_disk.os_type) if os_disk and os_disk.os_type else "",
            admin_username=os_profile.admin_username if os_profile else None,
            tags=dict(vm.tags or {}),
        )

    def _record(self, vm_id: str) -> tuple[datetime, Any]:
        """The VM as ARM returns it with `$expand=instanceView` (cached): one read."""
        parsed = parse_id(vm_id, "virtualMachines")
        compute = self._clients.compute_client(parsed.subscription)

        def load() -> tuple[datetime, Any]:
            read_at = self._clock()
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
            return read_at, vm

        return self._records.get_or_load(vm_id.lower(), load)

    def _topology(self, vm: Any, vm_id: str, subscription: str, resource_group: str, name: str) -> VmTopology:
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
            name=str(vm.name or name),
            subscription=subscription,
            resource_group=resource_group,
            location=str(vm.location or ""),
            os_type=_text(os_disk.os_type) if os_disk and os_disk.os_type else "",
            admin_username=os_profile.admin_username if os_profile else None,
            power_state=_power_state(vm),
            tags=dict(vm.tags or {}),
            addresses=tuple(addresses),
            nsg_ids=_dedupe(nsg_ids),
        )

    def _read_nic(self, nic_id: str) -> tuple[list[NicAddress], list[str]]:
        nic = self._network_read(
            nic_id,
            "networkInterfaces",
            "NIC",
            lambda net, r: net.network_interfaces.get(r.resource_group, r.name),
        )
        if nic is None:
            return [], []
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
        pip = self._network_read(
            str(ref.id),
            "publicIPAddresses",
            "public IP",
            lambda net, r: net.public_ip_addresses.get(r.resource_group, r.name),
        )
        if pip is None:
            return None, None
        fqdn = pip.dns_settings.fqdn if pip.dns_settings is not None else None
        return (str(pip.ip_address) if pip.ip_address else None), (str(fqdn) if fqdn else None)

    def _read_subnet_nsg(self, subnet_id: str) -> list[str]:
        subnet = self._network_read(
            subnet_id, "subnets", "subnet", lambda net, r: net.subnets.get(r.resource_group, r.parent, r.name)
        )
        nsg = subnet.network_security_group if subnet is not None else None
        return [str(nsg.id)] if nsg is not None and nsg.id else []

    def _network_read(
        self, resource_id: str, kind: str, label: str, get: Callable[[Any, ResourceId], Any]
    ) -> Any | None:
        """One network resource on a VM's path; None when it is gone (a dangling reference leads nowhere)."""
        parsed = parse_id(resource_id, kind)
        network = self._clients.network_client(parsed.subscription)
        try:
            what = f"reading {label} {parsed.name}"
            return arm_call(lambda: get(network, parsed), what=what, **self._retry)
        except ResourceNotFoundError:
            return None


class ListedVm(VmTopology):
    """A VM as its scope's listing shows it: name, tags, OS and admin user at hand; power state, addresses and
    NSGs read through the reader (cached) the first time they are used, so a listing costs one ARM read and
    a name lookup resolves only the VM it finds. A VM deleted since the listing has power state `deleted`.
    """

    def __init__(
        self,
        reader: TopologyReader,
        *,
        vm_id: str,
        name: str,
        subscription: str,
        resource_group: str,
        location: str,
        os_type: str,
        admin_username: str | None,
        tags: dict[str, str],
    ) -> None:
        listed = {
            "vm_id": vm_id,
            "name": name,
            "subscription": subscription,
            "resource_group": resource_group,
            "location": location,
            "os_type": os_type,
            "admin_username": admin_username,
            "tags": tags,
            "_reader": reader,
        }
        for field, value in listed.items():
            object.__setattr__(self, field, value)  # frozen, as VmTopology is

    @property
    def power_state(self) -> str:
        """Read on first use (one ARM read, or none when the VM is cached)."""
        try:
            return self._reader.power_state(self.vm_id)
        except NotFound:
            return DELETED

    @property
    def addresses(self) -> tuple[NicAddress, ...]:
        """Resolved on first use (the VM, its NICs, public IPs and subnets)."""
        return self._reader.resolve(self.vm_id).addresses

    @property
    def nsg_ids(self) -> tuple[str, ...]:
        """Resolved on first use, like `addresses`."""
        return self._reader.resolve(self.vm_id).nsg_ids

    _reader: TopologyReader

    def __repr__(self) -> str:
        return f"ListedVm(vm_id={self.vm_id!r}, name={self.name!r}, tags={self.tags!r})"


class _TtlCache(Generic[T]):
    """Values kept for a TTL from when they were read; concurrent misses on one key load once."""

    def __init__(self, ttl: timedelta, clock: Clock) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[datetime, T]] = {}
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str) -> tuple[datetime, T] | None:
        """(read at, value), or None when absent or older than the TTL."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() - entry[0] >= self._ttl:
                del self._entries[key]
                return None
            return entry

    def put(self, key: str, value: T, *, at: datetime | None = None) -> None:
        """Keep `value` as read at `at` (now by default); nothing is kept when the TTL is zero."""
        if self._ttl <= timedelta(0):
            return
        with self._lock:
            self._entries[key] = (self._clock() if at is None else at, value)

    def get_or_load(self, key: str, load: Callable[[], tuple[datetime, T]]) -> tuple[datetime, T]:
        """The cached entry, else `load()`'s (read at, value), loaded by one caller while the others wait."""
        entry = self.get(key)
        if entry is not None:
            return entry
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            entry = self.get(key)
            if entry is not None:
                return entry
            at, value = load()
            self.put(key, value, at=at)
            return at, value

    def pop(self, key: str) -> None:
        """Forget one key."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()


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


_WARM_ID = "/subscriptions/s/resourceGroups/r/providers"
_warmed = threading.Lock()
_warm_done: list[bool] = []


def warm_sdk_models() -> None:
    """Build each ARM model class topology reads once, on this thread, before a burst does it on many.

    The generated azure-mgmt models set a class up on its first use without a lock; threads meeting a cold
    class at the same moment can see it half set up (a NIC's IP configuration read as a plain dict). A
    process builds them here once, at start, so requests never race that set-up.
    """
    with _warmed:
        if _warm_done:
            return
        from azure.mgmt.compute.models import VirtualMachine
        from azure.mgmt.network.models import NetworkInterface, PublicIPAddress, Subnet

        nsg = {"id": f"{_WARM_ID}/Microsoft.Network/networkSecurityGroups/n"}
        vm = VirtualMachine(
            {
                "location": "westeurope",
                "tags": {},
                "properties": {
                    "storageProfile": {"osDisk": {"osType": "Linux", "createOption": "FromImage"}},
                    "osProfile": {"adminUsername": "u", "computerName": "c"},
                    "networkProfile": {"networkInterfaces": [{"id": f"{_WARM_ID}/nic"}]},
                    "instanceView": {"statuses": [{"code": "PowerState/running"}]},
                },
            }
        )
        _ = (
            vm.storage_profile.os_disk.os_type,
            vm.os_profile.admin_username,
            [r.id for r in vm.network_profile.network_interfaces or []],
            [s.code for s in vm.instance_view.statuses or []],
        )
        nic = NetworkInterface(
            {
                "properties": {
                    "ipConfigurations": [
                        {
                            "properties": {
                                "privateIPAddress": "192.0.2.1",
                                "privateIPAddressVersion": "IPv4",
                                "subnet": {"id": f"{_WARM_ID}/subnet"},
                                "publicIPAddress": {"id": f"{_WARM_ID}/pip"},
                            }
                        }
                    ],
                    "networkSecurityGroup": nsg,
                }
            }
        )
        _ = (
            [
                (c.private_ip_address, c.private_ip_address_version, c.subnet.id, c.public_ip_address.id)
                for c in nic.ip_configurations or []
            ],
            nic.network_security_group.id,
        )
        pip = PublicIPAddress({"properties": {"ipAddress": "198.51.100.1", "dnsSettings": {"fqdn": "f"}}})
        _ = (pip.ip_address, pip.dns_settings.fqdn)
        _ = Subnet({"properties": {"networkSecurityGroup": nsg}}).network_security_group.id
        _warm_done.append(True)
