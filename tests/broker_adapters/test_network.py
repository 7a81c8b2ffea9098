"""NsgWriter against the ARM emulator through the real SDK: coalesced rules, ownership, conflicts, LROs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitbroker.errors import Conflict, InvalidRequest, NotAllowed, NotFound, UpstreamError
from jitbroker.model import NsgRuleRef
from jitbroker.network import NsgWriter
from jitbroker.rules import OpenSet, is_broker_rule, plan_rule, rule_expiry
from jitbroker.topology import TopologyReader
from tests.broker_adapters.conftest import nsg_id, vm_id

T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
NOW = T0 - timedelta(hours=1)  # the writer's clock: rules written for T0 have not expired yet
WEB_NSG = nsg_id("web-01-nsg")
RULE_WRITE = "Microsoft.Network/networkSecurityGroups/securityRules/write"
RULE_DELETE = "Microsoft.Network/networkSecurityGroups/securityRules/delete"
NSG_WRITE = "Microsoft.Network/networkSecurityGroups/write"
ALICE, BOB = "203.0.113.10/32", "203.0.113.11/32"


def reads(arm_admin) -> int:
    """Reads of resources (LRO status polls excluded)."""
    return sum(
        1 for r in arm_admin.requests() if r["method"] == "GET" and "/operations/" not in r["path"].lower()
    )


def rules_of(arm_admin, nsg: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in arm_admin.nsg(nsg)["properties"]["securityRules"]}


def without_etags(rules: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rules as their owner wrote them: ARM re-stamps every child etag when any rule of the NSG changes."""
    return {name: {k: v for k, v in rule.items() if k != "etag"} for name, rule in rules.items()}


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def writer(clients, sleeps) -> NsgWriter:
    return NsgWriter(
        clients, clock=lambda: NOW, lro_timeout=5, poll_interval=0.05, sleep=sleeps.append, base_delay=0.01
    )


def sync(writer: NsgWriter, sources: set[str], expires_at: datetime = T0, **kw: Any) -> NsgRuleRef | None:
    args: dict[str, Any] = {"vm_name": "web-01", "private_ip": "192.0.2.4", "port": 22} | kw
    return writer.sync_rule(WEB_NSG, sources=sources, expires_at=expires_at, **args)


def opened(writer: NsgWriter, sources: set[str], expires_at: datetime = T0, **kw: Any) -> NsgRuleRef:
    """`sync` for a wish with sources: it must answer with the rule it wrote."""
    ref = sync(writer, sources, expires_at, **kw)
    assert ref is not None
    return ref


def test_a_first_grant_writes_one_inbound_allow_and_leaves_every_other_rule_as_it_was(writer, arm_admin):
    before = without_etags(rules_of(arm_admin, "web-01-nsg"))
    arm_admin.clear_requests()

    ref = sync(writer, {ALICE})

    assert ref == NsgRuleRef(WEB_NSG, "jit-192.0.2.4-p22-x20300501T120000Z", 100)
    after = rules_of(arm_admin, "web-01-nsg")
    ours = after.pop(ref.rule_name)
    assert without_etags(after) == before
    props = ours["properties"]
    assert props["access"] == "Allow" and props["direction"] == "Inbound" and props["protocol"] == "Tcp"
    assert props["priority"] == 100 and props["destinationPortRange"] == "22"
    assert props["destinationAddressPrefix"] == "192.0.2.4"
    assert props["sourceAddressPrefixes"] == [ALICE]
    assert is_broker_rule(ours)
    assert arm_admin.count(RULE_WRITE) == 1 and arm_admin.count(NSG_WRITE) == 0
    assert reads(arm_admin) == 1  # the NSG itself; no final GET after the PUT


def test_a_second_source_with_the_same_expiry_updates_the_same_rule(writer, arm_admin):
    first = opened(writer, {ALICE})
    arm_admin.clear_requests()
    second = sync(writer, {ALICE, BOB})
    assert second == first
    rule = rules_of(arm_admin, "web-01-nsg")[first.rule_name]
    assert sorted(rule["properties"]["sourceAddressPrefixes"]) == [ALICE, BOB]
    assert arm_admin.count(RULE_WRITE) == 1 and arm_admin.count(RULE_DELETE) == 0


def test_the_same_wish_twice_costs_no_write(writer, arm_admin):
    sync(writer, {ALICE})
    arm_admin.clear_requests()
    sync(writer, {ALICE})
    assert arm_admin.count(RULE_WRITE) == 0 and reads(arm_admin) == 1


def test_a_later_expiry_costs_one_write_and_leaves_the_superseded_rule_for_its_own_expiry(writer, arm_admin):
    old = opened(writer, {ALICE})
    arm_admin.clear_requests()
    new = sync(writer, {ALICE, BOB}, T0 + timedelta(hours=1))
    assert new is not None and new.rule_name != old.rule_name
    assert rule_expiry(new.rule_name) == T0 + timedelta(hours=1)
    assert arm_admin.count(RULE_WRITE) == 1 and arm_admin.count(RULE_DELETE) == 0
    ours = {r["name"]: r for r in rules_of(arm_admin, "web-01-nsg").values() if is_broker_rule(r)}
    assert set(ours) == {old.rule_name, new.rule_name}
    assert sorted(ours[new.rule_name]["properties"]["sourceAddressPrefixes"]) == [ALICE, BOB]
    assert ours[old.rule_name]["properties"]["sourceAddressPrefixes"] == [ALICE]  # a subset, ends earlier


def test_removing_a_source_deletes_every_superseded_rule_that_still_lets_it_in(writer, arm_admin):
    old = opened(writer, {ALICE})
    opened(writer, {ALICE, BOB}, T0 + timedelta(hours=1))
    kept = sync(writer, {BOB}, T0 + timedelta(hours=1))
    assert kept is not None
    ours = [r for r in rules_of(arm_admin, "web-01-nsg").values() if is_broker_rule(r)]
    assert [r["name"] for r in ours] == [kept.rule_name] and old.rule_name != kept.rule_name
    assert ours[0]["properties"]["sourceAddressPrefixes"] == [BOB]


def test_a_shorter_open_set_replaces_a_rule_that_would_outlast_it_without_a_gap(writer, arm_admin):
    later = opened(writer, {ALICE, BOB}, T0 + timedelta(hours=1))
    arm_admin.clear_requests()
    earlier = opened(writer, {ALICE})
    assert [r["name"] for r in rules_of(arm_admin, "web-01-nsg").values() if is_broker_rule(r)] == [
        earlier.rule_name
    ]
    methods = [(r["method"], r["path"]) for r in arm_admin.requests() if r["method"] in ("PUT", "DELETE")]
    assert methods[0][0] == "PUT" and earlier.rule_name in methods[0][1]  # the new door opens first
    assert methods[1][0] == "DELETE" and later.rule_name in methods[1][1]


def test_superseded_rules_are_evicted_when_the_band_has_no_free_priority(clients, arm_admin):
    writer = NsgWriter(clients, clock=lambda: NOW, priority_band=(100, 102), poll_interval=0.05)
    for hours in range(3):
        sync(writer, {ALICE}, T0 + timedelta(hours=hours))
    assert len([r for r in rules_of(arm_admin, "web-01-nsg").values() if is_broker_rule(r)]) == 3
    newest = opened(writer, {ALICE, BOB}, T0 + timedelta(hours=3))
    ours = {r["name"]: r for r in rules_of(arm_admin, "web-01-nsg").values() if is_broker_rule(r)}
    assert newest.rule_name in ours and len(ours) == 3
    assert "jit-192.0.2.4-p22-x20300501T120000Z" not in ours  # the oldest made room


def test_a_superseded_rule_whose_own_expiry_passed_is_deleted_by_the_next_write(clients, arm_admin):
    early = NsgWriter(clients, clock=lambda: NOW, poll_interval=0.05)
    old = opened(early, {ALICE})
    late = NsgWriter(clients, clock=lambda: T0 + timedelta(seconds=1), poll_interval=0.05)
    new = opened(late, {ALICE}, T0 + timedelta(hours=1))
    names = [r["name"] for r in rules_of(arm_admin, "web-01-nsg").values() if is_broker_rule(r)]
    assert names == [new.rule_name] and old.rule_name != new.rule_name


def test_converge_writes_until_the_rule_matches_what_is_open_after_the_write(writer, arm_admin):
    """Another process changes the open set while this one writes: the writer reads it again after its
    write and writes again, in either direction (a source missing, or one too many)."""
    answers = iter(
        [
            OpenSet(frozenset({ALICE}), T0),  # read right before the first write
            OpenSet(frozenset({ALICE, BOB}), T0),  # after it: bob was granted meanwhile
            OpenSet(frozenset({BOB}), T0),  # before the second write: alice was revoked meanwhile
        ]
    )
    last = [OpenSet(frozenset({BOB}), T0)]

    def wanted() -> OpenSet:
        return next(answers, last[0])

    ref = writer.converge(WEB_NSG, vm_name="web-01", private_ip="192.0.2.4", port=22, wanted=wanted)
    assert ref is not None
    (rule,) = [r for r in rules_of(arm_admin, "web-01-nsg").values() if is_broker_rule(r)]
    assert rule["properties"]["sourceAddressPrefixes"] == [BOB]


def test_an_open_set_that_never_settles_is_bounded_by_time(clients, arm_admin):
    ticks = iter(range(0, 10_000, 50))
    writer = NsgWriter(
        clients, clock=lambda: T0, poll_interval=0.05, converge_timeout=120, monotonic=lambda: next(ticks)
    )
    flip = iter(range(1_000_000))

    def wanted() -> OpenSet:
        return OpenSet(frozenset({ALICE} if next(flip) % 2 else {BOB}), T0)

    with pytest.raises(UpstreamError, match="kept changing"):
        writer.converge(WEB_NSG, vm_name="web-01", private_ip="192.0.2.4", port=22, wanted=wanted)


def test_no_sources_removes_the_rule_and_is_idempotent(writer, arm_admin):
    ref = opened(writer, {ALICE})
    assert sync(writer, set()) is None
    assert ref.rule_name not in rules_of(arm_admin, "web-01-nsg")
    arm_admin.clear_requests()
    assert sync(writer, set()) is None
    assert arm_admin.count(RULE_DELETE) == 0


def test_rules_for_other_ports_and_vms_are_independent(writer, arm_admin):
    ssh = opened(writer, {ALICE})
    https = opened(writer, {ALICE}, port=8443)
    assert ssh.priority != https.priority
    sync(writer, set(), port=8443)
    assert ssh.rule_name in rules_of(arm_admin, "web-01-nsg")


def test_ipv6_rules_use_the_vms_ipv6_address(writer, arm_admin):
    ref = writer.sync_rule(
        nsg_id("v6-01-nsg"),
        vm_name="v6-01",
        private_ip="2001:db8:0:1::4",
        port=22,
        sources={"2001:db8:ffff::10/128"},
        expires_at=T0,
    )
    rule = rules_of(arm_admin, "v6-01-nsg")[ref.rule_name]
    assert rule["properties"]["destinationAddressPrefix"] == "2001:db8:0:1::4"
    assert rule["properties"]["sourceAddressPrefixes"] == ["2001:db8:ffff::10/128"]


def test_a_source_of_the_wrong_family_is_refused_before_any_write(writer, arm_admin):
    arm_admin.clear_requests()
    with pytest.raises(InvalidRequest):
        sync(writer, {"2001:db8:ffff::10/128"})
    assert arm_admin.count(RULE_WRITE) == 0


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        ({"status": 409, "code": "AnotherOperationInProgress"}, None),
        ({"status": 429, "code": "RetryableErrorDueToAnotherOperation", "retry_after": 3}, 3.0),
        ({"status": 400, "code": "SecurityRuleConflict"}, None),
        ({"status": 503, "code": "ServiceUnavailable"}, None),
        ({"lro_status": "Canceled", "code": "Canceled"}, None),
    ],
    ids=["another-operation", "throttled-by-lock", "priority-conflict", "transient-5xx", "superseded-lro"],
)
def test_refusals_arm_means_as_try_again_are_retried_with_a_fresh_plan(
    writer, arm_admin, sleeps, fault, retry_after
):
    arm_admin.add_fault(method="PUT", match="securityRules/jit-", count=1, **fault)
    ref = opened(writer, {ALICE})
    assert ref.rule_name in rules_of(arm_admin, "web-01-nsg")
    assert (
        arm_admin.count("Microsoft.Network/networkSecurityGroups/read") == 2
    )  # planned again from a fresh read
    assert len(sleeps) == 1
    if retry_after is not None:
        assert sleeps == [retry_after]


def test_a_failed_long_running_operation_is_an_upstream_error_and_leaves_no_rule(writer, arm_admin):
    arm_admin.add_fault(
        method="PUT", match="securityRules/jit-", count=1, lro_status="Failed", code="InvalidRequestFormat"
    )
    with pytest.raises(UpstreamError, match="InvalidRequestFormat"):
        sync(writer, {ALICE})
    assert not [r for r in rules_of(arm_admin, "web-01-nsg").values() if is_broker_rule(r)]


def test_a_long_running_operation_that_never_ends_is_bounded(clients, arm_admin, sleeps):
    arm_admin.set_knobs(lro_ms=60_000)
    impatient = NsgWriter(
        clients, clock=lambda: T0, lro_timeout=0.3, poll_interval=0.05, attempts=2, sleep=sleeps.append
    )
    plan = plan_rule(
        [], vm_name="web-01", private_ip="192.0.2.4", port=22, sources=[ALICE], expires_at=T0, band=(100, 199)
    )
    with pytest.raises(UpstreamError):
        impatient.put_rule(WEB_NSG, plan)  # gave up waiting, tried again, found ARM still busy
    assert len(sleeps) == 1


def test_a_hung_write_times_out_and_is_retried(writer, arm_admin):
    arm_admin.add_fault(method="PUT", match="securityRules/jit-", count=1, hang_ms=4000)
    ref = opened(writer, {ALICE})
    assert ref.rule_name in rules_of(arm_admin, "web-01-nsg")


def test_arm_that_keeps_refusing_ends_in_an_upstream_error(writer, arm_admin):
    arm_admin.add_fault(
        method="PUT", match="securityRules/jit-", count=50, status=409, code="AnotherOperationInProgress"
    )
    with pytest.raises(UpstreamError, match="AnotherOperationInProgress"):
        sync(writer, {ALICE})


def test_fifty_concurrent_wishes_for_one_rule_share_a_few_arm_writes(writer, arm_admin):
    arm_admin.set_knobs(latency_ms={"read": 0, "write": 150, "delete": 0, "poll": 0})
    arm_admin.clear_requests()
    everyone = {f"203.0.113.{i}/32" for i in range(1, 51)}
    results: list[NsgRuleRef | None] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(sync(writer, everyone))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert arm_admin.count(RULE_WRITE) <= 2
    (rule,) = [r for r in rules_of(arm_admin, "web-01-nsg").values() if is_broker_rule(r)]
    assert set(rule["properties"]["sourceAddressPrefixes"]) == everyone


def test_two_broker_processes_racing_on_one_nsg_end_with_distinct_priorities(clients, arm_admin, sleeps):
    arm_admin.set_knobs(latency_ms={"read": 100, "write": 100, "delete": 0, "poll": 0})
    a = NsgWriter(clients, clock=lambda: T0, poll_interval=0.05, sleep=lambda s: None, base_delay=0.01)
    b = NsgWriter(clients, clock=lambda: T0, poll_interval=0.05, sleep=lambda s: None, base_delay=0.01)
    refs: dict[str, NsgRuleRef | None] = {}
    threads = [
        threading.Thread(target=lambda: refs.__setitem__("a", sync(a, {ALICE}, port=22))),
        threading.Thread(target=lambda: refs.__setitem__("b", sync(b, {BOB}, port=8022))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refs["a"] is not None and refs["b"] is not None
    assert refs["a"].priority != refs["b"].priority
    current = rules_of(arm_admin, "web-01-nsg")
    assert refs["a"].rule_name in current and refs["b"].rule_name in current


def test_put_rule_re_plans_the_priority_when_another_writer_took_it(writer, arm_admin):
    plan = plan_rule(
        [], vm_name="web-01", private_ip="192.0.2.4", port=22, sources=[ALICE], expires_at=T0, band=(100, 199)
    )
    arm_admin.add_fault(
        method="PUT", match="securityRules/jit-", count=1, status=400, code="SecurityRuleConflict"
    )
    ref = writer.put_rule(WEB_NSG, plan)
    assert ref.rule_name == plan.name
    assert rules_of(arm_admin, "web-01-nsg")[plan.name]["properties"]["priority"] == ref.priority


def test_delete_rule_removes_a_broker_rule_and_treats_a_missing_one_as_done(writer, arm_admin):
    ref = opened(writer, {ALICE})
    writer.delete_rule(WEB_NSG, ref.rule_name)
    assert ref.rule_name not in rules_of(arm_admin, "web-01-nsg")
    writer.delete_rule(WEB_NSG, ref.rule_name)


def test_delete_rule_never_touches_a_rule_the_broker_did_not_write(writer, clients, arm_admin):
    from azure.mgmt.network.models import SecurityRule

    network = clients.network_client(WEB_NSG.split("/")[2])
    look_alike = "jit-192.0.2.4-p22-x20300501T120000Z"
    network.security_rules.begin_create_or_update(
        "rg-jit-demo",
        "web-01-nsg",
        look_alike,
        SecurityRule(
            {
                "properties": {
                    "priority": 150,
                    "access": "Allow",
                    "direction": "Inbound",
                    "protocol": "Tcp",
                    "sourceAddressPrefix": "198.51.100.0/24",
                    "sourcePortRange": "*",
                    "destinationAddressPrefix": "*",
                    "destinationPortRange": "22",
                    "description": "hand-made by the network team",
                }
            }
        ),
        polling_interval=0.05,
    ).result()
    before = rules_of(arm_admin, "web-01-nsg")
    with pytest.raises(NotAllowed):
        writer.delete_rule(WEB_NSG, look_alike)
    with pytest.raises(NotAllowed):
        writer.delete_rule(WEB_NSG, "deny-management-inbound")
    assert rules_of(arm_admin, "web-01-nsg") == before
    assert writer.broker_rules(WEB_NSG) == []
    with pytest.raises(Conflict, match="did not write"):
        sync(writer, {ALICE})  # the broker's own name for this rule is taken: refuse, never overwrite
    assert rules_of(arm_admin, "web-01-nsg") == before
    ref = sync(writer, {ALICE}, T0 + timedelta(minutes=1))  # another name: planned around the look-alike
    assert ref is not None and ref.priority != 150
    assert without_etags(rules_of(arm_admin, "web-01-nsg"))[look_alike] == without_etags(before)[look_alike]


def test_an_nsg_that_is_gone_has_nothing_to_close_but_cannot_be_opened(writer):
    gone = nsg_id("no-such-nsg")
    assert (
        writer.sync_rule(gone, vm_name="x", private_ip="192.0.2.4", port=22, sources=set(), expires_at=T0)
        is None
    )
    with pytest.raises(NotFound):
        writer.sync_rule(gone, vm_name="x", private_ip="192.0.2.4", port=22, sources={ALICE}, expires_at=T0)


def test_broker_rules_lists_only_the_brokers_rules(writer):
    ref = opened(writer, {ALICE})
    assert [r.name for r in writer.broker_rules(WEB_NSG)] == [ref.rule_name]
    assert writer.broker_rules(nsg_id("no-such-nsg")) == []


def test_a_warm_grant_costs_one_read_and_one_write_per_nsg(clients, arm_admin):
    topology = TopologyReader(clients, cache_seconds=60, clock=lambda: T0)
    writer = NsgWriter(clients, clock=lambda: T0, poll_interval=0.05, topology=topology)
    topology.resolve(vm_id("db-01"))
    arm_admin.clear_requests()

    vm = topology.resolve(vm_id("db-01"))
    for nsg in vm.nsg_ids:
        writer.sync_rule(
            nsg,
            vm_name=vm.name,
            private_ip=vm.addresses[0].private_ip,
            port=22,
            sources={ALICE},
            expires_at=T0,
        )
        topology.nsg(nsg)  # warnings read the view the writer just cached

    assert len(vm.nsg_ids) == 2
    assert reads(arm_admin) == 2
    assert arm_admin.count(RULE_WRITE) == 2 and arm_admin.count(NSG_WRITE) == 0


def test_before_write_hears_of_every_nsg_ahead_of_the_write(clients, arm_admin):
    touched: list[str] = []
    writer = NsgWriter(clients, clock=lambda: T0, poll_interval=0.05, before_write=touched.append)
    sync(writer, {ALICE})
    assert touched == [WEB_NSG]
