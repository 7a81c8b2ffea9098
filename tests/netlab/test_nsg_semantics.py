"""How the network lab reads NSG JSON: which inbound rules apply, in which order, matching what."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from lab.netlab.nsg import AddressMatch, NsgFormatError, ServiceTags, merge_ranges, parse_nsg, parse_rule

TAGS = ServiceTags.for_vnets(["192.0.2.0/25", "2001:db8:0:1::/64"])


def rule(name: str = "r", priority: int = 100, **props: Any) -> dict[str, Any]:
    base = {
        "protocol": "Tcp",
        "sourceAddressPrefix": "*",
        "sourcePortRange": "*",
        "destinationAddressPrefix": "*",
        "destinationPortRange": "22",
        "access": "Allow",
        "priority": priority,
        "direction": "Inbound",
    }
    base.update(props)
    return {"name": name, "properties": base}


def nsg(*rules: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {
        "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n",
        "name": "n",
        "properties": {"securityRules": list(rules), **props},
    }


def nets(*texts: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def test_rules_apply_lowest_priority_number_first_and_azure_defaults_come_last():
    parsed = parse_nsg(nsg(rule("late", 4000), rule("early", 100), rule("middle", 300)), TAGS)

    assert [r.name for r in parsed.rules] == [
        "early",
        "middle",
        "late",
        "AllowVnetInBound",
        "AllowAzureLoadBalancerInBound",
        "DenyAllInBound",
    ]
    assert [r.priority for r in parsed.rules][-3:] == [65000, 65001, 65500]
    assert parsed.rules[-1].allow is False


def test_outbound_rules_do_not_filter_inbound_traffic():
    parsed = parse_nsg(nsg(rule("out", 100, direction="Outbound", access="Deny")), TAGS)

    assert "out" not in [r.name for r in parsed.rules]


def test_default_rules_sent_by_arm_are_used_as_sent():
    only_deny = [rule("DenyAllInBound", 65500, access="Deny", destinationPortRange="*", protocol="*")]

    parsed = parse_nsg(nsg(defaultSecurityRules=only_deny), TAGS)

    assert [r.name for r in parsed.rules] == ["DenyAllInBound"]


def test_flush_connection_is_read_from_the_nsg():
    assert parse_nsg(nsg(flushConnection=True), TAGS).flush_connection is True
    assert parse_nsg(nsg(), TAGS).flush_connection is False


@pytest.mark.parametrize(
    ("props", "version", "expected"),
    [
        ({"sourceAddressPrefix": "*"}, 4, AddressMatch(any=True)),
        ({"sourceAddressPrefix": "*"}, 6, AddressMatch(any=True)),
        ({"sourceAddressPrefix": "203.0.113.10"}, 4, AddressMatch(networks=nets("203.0.113.10/32"))),
        ({"sourceAddressPrefix": "203.0.113.10"}, 6, None),
        ({"sourceAddressPrefix": "203.0.113.0/24"}, 4, AddressMatch(networks=nets("203.0.113.0/24"))),
        ({"sourceAddressPrefix": "2001:db8:203::a"}, 6, AddressMatch(networks=nets("2001:db8:203::a/128"))),
        ({"sourceAddressPrefix": "2001:db8:203::a/128"}, 4, None),
        ({"sourceAddressPrefix": "0.0.0.0/0"}, 4, AddressMatch(any=True)),
        ({"sourceAddressPrefix": "0.0.0.0/0"}, 6, None),
        # a list holds both families; each family keeps its own part, overlaps collapsed
        (
            {"sourceAddressPrefixes": ["203.0.113.10", "203.0.113.0/28", "2001:db8:203::/64"]},
            4,
            AddressMatch(networks=nets("203.0.113.0/28")),
        ),
        (
            {"sourceAddressPrefixes": ["203.0.113.10", "2001:db8:203::/64"]},
            6,
            AddressMatch(networks=nets("2001:db8:203::/64")),
        ),
        # service tags, mapped for the lab
        ({"sourceAddressPrefix": "VirtualNetwork"}, 4, AddressMatch(networks=nets("192.0.2.0/25"))),
        ({"sourceAddressPrefix": "VirtualNetwork"}, 6, AddressMatch(networks=nets("2001:db8:0:1::/64"))),
        ({"sourceAddressPrefix": "Internet"}, 4, AddressMatch(networks=nets("192.0.2.0/25"), negated=True)),
        ({"sourceAddressPrefix": "AzureLoadBalancer"}, 4, None),
        ({"sourceAddressPrefix": "Storage.WestEurope"}, 4, None),
        # the plural list wins over the singular field, as in ARM
        (
            {"sourceAddressPrefix": "*", "sourceAddressPrefixes": ["203.0.113.66"]},
            4,
            AddressMatch(networks=nets("203.0.113.66/32")),
        ),
    ],
)
def test_source_prefixes_match_per_address_family(props, version, expected):
    parsed = parse_rule(rule(**props), TAGS)

    assert parsed is not None
    assert parsed.source.for_family(version) == expected


def test_internet_means_everything_outside_the_vnet_in_a_family_the_vnet_does_not_use():
    v4_only = ServiceTags.for_vnets(["192.0.2.0/25"])
    parsed = parse_rule(rule(sourceAddressPrefix="Internet"), v4_only)

    assert parsed is not None
    assert parsed.source.for_family(6) == AddressMatch(any=True)


def test_application_security_groups_match_nothing_and_say_so():
    parsed = parse_rule(rule(sourceApplicationSecurityGroups=[{"id": "/x/asg"}]), TAGS)

    assert parsed is not None
    assert parsed.source.for_family(4) is None
    assert parsed.notes


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"destinationPortRange": "22"}, ((22, 22),)),
        ({"destinationPortRange": "1000-2000"}, ((1000, 2000),)),
        ({"destinationPortRange": "*"}, None),
        ({"destinationPortRanges": ["3389", "22", "80-81", "81-90"]}, ((22, 22), (80, 90), (3389, 3389))),
        ({"destinationPortRange": "*", "destinationPortRanges": ["22"]}, ((22, 22),)),
    ],
)
def test_destination_ports_single_ranges_lists_and_any(props, expected):
    parsed = parse_rule(rule(**props), TAGS)

    assert parsed is not None
    assert parsed.destination_ports == expected


@pytest.mark.parametrize(
    ("protocol", "expected"), [("Tcp", "tcp"), ("Udp", "udp"), ("Icmp", "icmp"), ("*", "*"), ("Esp", "esp")]
)
def test_protocols_are_read_case_insensitively(protocol, expected):
    parsed = parse_rule(rule(protocol=protocol), TAGS)

    assert parsed is not None
    assert parsed.protocol == expected


@pytest.mark.parametrize(
    "props",
    [
        {"sourceAddressPrefix": "203.0.113.300"},
        {"destinationPortRange": "70000"},
        {"destinationPortRange": "30-20"},
        {"destinationPortRange": "ssh"},
        {"protocol": "Gre"},
    ],
)
def test_what_arm_would_refuse_is_an_error_not_a_silent_rule(props):
    with pytest.raises(NsgFormatError):
        parse_rule(rule(**props), TAGS)


def test_touching_port_ranges_merge():
    assert merge_ranges([(22, 22), (23, 30), (40, 41)]) == ((22, 30), (40, 41))
