"""Planning one NSG's whole rule collection from its open grants (`jitbroker.nsgplan`): a specification.

Every test is pure: openings in, raw ARM JSON out. Rules "as read" carry the read-only parts ARM returns
(etag, provisioningState), so the tests also show that planning keeps what it reads and drops nothing it
does not own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitbroker import nsgplan
from jitbroker.errors import AddressAmbiguous, Conflict, InvalidRequest, JitError, NotAllowed
from jitbroker.model import Opening
from jitbroker.nsgplan import Desired, NsgPlan
from jitbroker.rules import describe, is_broker_rule, rule_key, rule_name

NOW = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
BAND = (100, 199)
ALICE = "203.0.113.10/32"
BOB = "203.0.113.11/32"
CAROL = "198.51.100.7/32"
SUBSCRIPTION = "00000000-0000-4000-8000-0000000000a1"

_created = iter(range(1_000_000))


def vm_id(name: str) -> str:
    return (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}"
    )


def opening(
    grant_id: str,
    *,
    vm: str = "web-01",
    ip: str = "192.0.2.4",
    port: int = 22,
    source: str = ALICE,
    expires: datetime = LATER,
    created: datetime | None = None,
) -> Opening:
    """An open grant; without `created`, each one is created a second after the one built before it."""
    if created is None:
        created = NOW - timedelta(days=1) + timedelta(seconds=next(_created))
    return Opening(grant_id, "alice", vm_id(vm), vm, ip, port, source, expires, created)


def foreign(
    name: str,
    priority: int,
    *,
    direction: str = "Inbound",
    access: str = "Allow",
    port: str = "443",
    source: str = "198.51.100.0/24",
    **extra: Any,
) -> dict[str, Any]:
    """A rule someone else wrote, as ARM returns it (id, etag, provisioningState, type)."""
    props: dict[str, Any] = {
        "provisioningState": "Succeeded",
        "protocol": "Tcp",
        "sourcePortRange": "*",
        "destinationPortRange": port,
        "sourceAddressPrefix": source,
        "destinationAddressPrefix": "*",
        "access": access,
        "priority": priority,
        "direction": direction,
        **extra,
    }
    return {
        "name": name,
        "id": f"/nsg/securityRules/{name}",
        "etag": 'W/"00000000-0000-0000-0000-000000000001"',
        "type": "Microsoft.Network/networkSecurityGroups/securityRules",
        "properties": props,
    }


def broker_rule(
    ip: str,
    port: int,
    expires: datetime,
    priority: int,
    *,
    sources: Sequence[str] = (ALICE,),
    grant_ids: Sequence[str] = ("g-1",),
) -> dict[str, Any]:
    """A broker rule built by hand (name + description), as read back from ARM."""
    return as_read(
        {
            "name": rule_name(ip, port, expires),
            "properties": {
                "description": describe(
                    vm_name="web-01", expires_at=expires, sources=sources, grant_ids=grant_ids
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
    )


def as_read(rule: dict[str, Any]) -> dict[str, Any]:
    """A planned rule the way a later GET returns it: with etag and provisioningState."""
    read = copy.deepcopy(rule)
    read["etag"] = 'W/"00000000-0000-0000-0000-000000000002"'
    read["properties"]["provisioningState"] = "Succeeded"
    return read


def desired(*openings: Opening, now: datetime = NOW) -> Desired:
    return nsgplan.desired_state(openings, now)


def plan(
    openings: Iterable[Opening], current: Sequence[dict[str, Any]] = (), band: tuple[int, int] = BAND
) -> NsgPlan:
    return nsgplan.plan_nsg(current, nsgplan.desired_state(openings, NOW), band)


def ours(rules: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The broker rules of a collection by name."""
    return {r["name"]: r for r in rules if is_broker_rule(r)}


def theirs(rules: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The foreign rules of a collection, in order."""
    return [r for r in rules if not is_broker_rule(r)]


def sources_of(rule: dict[str, Any]) -> list[str]:
    props = rule["properties"]
    return [
        *([props["sourceAddressPrefix"]] if props.get("sourceAddressPrefix") else []),
        *props.get("sourceAddressPrefixes", []),
    ]


# ---------------------------------------------------------------- desired state


@dataclass(frozen=True)
class DesiredCase:
    openings: tuple[Opening, ...]
    rules: dict[tuple[str, int], tuple[tuple[str, ...], datetime, frozenset[str]]]
    refused: dict[str, type[JitError]] = field(default_factory=dict)


DESIRED_CASES = [
    pytest.param(
        DesiredCase(
            (
                opening("g-1", source=ALICE),
                opening("g-2", source=BOB),
                opening("g-3", source="203.0.113.10"),  # ALICE again, spelt without the prefix length
                opening("g-4", port=3389, source=CAROL),
            ),
            {
                ("192.0.2.4", 22): ((ALICE, BOB), LATER, frozenset({"g-1", "g-2", "g-3"})),
                ("192.0.2.4", 3389): ((CAROL,), LATER, frozenset({"g-4"})),
            },
        ),
        id="one rule per address and port holds every grant's source once",
    ),
    pytest.param(
        DesiredCase(
            (
                opening("g-1", expires=NOW + timedelta(minutes=10)),
                opening("g-2", source=BOB, expires=NOW + timedelta(hours=3)),
                opening("g-3", source=CAROL, expires=NOW + timedelta(hours=2)),
            ),
            {
                ("192.0.2.4", 22): (
                    (CAROL, ALICE, BOB),
                    NOW + timedelta(hours=3),
                    frozenset({"g-1", "g-2", "g-3"}),
                )
            },
        ),
        id="the rule lasts until the latest of its grants' expiries",
    ),
    pytest.param(
        DesiredCase(
            (
                opening("g-1", expires=NOW - timedelta(minutes=1), source=CAROL),
                opening("g-2", expires=NOW, source=BOB),
                opening("g-3"),
                opening("g-4", port=3389, expires=NOW - timedelta(seconds=1)),
            ),
            {("192.0.2.4", 22): ((ALICE,), LATER, frozenset({"g-3"}))},
        ),
        id="expired openings, also one expiring right now, let nobody in and make no rule",
    ),
    pytest.param(
        DesiredCase(
            (opening("g-1", vm="web-01"), opening("g-2", vm="web-02", source=BOB)),
            {("192.0.2.4", 22): ((ALICE,), LATER, frozenset({"g-1"}))},
            {"g-2": AddressAmbiguous},
        ),
        id="a second VM with the same private address behind the NSG is refused",
    ),
    pytest.param(
        DesiredCase(
            (opening("g-1", vm="web-01", port=22), opening("g-2", vm="web-02", port=3389, source=BOB)),
            {("192.0.2.4", 22): ((ALICE,), LATER, frozenset({"g-1"}))},
            {"g-2": AddressAmbiguous},
        ),
        id="a second VM with the same private address is refused also for another port",
    ),
    pytest.param(
        DesiredCase(
            (
                opening("g-2", vm="web-02", source=BOB, created=NOW - timedelta(minutes=5)),
                opening("g-1", vm="web-01", created=NOW - timedelta(minutes=50)),
                opening("g-3", vm="web-01", source=CAROL, created=NOW - timedelta(minutes=1)),
            ),
            {("192.0.2.4", 22): ((CAROL, ALICE), LATER, frozenset({"g-1", "g-3"}))},
            {"g-2": AddressAmbiguous},
        ),
        id="the VM of the earliest grant keeps the address whatever order the grants come in",
    ),
    pytest.param(
        DesiredCase(
            (
                opening("g-1", vm="web-01", expires=NOW - timedelta(minutes=1)),
                opening("g-2", vm="web-02", source=BOB),
            ),
            {("192.0.2.4", 22): ((BOB,), LATER, frozenset({"g-2"}))},
        ),
        id="a VM whose grants all expired no longer holds the address",
    ),
    pytest.param(
        DesiredCase(
            (opening("g-1", vm="web-01"), opening("g-2", vm="web-02", ip="192.0.2.5", source=BOB)),
            {
                ("192.0.2.4", 22): ((ALICE,), LATER, frozenset({"g-1"})),
                ("192.0.2.5", 22): ((BOB,), LATER, frozenset({"g-2"})),
            },
        ),
        id="two VMs with different addresses behind one NSG each get their rule",
    ),
    pytest.param(
        DesiredCase(
            (opening("g-1", source="0.0.0.0/0"), opening("g-2", source="2001:db8:1::10"), opening("g-3")),
            {("192.0.2.4", 22): ((ALICE,), LATER, frozenset({"g-3"}))},
            {"g-1": InvalidRequest, "g-2": InvalidRequest},
        ),
        id="a grant whose source cannot become a rule is refused and claims nothing",
    ),
]


@pytest.mark.parametrize("case", DESIRED_CASES)
def test_desired_state(case: DesiredCase) -> None:
    want = nsgplan.desired_state(case.openings, NOW)
    got = {key: (r.sources, r.expires_at, r.grant_ids) for key, r in want.rules.items()}
    assert got == case.rules
    assert {gid: type(err) for gid, err in want.refused.items()} == case.refused


def test_the_second_vm_is_told_which_vm_holds_the_address() -> None:
    want = desired(opening("g-1", vm="web-01"), opening("g-2", vm="web-02"))
    assert "web-02" in str(want.refused["g-2"]) and "web-01" in str(want.refused["g-2"])
    assert want.rules[("192.0.2.4", 22)].vm_name == "web-01"


def test_the_same_private_address_in_different_nsgs_is_no_conflict() -> None:
    # Each NSG's desired state is built from the openings of the VMs behind that NSG only.
    nsg_a = desired(opening("g-1", vm="web-01"))
    nsg_b = desired(opening("g-2", vm="web-02", source=BOB))
    assert nsg_a.refused == {} and nsg_b.refused == {}
    assert nsg_a.rules[("192.0.2.4", 22)].vm_name == "web-01"
    assert nsg_b.rules[("192.0.2.4", 22)].vm_name == "web-02"
    for want in (nsg_a, nsg_b):
        p = nsgplan.plan_nsg([], want, BAND)
        assert p.refused == {} and len(p.security_rules) == 1


def test_the_rule_name_carries_the_latest_expiry_of_its_grants() -> None:
    p = plan(
        [
            opening("g-1", expires=NOW + timedelta(minutes=10)),
            opening("g-2", source=BOB, expires=NOW + timedelta(hours=2, microseconds=1)),
        ]
    )
    (rule,) = p.security_rules
    assert rule["name"] == "jit-192.0.2.4-p22-x20300501T140001Z"  # rounded up to the whole second
    assert rule["properties"]["description"].startswith("jit-broker: until 2030-05-01T14:00:01Z vm web-01")
    assert is_broker_rule(rule)


# ---------------------------------------------------------------- plan_nsg: the rules it writes


def test_a_first_grant_plans_one_inbound_tcp_allow_to_the_private_ip_at_the_top_of_the_band() -> None:
    p = plan([opening("g-1")], [foreign("DenyAll", 4000, access="Deny", port="*")])
    assert p.changed and p.refused == {} and p.removed == ()
    rule = ours(p.security_rules)["jit-192.0.2.4-p22-x20300501T130000Z"]
    assert rule == {
        "name": "jit-192.0.2.4-p22-x20300501T130000Z",
        "properties": {
            "description": "jit-broker: until 2030-05-01T13:00:00Z vm web-01 grants g-1",
            "protocol": "Tcp",
            "sourcePortRange": "*",
            "destinationPortRange": "22",
            "sourceAddressPrefixes": [ALICE],
            "destinationAddressPrefix": "192.0.2.4",
            "access": "Allow",
            "priority": 100,
            "direction": "Inbound",
        },
    }
    assert p.placed == (nsgplan.PlacedRule(rule["name"], 100, "192.0.2.4", 22, frozenset({"g-1"})),)
    assert p.rule_for("g-1") == p.placed[0] and p.rule_for("g-unknown") is None


@pytest.mark.parametrize(
    ("sources", "expires"),
    [
        pytest.param((ALICE,), LATER, id="same grants"),
        pytest.param((ALICE, BOB), LATER, id="a new source, same expiry"),
        pytest.param((ALICE,), LATER + timedelta(hours=1), id="a later expiry renames the rule"),
        pytest.param((BOB,), NOW + timedelta(minutes=5), id="an earlier expiry and another source"),
    ],
)
def test_an_existing_broker_rule_for_the_key_keeps_its_priority_even_when_its_name_changes(
    sources: tuple[str, ...], expires: datetime
) -> None:
    existing = broker_rule("192.0.2.4", 22, LATER, 150)
    current = [foreign("AllowWeb", 100), existing]
    openings = [opening(f"g-{i}", source=s, expires=expires) for i, s in enumerate(sources)]
    p = plan(openings, current)
    (placed,) = p.placed
    assert placed.priority == 150
    assert placed.name == rule_name("192.0.2.4", 22, expires)
    assert ours(p.security_rules)[placed.name]["properties"]["priority"] == 150
    assert p.removed == (() if placed.name == existing["name"] else (existing["name"],))


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        pytest.param([], 100, id="an empty NSG gives the top of the band"),
        pytest.param([("Inbound", 100)], 101, id="a foreign inbound rule's priority is skipped"),
        pytest.param(
            [("Inbound", 100), ("Inbound", 101), ("Inbound", 103)], 102, id="the lowest gap is taken"
        ),
        pytest.param([("Outbound", 100), ("Outbound", 101)], 100, id="outbound priorities do not count"),
        pytest.param([("Inbound", 99), ("Inbound", 200)], 100, id="priorities outside the band do not count"),
    ],
)
def test_a_new_key_takes_the_lowest_priority_in_the_band_no_foreign_inbound_rule_holds(
    taken: list[tuple[str, int]], expected: int
) -> None:
    current = [foreign(f"r{i}", p, direction=d) for i, (d, p) in enumerate(taken)]
    assert plan([opening("g-1")], current).placed[0].priority == expected


def test_a_broker_rule_no_longer_wanted_frees_its_priority_for_a_new_key() -> None:
    gone = broker_rule("192.0.2.5", 22, LATER, 100)
    p = plan([opening("g-1")], [gone])
    assert p.placed[0].priority == 100 and p.removed == (gone["name"],)


def test_new_keys_take_priorities_in_the_order_of_their_first_grant() -> None:
    p = plan(
        [
            opening("g-2", ip="192.0.2.5", created=NOW - timedelta(minutes=1)),
            opening("g-1", ip="192.0.2.6", created=NOW - timedelta(minutes=9)),
        ],
        [foreign("r100", 100)],
    )
    assert {(pl.private_ip, pl.priority) for pl in p.placed} == {("192.0.2.6", 101), ("192.0.2.5", 102)}


def test_a_full_band_refuses_only_the_grants_of_the_key_that_finds_no_priority() -> None:
    first = [opening("g-1", ip="192.0.2.4"), opening("g-2", ip="192.0.2.4", source=BOB)]
    last = [opening("g-3", ip="192.0.2.5"), opening("g-4", ip="192.0.2.5", source=BOB, port=22)]
    current = [foreign("r100", 100), foreign("r101", 101)]
    p = plan([*first, *last], current, band=(100, 102))
    assert [(pl.private_ip, pl.priority) for pl in p.placed] == [("192.0.2.4", 102)]
    assert set(p.refused) == {"g-3", "g-4"}
    assert all(type(err) is Conflict and "no free inbound priority" in str(err) for err in p.refused.values())
    assert len(ours(p.security_rules)) == 1


def test_a_full_band_never_takes_the_priority_of_a_key_that_already_has_its_rule() -> None:
    held = broker_rule("192.0.2.5", 22, LATER, 101, grant_ids=("g-late",))
    newcomer = opening("g-early", ip="192.0.2.4", created=NOW - timedelta(hours=5))
    holder = opening("g-late", ip="192.0.2.5", created=NOW - timedelta(hours=1))
    p = plan([newcomer, holder], [foreign("r100", 100), held], band=(100, 101))
    assert [(pl.name, pl.priority) for pl in p.placed] == [(held["name"], 101)]
    assert set(p.refused) == {"g-early"} and isinstance(p.refused["g-early"], Conflict)


def test_a_foreign_rule_holding_the_planned_name_refuses_the_key_and_is_never_overwritten() -> None:
    look_alike = foreign(
        "jit-192.0.2.4-p22-x20300501T130000Z", 150, port="22", description="made by hand, not by jit-broker"
    )
    p = plan([opening("g-1"), opening("g-2", ip="192.0.2.5")], [look_alike])
    assert set(p.refused) == {"g-1"} and isinstance(p.refused["g-1"], Conflict)
    assert "did not write" in str(p.refused["g-1"])
    assert [pl.private_ip for pl in p.placed] == ["192.0.2.5"]
    assert theirs(p.security_rules) == [look_alike]
    assert [r["name"] for r in p.security_rules].count(look_alike["name"]) == 1


def test_refusals_of_the_desired_state_are_carried_into_the_plan() -> None:
    p = plan([opening("g-1", vm="web-01"), opening("g-2", vm="web-02")])
    assert set(p.refused) == {"g-2"} and isinstance(p.refused["g-2"], AddressAmbiguous)


# ---------------------------------------------------------------- plan_nsg: no write, foreign rules as read


FOREIGN = [
    foreign("AllowHttps", 100),
    foreign("AllowDnsOut", 100, direction="Outbound", port="53", protocol="Udp"),
    foreign(
        "AllowFromLb",
        120,
        port="*",
        source="AzureLoadBalancer",
        destinationPortRanges=["8080", "8443-8450"],
        sourceApplicationSecurityGroups=[{"id": "/asg/web"}],
        aFuturePropertyArmAddsNextYear={"nested": [1, 2, 3]},
    ),
    foreign("DenyAllInbound", 4000, access="Deny", port="*", source="*", description="last line"),
]


def test_an_nsg_already_holding_exactly_the_desired_rules_needs_no_write() -> None:
    openings = [opening("g-1"), opening("g-2", source=BOB), opening("g-3", port=3389, ip="192.0.2.5")]
    first = plan(openings, FOREIGN)
    current = [FOREIGN[0], *(as_read(r) for r in ours(first.security_rules).values()), *FOREIGN[1:]]
    again = plan(openings, current)
    assert not again.changed and again.removed == ()
    assert theirs(again.security_rules) == FOREIGN
    assert ours(again.security_rules) == ours(current)  # the broker's rules come back as read, too
    assert again.placed == first.placed


def test_foreign_rules_come_back_identical_and_in_order_when_the_broker_rules_change() -> None:
    before = copy.deepcopy(FOREIGN)
    current = [*FOREIGN[:2], broker_rule("192.0.2.9", 22, LATER, 130), *FOREIGN[2:]]
    p = plan([opening("g-1"), opening("g-2", port=3389)], current)
    assert p.changed
    assert theirs(p.security_rules) == FOREIGN == before  # deep-equal, same order, input untouched
    for copied, read in zip(theirs(p.security_rules), FOREIGN, strict=True):  # copies, not the rules as read
        assert copied is not read and copied["properties"] is not read["properties"]
    nsgplan.require_foreign_untouched(current, p.security_rules)


@pytest.mark.parametrize(
    "desired_openings",
    [
        pytest.param([], id="no open grant at all"),
        pytest.param([opening("g-1")], id="another key still open"),
    ],
)
def test_a_broker_rule_whose_key_is_no_longer_desired_is_removed(desired_openings: list[Opening]) -> None:
    stale = broker_rule("192.0.2.5", 3389, LATER, 140)
    p = plan(desired_openings, [*FOREIGN, stale])
    assert p.changed and p.removed == (stale["name"],)
    assert stale["name"] not in ours(p.security_rules)
    assert theirs(p.security_rules) == FOREIGN


def test_a_new_grant_is_a_write_whether_it_brings_a_new_source_or_one_already_in_the_rule() -> None:
    current = [as_read(r) for r in plan([opening("g-1")]).security_rules]
    assert plan([opening("g-1"), opening("g-2", source=BOB)], current).changed
    # The description lists the grants: a second grant from the same address rewrites it.
    assert plan([opening("g-1"), opening("g-2")], current).changed


@pytest.mark.parametrize(
    ("prop", "value"),
    [
        pytest.param("protocol", "*", id="protocol widened"),
        pytest.param("sourcePortRange", "1024", id="ports"),
    ],
)
def test_a_broker_rule_edited_by_hand_is_written_back_to_what_the_broker_plans(prop: str, value: str) -> None:
    openings = [opening("g-1")]
    current = [as_read(r) for r in plan(openings).security_rules]
    current[0]["properties"][prop] = value
    assert is_broker_rule(current[0])  # still the broker's rule by name and description
    p = plan(openings, current)
    assert p.security_rules[0]["properties"][prop] != value  # the plan repairs it ...
    assert p.changed  # ... and says so, or the reconciler never writes the repair


# ---------------------------------------------------------------- plan_trim (the sweeper's orphan pass)


@dataclass(frozen=True)
class TrimCase:
    current: tuple[dict[str, Any], ...]
    openings: tuple[Opening, ...]
    kept: dict[str, list[str]]  # broker rule name -> its sources after the trim
    removed: tuple[str, ...] = ()
    trimmed: tuple[str, ...] = ()


R22 = rule_name("192.0.2.4", 22, LATER)
R3389 = rule_name("192.0.2.4", 3389, LATER)
R_EXPIRED = rule_name("192.0.2.4", 22, NOW - timedelta(seconds=1))

TRIM_CASES = [
    pytest.param(
        TrimCase(
            (broker_rule("192.0.2.4", 22, LATER, 100, sources=(ALICE, BOB), grant_ids=("g-1", "g-2")),),
            (opening("g-1"),),
            {R22: [ALICE]},
            trimmed=(R22,),
        ),
        id="a source no open grant holds is taken out",
    ),
    pytest.param(
        TrimCase(
            (broker_rule("192.0.2.4", 22, NOW - timedelta(seconds=1), 100),),
            (opening("g-1", expires=LATER),),
            {},
            removed=(R_EXPIRED,),
        ),
        id="a rule expired by its name goes even while a grant still holds it",
    ),
    pytest.param(
        TrimCase(
            (broker_rule("192.0.2.4", 22, NOW, 100),),
            (opening("g-1", expires=LATER),),
            {},
            removed=(rule_name("192.0.2.4", 22, NOW),),
        ),
        id="a rule whose name says it expires right now goes",
    ),
    pytest.param(
        TrimCase(
            (broker_rule("192.0.2.4", 22, LATER, 100),), (opening("g-2", source=BOB),), {}, removed=(R22,)
        ),
        id="a rule left without any held source goes",
    ),
    pytest.param(
        TrimCase(
            (broker_rule("192.0.2.4", 22, LATER, 100), broker_rule("192.0.2.4", 3389, LATER, 101)),
            (opening("g-1"),),
            {R22: [ALICE]},
            removed=(R3389,),
        ),
        id="a rule for a key no open grant wants goes",
    ),
    pytest.param(
        TrimCase(
            (broker_rule("192.0.2.4", 22, LATER, 100),),
            (opening("g-1"), opening("g-2", source=BOB, expires=LATER + timedelta(hours=1))),
            {R22: [ALICE]},
        ),
        id="a source a grant holds but the rule lacks is never added, nor a later expiry",
    ),
    pytest.param(
        TrimCase((), (opening("g-1"), opening("g-2", port=3389)), {}),
        id="a desired key without a rule never gets one",
    ),
    pytest.param(
        TrimCase(
            (broker_rule("192.0.2.4", 22, LATER, 100, sources=(ALICE, BOB), grant_ids=("g-1", "g-2")),),
            (opening("g-1"), opening("g-2", source=BOB)),
            {R22: [ALICE, BOB]},
        ),
        id="a rule every source of which a grant holds stays as read",
    ),
]


@pytest.mark.parametrize("case", TRIM_CASES)
def test_plan_trim(case: TrimCase) -> None:
    current = [FOREIGN[0], *case.current, *FOREIGN[1:]]
    before = copy.deepcopy(current)
    p = nsgplan.plan_trim(current, nsgplan.desired_state(case.openings, NOW), NOW)
    kept = ours(p.security_rules)
    assert {name: sources_of(rule) for name, rule in kept.items()} == case.kept
    assert p.removed == case.removed and p.trimmed == case.trimmed
    assert p.changed is bool(case.removed or case.trimmed)
    assert theirs(p.security_rules) == FOREIGN
    assert current == before  # the rules as read are not modified in place
    by_name = {r["name"]: r for r in case.current}
    for name, rule in kept.items():
        was = by_name[name]["properties"]
        assert rule["properties"]["priority"] == was["priority"]
        assert rule["properties"]["destinationPortRange"] == was["destinationPortRange"]
        if name not in case.trimmed:
            assert rule == by_name[name]
    nsgplan.require_foreign_untouched(current, p.security_rules)


def test_a_trimmed_rule_stays_the_brokers_own_and_names_only_the_grants_still_in_it() -> None:
    current = [
        broker_rule("192.0.2.4", 22, LATER, 100, sources=(ALICE, BOB, CAROL), grant_ids=("g-1", "g-2", "g-3"))
    ]
    p = nsgplan.plan_trim(current, desired(opening("g-1"), opening("g-3", source=CAROL)), NOW)
    (rule,) = p.security_rules
    assert is_broker_rule(rule) and rule["name"] == R22
    assert rule["properties"]["description"].endswith("grants g-1,g-3")
    assert "etag" not in rule and "provisioningState" not in rule["properties"]
    assert p.placed == (nsgplan.PlacedRule(R22, 100, "192.0.2.4", 22, frozenset({"g-1", "g-3"})),)


# ---------------------------------------------------------------- put_body


def test_the_put_body_drops_read_only_parts_and_keeps_everything_else() -> None:
    nsg: dict[str, Any] = {
        "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/nsg-web",
        "name": "nsg-web",
        "type": "Microsoft.Network/networkSecurityGroups",
        "location": "westeurope",
        "tags": {"owner": "platform"},
        "etag": 'W/"nsg-etag"',
        "aFutureTopLevelProperty": {"x": 1},
        "properties": {
            "provisioningState": "Succeeded",
            "resourceGuid": "00000000-0000-0000-0000-0000000000ff",
            "defaultSecurityRules": [{"name": "AllowVnetInBound"}],
            "subnets": [{"id": "/subnets/web"}],
            "networkInterfaces": [{"id": "/nics/web-01"}],
            "flowLogs": [{"id": "/flowLogs/fl"}],
            "flushConnection": True,
            "aFutureProperty": ["kept"],
            "securityRules": [{"name": "old"}],
        },
    }
    before = copy.deepcopy(nsg)
    rules = [FOREIGN[0], broker_rule("192.0.2.4", 22, LATER, 100)]
    body = nsgplan.put_body(nsg, rules)
    assert body == {
        "id": nsg["id"],
        "name": "nsg-web",
        "type": "Microsoft.Network/networkSecurityGroups",
        "location": "westeurope",
        "tags": {"owner": "platform"},
        "aFutureTopLevelProperty": {"x": 1},
        "properties": {
            "flushConnection": True,
            "aFutureProperty": ["kept"],
            "securityRules": [
                {
                    "name": "AllowHttps",
                    "id": "/nsg/securityRules/AllowHttps",
                    "type": "Microsoft.Network/networkSecurityGroups/securityRules",
                    "properties": {
                        k: v for k, v in FOREIGN[0]["properties"].items() if k != "provisioningState"
                    },
                },
                {
                    "name": R22,
                    "properties": {
                        k: v for k, v in rules[1]["properties"].items() if k != "provisioningState"
                    },
                },
            ],
        },
    }
    assert nsg == before
    body["tags"]["owner"] = "changed"
    assert nsg["tags"] == {"owner": "platform"}  # a copy, not the NSG as read


def test_the_put_body_of_an_nsg_read_without_properties_still_carries_the_rules() -> None:
    body = nsgplan.put_body({"name": "nsg-web", "location": "westeurope"}, [])
    assert body == {"name": "nsg-web", "location": "westeurope", "properties": {"securityRules": []}}


# ---------------------------------------------------------------- require_foreign_untouched


def _changed_priority(rules: list[dict[str, Any]]) -> None:
    rules[0]["properties"]["priority"] = 111


def _changed_source(rules: list[dict[str, Any]]) -> None:
    rules[0]["properties"]["sourceAddressPrefix"] = "*"


def _added(rules: list[dict[str, Any]]) -> None:
    rules.append(foreign("Sneaky", 190, port="22", source="*"))


def _removed(rules: list[dict[str, Any]]) -> None:
    del rules[3]


def _disguised(rules: list[dict[str, Any]]) -> None:
    # A foreign rule turned into a broker look-alike disappears from the foreign rules: refused.
    rules[0] = broker_rule("192.0.2.4", 443, LATER, 100)


def _broker_added(rules: list[dict[str, Any]]) -> None:
    rules.append(broker_rule("192.0.2.4", 22, LATER, 150))


def _broker_removed(rules: list[dict[str, Any]]) -> None:
    del rules[-1]


def _broker_changed(rules: list[dict[str, Any]]) -> None:
    rules[-1] = broker_rule("192.0.2.5", 22, LATER + timedelta(hours=1), 151, sources=(ALICE, BOB))


def _reordered(rules: list[dict[str, Any]]) -> None:
    rules.reverse()


def _read_only_dropped(rules: list[dict[str, Any]]) -> None:
    rules[:] = nsgplan.put_body({}, rules)["properties"]["securityRules"]


@pytest.mark.parametrize(
    ("mutate", "refused"),
    [
        pytest.param(_changed_priority, True, id="a foreign rule's priority changed"),
        pytest.param(_changed_source, True, id="a foreign rule's source changed"),
        pytest.param(_added, True, id="a foreign rule added"),
        pytest.param(_removed, True, id="a foreign rule removed"),
        pytest.param(_disguised, True, id="a foreign rule replaced by a broker rule"),
        pytest.param(_broker_added, False, id="a broker rule added"),
        pytest.param(_broker_removed, False, id="a broker rule removed"),
        pytest.param(_broker_changed, False, id="a broker rule changed"),
        pytest.param(_reordered, False, id="the same rules in another order"),
        pytest.param(_read_only_dropped, False, id="read-only parts dropped"),
    ],
)
def test_require_foreign_untouched_refuses_any_change_to_a_rule_the_broker_did_not_write(
    mutate: Any, refused: bool
) -> None:
    before = [*copy.deepcopy(FOREIGN), broker_rule("192.0.2.5", 22, LATER, 150)]
    after = copy.deepcopy(before)
    mutate(after)
    if refused:
        with pytest.raises(NotAllowed):
            nsgplan.require_foreign_untouched(before, after)
    else:
        nsgplan.require_foreign_untouched(before, after)


# ---------------------------------------------------------------- IPv6


def test_ipv6_addresses_and_sources_plan_trim_and_read_back() -> None:
    openings = [
        opening("g-1", ip="2001:DB8:0:0::4", source="2001:db8:1::10"),
        opening("g-2", ip="2001:db8::4", source="2001:db8:2::/64"),
        opening("g-3", ip="192.0.2.4", port=22),  # the same VM's IPv4 address: its own rule
        opening("g-4", ip="2001:db8::4", source=ALICE),  # an IPv4 source for an IPv6 address
    ]
    want = nsgplan.desired_state(openings, NOW)
    assert set(want.rules) == {("2001:db8::4", 22), ("192.0.2.4", 22)}
    assert isinstance(want.refused["g-4"], InvalidRequest)
    p = nsgplan.plan_nsg([], want, BAND)
    v6 = ours(p.security_rules)["jit-2001.0db8.0000.0000.0000.0000.0000.0004-p22-x20300501T130000Z"]
    assert rule_key(v6["name"]) == ("2001:db8::4", 22)
    assert v6["properties"]["destinationAddressPrefix"] == "2001:db8::4"
    assert v6["properties"]["sourceAddressPrefixes"] == ["2001:db8:1::10/128", "2001:db8:2::/64"]
    assert p.rule_for("g-1") == p.rule_for("g-2") != p.rule_for("g-3")

    current = [as_read(r) for r in p.security_rules]
    assert not nsgplan.plan_nsg(current, want, BAND).changed
    fewer = nsgplan.desired_state([openings[1], openings[2]], NOW)
    trim = nsgplan.plan_trim(current, fewer, NOW)
    assert trim.trimmed == (v6["name"],) and trim.removed == ()
    assert sources_of(ours(trim.security_rules)[v6["name"]]) == ["2001:db8:2::/64"]


# ---------------------------------------------------------------- scale


def test_fifteen_hundred_openings_on_thirty_vms_behind_one_nsg_plan_thirty_rules_within_the_band() -> None:
    openings = [
        opening(
            f"g-{vm:02d}-{n:02d}",
            vm=f"web-{vm:02d}",
            ip=f"192.0.2.{10 + vm}",
            source=f"{('198.51.100', '203.0.113')[n % 2]}.{n}/32",
            expires=NOW + timedelta(minutes=5 + n),
            created=NOW - timedelta(hours=1) + timedelta(seconds=vm * 50 + n),
        )
        for vm in range(30)
        for n in range(50)
    ]
    current = [foreign("AllowHttps", 100), foreign("DenyAll", 4000, access="Deny", port="*", source="*")]
    want = nsgplan.desired_state(openings, NOW)
    p = nsgplan.plan_nsg(current, want, BAND)
    assert p.refused == {}
    rules = ours(p.security_rules)
    assert len(rules) == 30
    priorities = sorted(r["properties"]["priority"] for r in rules.values())
    assert priorities == list(range(101, 131))
    assert all(len(r["properties"]["sourceAddressPrefixes"]) == 50 for r in rules.values())
    assert all(len(r["properties"]["description"]) <= 140 for r in rules.values())
    assert all(p.rule_for(o.grant_id) is not None for o in openings)
    assert theirs(p.security_rules) == current

    written = [as_read(r) for r in p.security_rules]
    trim = nsgplan.plan_trim(written, want, NOW)
    assert not trim.changed and trim.removed == () and trim.trimmed == ()
    assert ours(trim.security_rules) == ours(written)
    assert not nsgplan.plan_nsg(written, want, BAND).changed
