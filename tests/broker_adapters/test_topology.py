"""TopologyReader against the ARM emulator through the real azure-mgmt SDK and the lab's managed identity."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from jitbroker.errors import InvalidRequest, NotFound, UpstreamError, UpstreamThrottled
from jitbroker.topology import TopologyReader
from tests.broker_adapters.conftest import RG, SUBSCRIPTION, nsg_id, vm_id

T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def reads(arm_admin) -> int:
    """ARM reads since the log was cleared (LRO polls are not reads of a resource)."""
    return sum(
        1 for r in arm_admin.requests() if r["method"] == "GET" and "/operations" not in r["path"].lower()
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reader(clients, clock) -> TopologyReader:
    return TopologyReader(clients, cache_seconds=60, clock=clock, sleep=lambda _: None)


def test_a_vm_behind_a_nic_nsg_resolves_to_its_addresses_and_that_nsg(reader):
    web = reader.resolve(vm_id("web-01"))
    assert web.name == "web-01" and web.subscription == SUBSCRIPTION and web.resource_group == "rg-jit-demo"
    assert web.is_running and web.power_state == "running"
    assert web.os_type == "Linux" and web.admin_username
    assert web.tags == {"jit-ports": "22"}
    assert web.nsg_ids == (nsg_id("web-01-nsg"),)
    (address,) = web.addresses
    assert address.private_ip == "192.0.2.4" and address.version == 4
    assert address.public_ip == "198.51.100.10"
    assert address.fqdn == "web-01.westeurope.cloudapp.azure.com"
    assert address.subnet_id is not None and address.subnet_id.endswith("/subnets/web-subnet")


def test_a_vm_behind_a_subnet_nsg_only_finds_the_subnet_nsg(reader):
    assert reader.resolve(vm_id("win-01")).nsg_ids == (nsg_id("app-subnet-nsg"),)


def test_a_vm_behind_both_nsgs_finds_both_nic_first(reader):
    assert reader.resolve(vm_id("db-01")).nsg_ids == (nsg_id("db-01-nsg"), nsg_id("app-subnet-nsg"))


def test_a_vm_with_no_nsg_anywhere_has_none(reader):
    assert reader.resolve(vm_id("bare-01")).nsg_ids == ()


def test_a_dual_stack_vm_lists_both_address_families(reader):
    v6 = reader.resolve(vm_id("v6-01"))
    assert [(a.private_ip, a.version) for a in v6.addresses] == [("192.0.2.52", 4), ("2001:db8:0:1::4", 6)]


def test_a_deallocated_vm_says_so(reader):
    assert reader.resolve(vm_id("stopped-01")).power_state == "deallocated"


def test_an_unknown_vm_is_not_found(reader):
    with pytest.raises(NotFound):
        reader.resolve(vm_id("nope-01"))


def test_an_id_that_is_not_a_vm_is_refused_before_any_call(reader):
    with pytest.raises(InvalidRequest):
        reader.resolve(nsg_id("web-01-nsg"))


def test_a_recently_resolved_vm_costs_no_arm_read_until_the_cache_expires(reader, arm_admin, clock):
    reader.resolve(vm_id("db-01"))
    assert reads(arm_admin) >= 4  # VM, NIC, public IP, subnet
    arm_admin.clear_requests()
    clock.now += timedelta(seconds=59)
    reader.resolve(vm_id("db-01"))
    assert reads(arm_admin) == 0
    clock.now += timedelta(seconds=2)
    assert reader.resolve(vm_id("DB-01".lower())).name == "db-01"
    assert reads(arm_admin) >= 1


def test_power_changes_show_once_the_cache_is_invalidated(reader, arm_admin):
    assert reader.resolve(vm_id("web-01")).is_running
    arm_admin.set_power("web-01", "deallocated")
    assert reader.resolve(vm_id("web-01")).is_running  # cached
    reader.invalidate(vm_id("web-01"))
    assert not reader.resolve(vm_id("web-01")).is_running


def test_list_vms_lists_every_vm_in_a_resource_group_or_subscription(reader):
    names = [t.name for t in reader.list_vms(RG)]
    assert {"web-01", "win-01", "db-01", "bare-01", "v6-01"} <= set(names)
    assert names == sorted(names)
    everywhere = reader.list_vms(f"/subscriptions/{SUBSCRIPTION}")
    assert set(names) < {t.name for t in everywhere}
    assert {t.resource_group for t in everywhere} > {"rg-jit-demo"}


def test_a_scope_listing_is_one_arm_read_and_is_cached_until_the_ttl(reader, arm_admin, clock):
    listed = reader.list_vms(RG)
    assert len(listed) >= 5
    assert reads(arm_admin) == 1  # the list itself: no VM, NIC, public IP or subnet read
    arm_admin.clear_requests()
    clock.now += timedelta(seconds=59)
    same_scope_spelled_otherwise = RG.replace("rg-jit-demo", "RG-JIT-DEMO") + "/"
    assert [vm.vm_id for vm in reader.list_vms(same_scope_spelled_otherwise)] == [vm.vm_id for vm in listed]
    assert reads(arm_admin) == 0
    clock.now += timedelta(seconds=2)
    reader.list_vms(RG)
    assert reads(arm_admin) == 1


def test_finding_a_listed_vm_by_name_resolves_that_vm_alone(reader, arm_admin):
    (web,) = [vm for vm in reader.list_vms(RG) if vm.name == "web-01"]
    arm_admin.clear_requests()
    assert web.is_running
    assert web.nsg_ids == (nsg_id("web-01-nsg"),)
    assert web.addresses[0].private_ip == "192.0.2.4"
    paths = [r["path"] for r in arm_admin.requests()]
    assert len(paths) == 4, paths  # the VM, its NIC, its public IP, its subnet
    assert all("web-01" in p or "/subnets/" in p for p in paths), paths


def test_a_listed_vm_shows_what_resolving_its_id_shows(reader):
    for listed in reader.list_vms(RG):
        resolved = reader.resolve(listed.vm_id)
        for field in ("vm_id", "name", "subscription", "resource_group", "location", "os_type"):
            assert getattr(listed, field) == getattr(resolved, field), (listed.name, field)
        assert listed.admin_username == resolved.admin_username and listed.tags == resolved.tags
        assert listed.power_state == resolved.power_state
        assert listed.addresses == resolved.addresses and listed.nsg_ids == resolved.nsg_ids


def test_power_states_of_a_listing_cost_one_read_per_vm_and_no_network_reads(reader, arm_admin):
    listed = reader.list_vms(RG)
    arm_admin.clear_requests()
    states = {vm.name: vm.power_state for vm in listed}
    assert states["web-01"] == "running" and states["stopped-01"] == "deallocated"
    paths = [r["path"] for r in arm_admin.requests()]
    assert len(paths) == len(listed)
    assert all("/virtualMachines/" in p for p in paths), paths
    arm_admin.clear_requests()
    assert listed[0].nsg_ids is not None  # resolving reuses the VM read: only the network path is new
    assert not any("/virtualMachines/" in r["path"] for r in arm_admin.requests())


def test_a_vm_deleted_after_its_scope_was_listed_says_deleted(reader, arm_admin):
    (web,) = [vm for vm in reader.list_vms(RG) if vm.name == "web-01"]
    arm_admin.add_fault(
        method="GET", match="virtualMachines/web-01", count=10, status=404, code="ResourceNotFound"
    )
    assert web.power_state == "deleted" and not web.is_running
    with pytest.raises(NotFound):
        web.nsg_ids  # noqa: B018


def test_a_topology_is_no_fresher_than_the_vm_read_it_was_built_from(reader, arm_admin, clock):
    (web,) = [vm for vm in reader.list_vms(RG) if vm.name == "web-01"]
    assert web.power_state == "running"  # the VM read, at T0
    clock.now += timedelta(seconds=50)
    arm_admin.set_power("web-01", "deallocated")
    assert reader.resolve(vm_id("web-01")).is_running  # built from the T0 read, still within its TTL
    clock.now += timedelta(seconds=11)
    assert not reader.resolve(vm_id("web-01")).is_running


def test_concurrent_cold_resolves_of_one_vm_read_arm_once(reader, arm_admin):
    arm_admin.set_knobs(latency_ms={"read": 150})
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda _: reader.resolve(vm_id("db-01")), range(8)))
    assert {t.nsg_ids for t in found} == {(nsg_id("db-01-nsg"), nsg_id("app-subnet-nsg"))}
    vm_reads = [r for r in arm_admin.requests() if r["path"].lower().endswith("/virtualmachines/db-01")]
    assert len(vm_reads) == 1
    assert reads(arm_admin) == 4  # VM, NIC, public IP, subnet


def test_concurrent_listings_of_one_scope_read_arm_once(reader, arm_admin):
    arm_admin.set_knobs(latency_ms={"read": 150})
    with ThreadPoolExecutor(max_workers=8) as pool:
        listed = list(pool.map(lambda _: reader.list_vms(RG), range(8)))
    assert len({tuple(vm.vm_id for vm in one) for one in listed}) == 1
    assert reads(arm_admin) == 1


def test_without_a_cache_every_listing_reads_arm(clients, arm_admin, clock):
    uncached = TopologyReader(clients, cache_seconds=0, clock=clock, sleep=lambda _: None)
    uncached.list_vms(RG)
    uncached.list_vms(RG)
    assert reads(arm_admin) == 2


def test_list_vms_refuses_a_malformed_scope(reader):
    with pytest.raises(InvalidRequest):
        reader.list_vms("/resourceGroups/rg")


def test_an_nsg_view_has_every_rule_flat_and_the_defaults(reader):
    view = reader.nsg(nsg_id("web-01-nsg"))
    assert view["name"] == "web-01-nsg"
    by_name = {r["name"]: r for r in view["rules"]}
    assert by_name["deny-management-inbound"]["destination_ports"] == ["22", "3389"]
    assert by_name["allow-https-inbound"]["source_prefixes"] == ["Internet"]
    assert {r["name"] for r in view["default_rules"]} >= {"DenyAllInBound", "AllowVnetInBound"}


def test_transient_arm_failures_are_retried(reader, arm_admin):
    arm_admin.add_fault(method="GET", match="virtualMachines/web-01", count=2, status=500)
    assert reader.resolve(vm_id("web-01")).name == "web-01"


def test_a_hung_read_times_out_and_is_retried(reader, arm_admin):
    arm_admin.add_fault(method="GET", match="networkInterfaces/web-01-nic", count=1, hang_ms=4000)
    assert reader.resolve(vm_id("web-01")).addresses


def test_arm_that_keeps_failing_is_an_upstream_error(reader, arm_admin):
    arm_admin.add_fault(method="GET", match="virtualMachines/web-01", count=10, status=500)
    with pytest.raises(UpstreamError) as caught:
        reader.resolve(vm_id("web-01"))
    assert not isinstance(caught.value, UpstreamThrottled)


def test_arm_that_keeps_throttling_is_reported_as_throttling(reader, arm_admin):
    arm_admin.add_fault(
        method="GET",
        match="virtualMachines/web-01",
        count=10,
        status=429,
        code="SubscriptionRequestsThrottled",
        retry_after=1,
    )
    with pytest.raises(UpstreamThrottled):
        reader.resolve(vm_id("web-01"))
