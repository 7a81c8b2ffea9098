"""Rule naming, strict ownership, descriptions, sources, lookup by key and warnings.

Planning an NSG's whole rule collection is `jitbroker.nsgplan`'s (tests/broker_adapters/test_nsgplan.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitbroker import nsgplan
from jitbroker.errors import InvalidRequest
from jitbroker.model import Opening
from jitbroker.rules import (
    RuleView,
    as_rule_view,
    describe,
    exposure_warnings,
    is_broker_rule,
    normalise_sources,
    rule_expiry,
    rule_key,
    rule_name,
    rules_for_key,
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
    """A rule exactly as the broker writes it: its name and description, one inbound TCP allow."""
    return {
        "name": rule_name(ip, port, expires_at),
        "properties": {
            "description": describe(
                vm_name="web-01", expires_at=expires_at, sources=sources, grant_ids=["g-1"]
            ),
            "protocol": "Tcp",
            "sourcePortRange": "*",
            "destinationPortRange": str(port),
            "sourceAddressPrefixes": list(sources),
            "destinationAddressPrefix": ip,
            "access": "Allow",
            "priority": priority,
            "direction": "Inbound",
        },
    }


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
    openings = [
        Opening(
            "g-1",
            "alice",
            "vm-web-01",
            "web-01",
            "192.0.2.4",
            22,
            "203.0.113.10/32",
            T0,
            T0 - timedelta(hours=1),
        ),
        Opening(
            "g-2",
            "bob",
            "vm-web-01",
            "web-01",
            "2001:db8::4",
            3389,
            "2001:db8:1::10",
            T0,
            T0 - timedelta(hours=1),
        ),
    ]
    plan = nsgplan.plan_nsg([], nsgplan.desired_state(openings, T0 - timedelta(minutes=1)), BAND)
    assert len(plan.security_rules) == 2
    assert all(is_broker_rule(rule) for rule in plan.security_rules)
    assert {rule_key(rule["name"]) for rule in plan.security_rules} == {
        ("192.0.2.4", 22),
        ("2001:db8::4", 3389),
    }


def test_the_hand_built_broker_rule_of_these_tests_is_recognised_as_the_brokers():
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


# ---------------------------------------------------------------- rules by key


def test_rules_for_a_key_are_the_brokers_rules_for_that_address_and_port_whatever_their_expiry():
    earlier = broker_rule("192.0.2.4", 22, T0, 100)
    later = broker_rule("192.0.2.4", 22, T0 + timedelta(hours=1), 101)
    other_port = broker_rule("192.0.2.4", 3389, T0, 102)
    other_vm = broker_rule("192.0.2.5", 22, T0, 103)
    look_alike = arm_rule("jit-192.0.2.4-p22-x20300501T140000Z", 104, description="made by hand")
    found = rules_for_key([earlier, other_port, later, other_vm, look_alike], "192.0.2.4", 22)
    assert sorted(v.name for v in found) == sorted([earlier["name"], later["name"]])


def test_rules_for_an_ipv6_key_match_whatever_spelling_the_address_is_given_in():
    rule = broker_rule("2001:db8::4", 22, T0, 100, sources=("2001:db8:1::10/128",))
    assert [v.name for v in rules_for_key([rule], "2001:DB8:0:0::4", 22)] == [rule["name"]]


def test_sdk_models_and_flat_views_read_the_same_as_arm_json():
    from azure.mgmt.network import models

    raw = arm_rule("AllowWeb", 100, port="443")
    as_model = models.SecurityRule(raw)
    assert as_rule_view(as_model) == as_rule_view(raw) == as_rule_view(as_rule_view(raw).as_dict())
    from_model = exposure_warnings([as_model], port=443, private_ip="192.0.2.4", band=BAND)
    assert from_model == exposure_warnings([raw], port=443, private_ip="192.0.2.4", band=BAND) != []


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
