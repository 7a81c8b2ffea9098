"""Pure rule planning: names carrying their expiry, strict ownership, priorities, sources, warnings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitbroker.errors import Conflict, InvalidRequest
from jitbroker.rules import (
    OpenSet,
    RulePlan,
    RuleView,
    as_rule_view,
    describe,
    exposure_warnings,
    is_broker_rule,
    normalise_sources,
    plan_rule,
    rule_expiry,
    rule_key,
    rule_name,
)

T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
BAND = (100, 199)


def arm_rule(
    name: str,
    priority: int,
    *,
    access: str = "Allow",
    direction: str = "Inbound",
    source: str = "*",
    dest: str = "*",
    port: str = "22",
    protocol: str = "Tcp",
    description: str = "",
    sources: list[str] | None = None,
) -> dict[str, Any]:
    """A rule as ARM JSON, the way the emulator and azure-mgmt serialise it."""
    props = {
        "priority": priority,
        "access": access,
        "direction": direction,
        "protocol": protocol,
        "sourcePortRange": "*",
        "destinationPortRange": port,
        "destinationAddressPrefix": dest,
        "description": description,
    }
    if sources is None:
        props["sourceAddressPrefix"] = source
    else:
        props["sourceAddressPrefixes"] = sources
    return {"name": name, "properties": props}


def broker_rule(
    ip: str, port: int, expires_at: datetime, priority: int, sources: tuple[str, ...] = ("203.0.113.10/32",)
) -> dict[str, Any]:
    """A rule exactly as the broker would have written it."""
    plan = plan_rule(
        [],
        vm_name="web-01",
        private_ip=ip,
        port=port,
        sources=sources,
        expires_at=expires_at,
        band=(priority, priority),
    )
    return {"name": plan.name, "properties": plan.arm_properties()}


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("ip", "port", "expires_at", "name"),
    [
        ("192.0.2.4", 22, T0, "jit-192.0.2.4-p22-x20300501T120000Z"),
        ("192.0.2.4", 3389, T0 + timedelta(microseconds=1), "jit-192.0.2.4-p3389-x20300501T120001Z"),
        ("2001:db8::4", 22, T0, "jit-2001.0db8.0000.0000.0000.0000.0000.0004-p22-x20300501T120000Z"),
    ],
)
def test_rule_names_carry_address_port_and_expiry_rounded_up(ip, port, expires_at, name):
    assert rule_name(ip, port, expires_at) == name
    assert len(name) <= 80
    assert rule_expiry(name) == (T0 if expires_at == T0 else T0 + timedelta(seconds=1))


def test_rule_key_round_trips_the_address_and_port():
    assert rule_key(rule_name("2001:db8::4", 443, T0)) == ("2001:db8::4", 443)
    assert rule_key(rule_name("192.0.2.4", 22, T0)) == ("192.0.2.4", 22)


@pytest.mark.parametrize(
    "name",
    [
        "AllowSSH",
        "jit-192.0.2.4-p22",
        "jit-192.0.2.4-p22-x20301301T120000Z",  # month 13
        "jit-192.0.2.4-p0-x20300501T120000Z",
        "jit-192.0.2.4-p70000-x20300501T120000Z",
        "jit-192.0.2.999-p22-x20300501T120000Z",
        "JIT-192.0.2.4-p22-x20300501T120000Z",
        "jit-192.0.2.4-p22-x20300501T120000Z-copy",
        "jit-2001.db8.0.0.0.0.0.4-p22-x20300501T120000Z",  # not the exploded form the broker writes
    ],
)
def test_names_the_broker_did_not_write_are_not_broker_rules_even_with_the_marker(name):
    assert rule_key(name) is None
    assert not is_broker_rule(arm_rule(name, 100, description="jit-broker: until 2030-05-01T12:00:00Z"))


# ---------------------------------------------------------------- ownership


def test_a_rule_the_broker_planned_is_recognised_as_its_own():
    assert is_broker_rule(broker_rule("192.0.2.4", 22, T0, 100))


@pytest.mark.parametrize(
    "rule",
    [
        arm_rule(
            "AllowSSH", 100, source="203.0.113.10/32", description="jit-broker: until 2030-05-01T12:00:00Z"
        ),
        arm_rule("jit-192.0.2.4-p22-x20300501T120000Z", 100, description="hand-made look-alike"),
        arm_rule(
            "jit-192.0.2.4-p22-x20300501T120000Z", 100, description="jit-broker: until 2031-01-01T00:00:00Z"
        ),
        arm_rule(
            "jit-192.0.2.4-p22-x20300501T120000Z",
            100,
            access="Deny",
            description="jit-broker: until 2030-05-01T12:00:00Z",
        ),
        arm_rule(
            "jit-192.0.2.4-p22-x20300501T120000Z",
            100,
            direction="Outbound",
            description="jit-broker: until 2030-05-01T12:00:00Z",
        ),
        arm_rule("SecurityCenter-JITRule-123", 100, description="jit-broker: until 2030-05-01T12:00:00Z"),
    ],
    ids=[
        "marker-but-foreign-name",
        "name-but-no-marker",
        "expiry-mismatch",
        "deny",
        "outbound",
        "defender-jit",
    ],
)
def test_rules_the_broker_did_not_write_are_never_taken_for_its_own(rule):
    assert not is_broker_rule(rule)


def test_description_lists_grant_ids_when_they_fit_and_a_digest_otherwise():
    short = describe(vm_name="web-01", expires_at=T0, sources=["203.0.113.10/32"], grant_ids=["g-1", "g-2"])
    assert short == "jit-broker: until 2030-05-01T12:00:00Z vm web-01 grants g-1,g-2"
    many = [f"g-{i:032x}" for i in range(20)]
    long = describe(vm_name="web-01", expires_at=T0, sources=["203.0.113.10/32"], grant_ids=many)
    assert len(long) <= 140
    assert long.startswith("jit-broker: until 2030-05-01T12:00:00Z vm web-01 grants 20 sha256:")
    no_ids = describe(vm_name="web-01", expires_at=T0, sources=["203.0.113.10/32", "203.0.113.11/32"])
    assert " sources 2 sha256:" in no_ids


# ---------------------------------------------------------------- sources


@pytest.mark.parametrize(
    ("sources", "ip", "expected"),
    [
        (
            ["203.0.113.11/32", "203.0.113.10/32", "203.0.113.10"],
            "192.0.2.4",
            ("203.0.113.10/32", "203.0.113.11/32"),
        ),
        (["203.0.113.0/24"], "192.0.2.4", ("203.0.113.0/24",)),
        (["2001:db8:1::10"], "2001:db8::4", ("2001:db8:1::10/128",)),
    ],
)
def test_sources_are_canonical_sorted_and_deduplicated(sources, ip, expected):
    assert normalise_sources(sources, ip) == expected


@pytest.mark.parametrize(
    ("source", "ip"),
    [
        ("*", "192.0.2.4"),
        ("Internet", "192.0.2.4"),
        ("0.0.0.0/0", "192.0.2.4"),
        ("::/0", "2001:db8::4"),
        ("VirtualNetwork", "192.0.2.4"),
        ("203.0.113.10/24", "192.0.2.4"),
        ("not-an-ip", "192.0.2.4"),
        ("2001:db8:1::10/128", "192.0.2.4"),
        ("203.0.113.10/32", "2001:db8::4"),
    ],
)
def test_sources_that_would_open_too_much_or_cannot_work_are_refused(source, ip):
    with pytest.raises(InvalidRequest):
        normalise_sources([source], ip)


# ---------------------------------------------------------------- planning


def plan(
    nsg_rules: list[Any],
    *,
    sources: tuple[str, ...] = ("203.0.113.10/32",),
    expires_at: datetime = T0,
    ip: str = "192.0.2.4",
    port: int = 22,
    band: tuple[int, int] = BAND,
) -> RulePlan:
    return plan_rule(
        nsg_rules,
        vm_name="web-01",
        private_ip=ip,
        port=port,
        sources=sources,
        expires_at=expires_at,
        band=band,
    )


def test_a_first_grant_plans_one_inbound_tcp_allow_to_the_private_ip_at_the_top_of_the_band():
    p = plan([arm_rule("DenySSH", 4000, access="Deny")])
    assert p.priority == 100
    assert p.replaces == () and not p.unchanged
    assert p.arm_properties() == {
        "description": "jit-broker: until 2030-05-01T12:00:00Z vm web-01 sources 1 sha256:"
        + p.description.rsplit("sha256:", 1)[1],
        "protocol": "Tcp",
        "sourcePortRange": "*",
        "destinationPortRange": "22",
        "sourceAddressPrefixes": ["203.0.113.10/32"],
        "destinationAddressPrefix": "192.0.2.4",
        "access": "Allow",
        "priority": 100,
        "direction": "Inbound",
    }


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ([("Inbound", 100)], 101),
        ([("Inbound", 100), ("Inbound", 101), ("Inbound", 103)], 102),
        ([("Outbound", 100)], 100),  # priorities are unique per direction only
        ([("Inbound", 99), ("Inbound", 200)], 100),
    ],
)
def test_priority_avoids_every_existing_priority_in_the_same_direction(taken, expected):
    rules = [arm_rule(f"r{i}", p, direction=d) for i, (d, p) in enumerate(taken)]
    assert plan(rules).priority == expected


def test_a_full_band_is_a_conflict_not_a_collision():
    rules = [arm_rule(f"r{p}", p) for p in range(100, 103)]
    with pytest.raises(Conflict, match="no free inbound priority"):
        plan(rules, band=(100, 102))


def test_same_expiry_and_sources_means_no_write_at_all():
    existing = broker_rule("192.0.2.4", 22, T0, 150)
    p = plan([existing])
    assert p.unchanged and p.priority == 150 and p.replaces == ()


def test_a_new_source_with_the_same_expiry_updates_the_rule_in_place():
    existing = broker_rule("192.0.2.4", 22, T0, 150)
    p = plan([existing], sources=("203.0.113.10/32", "203.0.113.11/32"))
    assert p.name == existing["name"] and p.priority == 150
    assert not p.unchanged and p.replaces == ()
    assert p.sources == ("203.0.113.10/32", "203.0.113.11/32")


def test_a_later_expiry_plans_a_new_rule_and_keeps_the_superseded_one_for_its_own_expiry():
    existing = broker_rule("192.0.2.4", 22, T0, 100)
    p = plan([existing], expires_at=T0 + timedelta(hours=1))
    assert p.name == "jit-192.0.2.4-p22-x20300501T130000Z"
    assert p.priority == 101  # the superseded rule keeps 100
    assert p.replaces == () and p.evicts == () and p.kept == (existing["name"],)


def test_a_superseded_rule_letting_in_a_source_the_plan_drops_is_replaced():
    existing = broker_rule("192.0.2.4", 22, T0, 100, sources=("203.0.113.10/32", "203.0.113.66/32"))
    p = plan([existing], expires_at=T0 + timedelta(hours=1))
    assert p.replaces == (existing["name"],) and p.kept == ()


def test_a_rule_that_would_outlast_the_plan_is_replaced():
    existing = broker_rule("192.0.2.4", 22, T0 + timedelta(hours=2), 100)
    p = plan([existing], expires_at=T0 + timedelta(hours=1))
    assert p.replaces == (existing["name"],) and p.kept == ()


def test_a_full_band_evicts_the_oldest_superseded_rule_of_the_key_before_the_write():
    oldest = broker_rule("192.0.2.4", 22, T0, 100)
    newer = broker_rule("192.0.2.4", 22, T0 + timedelta(minutes=30), 101)
    foreign = arm_rule("r102", 102)
    p = plan([newer, foreign, oldest], expires_at=T0 + timedelta(hours=1), band=(100, 102))
    assert p.evicts == (oldest["name"],) and p.priority == 100
    assert p.kept == (newer["name"],) and p.replaces == ()


def test_a_full_band_with_nothing_superseded_is_still_a_conflict():
    other_key = broker_rule("192.0.2.5", 22, T0, 100)
    rules = [other_key, arm_rule("r101", 101), arm_rule("r102", 102)]
    with pytest.raises(Conflict, match="no free inbound priority"):
        plan(rules, band=(100, 102))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (OpenSet(frozenset({"203.0.113.10/32"}), T0), OpenSet(frozenset({"203.0.113.10/32"}), T0), True),
        (
            OpenSet(frozenset({"203.0.113.10/32"}), T0, frozenset({"g-1"})),
            OpenSet(frozenset({"203.0.113.10/32"}), T0 + timedelta(microseconds=1), frozenset({"g-2"})),
            False,  # a later second: the rule's name changes
        ),
        (
            OpenSet(frozenset({"203.0.113.10/32"}), T0, frozenset({"g-1"})),
            OpenSet(frozenset({"203.0.113.10/32"}), T0, frozenset({"g-2"})),
            True,  # another grant from the same address lets in nobody new
        ),
        (OpenSet(frozenset(), None), OpenSet(frozenset(), None), True),
        (OpenSet(frozenset({"203.0.113.10/32"}), T0), OpenSet(frozenset(), None), False),
        (OpenSet(frozenset({"203.0.113.10/32"}), T0), OpenSet(frozenset({"203.0.113.11/32"}), T0), False),
    ],
)
def test_open_sets_compare_by_the_access_they_give(a, b, same):
    assert a.same_access(b) is same
    assert b.same_access(a) is same


def test_rules_for_other_ports_or_addresses_are_left_alone():
    other_port = broker_rule("192.0.2.4", 3389, T0, 100)
    other_vm = broker_rule("192.0.2.5", 22, T0, 101)
    p = plan([other_port, other_vm])
    assert p.replaces == () and p.priority == 102


def test_sdk_models_and_flat_views_plan_the_same_as_arm_json():
    from azure.mgmt.network import models

    raw = arm_rule("AllowWeb", 100, port="443")
    as_model = models.SecurityRule(raw)
    assert as_rule_view(as_model) == as_rule_view(raw) == as_rule_view(as_rule_view(raw).as_dict())
    assert plan([as_model]).priority == 101


def test_a_foreign_rule_holding_the_brokers_name_is_a_conflict_never_an_overwrite():
    look_alike = arm_rule("jit-192.0.2.4-p22-x20300501T120000Z", 150, description="made by hand")
    with pytest.raises(Conflict, match="did not write"):
        plan([look_alike])


def test_planning_refuses_an_empty_source_list():
    with pytest.raises(InvalidRequest):
        plan([], sources=())


# ---------------------------------------------------------------- warnings


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (arm_rule("AllowSSHAnywhere", 300, source="*"), "already allows port 22"),
        (arm_rule("AllowSSHInternet", 300, source="Internet", dest="192.0.2.0/24"), "already allows port 22"),
        (arm_rule("AllowMgmt", 300, source="0.0.0.0/0", port="20-30"), "already allows port 22"),
        (arm_rule("DenyAllSSH", 90, access="Deny"), "denies port 22 before"),
        (arm_rule("DenyCaller", 90, access="Deny", source="203.0.113.0/24"), "denies port 22 before"),
    ],
)
def test_warnings_name_broad_allows_and_winning_denies(rule, expected):
    warnings = exposure_warnings([rule], port=22, private_ip="192.0.2.4", band=BAND, source="203.0.113.10/32")
    assert len(warnings) == 1 and expected in warnings[0] and rule["name"] in warnings[0]


@pytest.mark.parametrize(
    "rule",
    [
        arm_rule("AllowSSHFromOffice", 300, source="198.51.100.7/32"),
        arm_rule("AllowWebAnywhere", 300, port="443"),
        arm_rule("AllowSSHToOtherVm", 300, dest="192.0.2.99"),
        arm_rule("AllowUdp", 300, protocol="Udp"),
        arm_rule("DenySSHLater", 4000, access="Deny"),
        arm_rule("DenyOtherCaller", 90, access="Deny", source="198.51.100.0/24"),
        arm_rule("AllowSSHOut", 300, direction="Outbound"),
    ],
)
def test_rules_that_do_not_touch_the_grant_raise_no_warning(rule):
    assert (
        exposure_warnings([rule], port=22, private_ip="192.0.2.4", band=BAND, source="203.0.113.10/32") == []
    )


def test_a_deny_at_the_bands_first_priority_wins_over_the_rule_the_broker_would_write_next_to_it():
    freeze = arm_rule("MaintenanceFreeze", BAND[0], access="Deny")
    alice = "203.0.113.10/32"
    warnings = exposure_warnings([freeze], port=22, private_ip="192.0.2.4", band=BAND, source=alice)
    assert len(warnings) == 1 and "MaintenanceFreeze" in warnings[0]
    assert f"priority {BAND[0] + 1}" in warnings[0]


def test_the_brokers_own_rules_never_count_as_broad_allows():
    assert (
        exposure_warnings([broker_rule("192.0.2.4", 22, T0, 100)], port=22, private_ip="192.0.2.4", band=BAND)
        == []
    )


def test_flat_views_are_what_topology_returns():
    view = RuleView("r", 100, "Inbound", "Allow", "Tcp", ("*",), ("*",), ("22",), "")
    assert exposure_warnings([view.as_dict()], port=22, private_ip="192.0.2.4", band=BAND)
