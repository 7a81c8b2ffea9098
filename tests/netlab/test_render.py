"""The NSG -> nftables renderer: text that `nft -f` applies atomically, one chain per NSG on the VM's path."""

from __future__ import annotations

from typing import Any

import pytest

from lab.netlab.nsg import ServiceTags, parse_nsg, parse_rule
from lab.netlab.render import PathNsg, render_from_json, render_ruleset, rule_matches
from tests.netlab.test_nsg_semantics import nsg, rule

TAGS = ServiceTags.for_vnets(["192.0.2.0/25", "2001:db8:0:1::/64"])


def chain(text: str, name: str) -> list[str]:
    """The lines of one chain of a rendered ruleset."""
    lines = text.splitlines()
    start = lines.index(f"\tchain {name} {{")
    end = lines.index("\t}", start)
    return [line.strip() for line in lines[start + 1 : end]]


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        (
            {"sourceAddressPrefix": "203.0.113.10/32", "destinationAddressPrefix": "192.0.2.4"},
            [
                "meta nfproto ipv4 ip saddr 203.0.113.10/32 ip daddr 192.0.2.4/32 "
                "meta l4proto tcp th dport 22 "
            ],
        ),
        (
            {"destinationPortRanges": ["22", "3389", "1000-2000"]},
            [
                "meta nfproto ipv4 meta l4proto tcp th dport { 22, 1000-2000, 3389 } ",
                "meta nfproto ipv6 meta l4proto tcp th dport { 22, 1000-2000, 3389 } ",
            ],
        ),
        (
            {"sourceAddressPrefixes": ["203.0.113.10", "203.0.113.11", "2001:db8:203::a"]},
            [
                "meta nfproto ipv4 ip saddr 203.0.113.10/31 meta l4proto tcp th dport 22 ",
                "meta nfproto ipv6 ip6 saddr 2001:db8:203::a/128 meta l4proto tcp th dport 22 ",
            ],
        ),
        (
            {"protocol": "Udp", "sourceAddressPrefix": "203.0.113.0/24", "destinationPortRange": "53"},
            ["meta nfproto ipv4 ip saddr 203.0.113.0/24 meta l4proto udp th dport 53 "],
        ),
        (
            {"protocol": "*", "sourceAddressPrefix": "198.51.100.0/24"},
            ["meta nfproto ipv4 ip saddr 198.51.100.0/24 meta l4proto { tcp, udp } th dport 22 "],
        ),
        (
            {"protocol": "*", "destinationPortRange": "*", "sourceAddressPrefix": "203.0.113.10"},
            ["meta nfproto ipv4 ip saddr 203.0.113.10/32 "],
        ),
        (
            {"protocol": "Icmp", "destinationPortRange": "*"},
            ["meta nfproto ipv4 meta l4proto icmp ", "meta nfproto ipv6 meta l4proto ipv6-icmp "],
        ),
        (
            {"sourceAddressPrefix": "Internet", "destinationPortRange": "443"},
            [
                "meta nfproto ipv4 ip saddr != 192.0.2.0/25 meta l4proto tcp th dport 443 ",
                "meta nfproto ipv6 ip6 saddr != 2001:db8:0:1::/64 meta l4proto tcp th dport 443 ",
            ],
        ),
        (
            {"sourcePortRange": "1024-65535", "sourceAddressPrefix": "203.0.113.10"},
            ["meta nfproto ipv4 ip saddr 203.0.113.10/32 meta l4proto tcp th sport 1024-65535 th dport 22 "],
        ),
        ({"sourceAddressPrefix": "AzureLoadBalancer"}, []),
        ({"sourceAddressPrefix": "203.0.113.10", "destinationAddressPrefix": "2001:db8:0:1::4"}, []),
    ],
)
def test_each_nsg_rule_becomes_one_nft_match_per_address_family_it_can_match(props, expected):
    parsed = parse_rule(rule(**props), TAGS)

    assert parsed is not None
    assert rule_matches(parsed) == expected


def test_nic_nsg_then_subnet_nsg_are_both_jumped_to_so_both_must_allow():
    nic = {**nsg(rule("allow-alice", 100, sourceAddressPrefix="203.0.113.10")), "name": "nic-nsg"}
    subnet = {**nsg(), "name": "subnet-nsg", "id": "/x/subnet-nsg"}

    text = render_from_json("db-01", [nic, subnet], TAGS)

    base = chain(text, "inbound")
    assert base[-2:] == ['jump nsg1 comment "nic-nsg"', 'jump nsg2 comment "subnet-nsg"']
    nsg1 = chain(text, "nsg1")
    assert any(
        line.startswith("meta nfproto ipv4 ip saddr 203.0.113.10/32") and " return " in line for line in nsg1
    )
    assert chain(text, "nsg2")[-1].startswith("drop")
    assert text.startswith("#")
    assert "delete table inet jitlab" in text  # replaced whole, in one transaction


def test_allow_returns_to_the_next_nsg_and_deny_drops():
    text = render_from_json(
        "web-01",
        [
            nsg(
                rule("deny-mallory", 100, access="Deny", sourceAddressPrefix="203.0.113.66"),
                rule("allow", 200),
            )
        ],
        TAGS,
    )

    lines = chain(text, "nsg1")
    assert lines[1].endswith('drop comment "n/deny-mallory 100"')
    assert lines[2].endswith('return comment "n/allow 200"')


def test_established_flows_pass_first_so_they_survive_rule_removal():
    lines = chain(render_from_json("web-01", [nsg()], TAGS), "nsg1")

    assert lines[0] == "ct state established,related return"


def test_flush_connection_lets_only_flows_of_the_current_generation_pass_unevaluated():
    flushing = parse_nsg(nsg(rule("allow", 100), flushConnection=True), TAGS)

    gen3 = chain(render_ruleset("db-01", [PathNsg(flushing, 3)]), "nsg1")
    gen4 = chain(render_ruleset("db-01", [PathNsg(flushing, 4)]), "nsg1")

    assert gen3[0] == "ct direction reply return"
    assert gen3[1] == "ct state established,related ct mark and 0x0000ffff == 0x00000003 return"
    assert "ct mark set ct mark and 0xffff0000 or 0x00000003 return" in gen3[2]
    assert gen4[1] == "ct state established,related ct mark and 0x0000ffff == 0x00000004 return"


def test_the_subnet_nsg_keeps_its_flush_generation_in_the_upper_half_of_the_mark():
    plain = parse_nsg(nsg(), TAGS)
    flushing = parse_nsg(nsg(rule("allow", 100), flushConnection=True), TAGS)

    lines = chain(render_ruleset("db-01", [PathNsg(plain), PathNsg(flushing, 2)]), "nsg2")

    assert lines[1] == "ct state established,related ct mark and 0xffff0000 == 0x00020000 return"


def test_a_vm_without_any_nsg_lets_everything_in_as_in_azure():
    text = render_ruleset("bare-01", [])

    assert "jump" not in text
    assert "policy accept" in text


def test_a_path_has_at_most_two_nsgs():
    one = PathNsg(parse_nsg(nsg(), TAGS))
    with pytest.raises(ValueError, match="at most two"):
        render_ruleset("x", [one, one, one])


def test_comments_cannot_break_out_of_their_quotes():
    evil: dict[str, Any] = {**nsg(rule('x" accept #', 100)), "name": 'n"'}

    text = render_from_json("web-01", [evil], TAGS)

    assert all(line.count('"') in (0, 2) for line in text.splitlines())
