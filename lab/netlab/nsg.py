"""NSG semantics, read from ARM JSON: the inbound rules that apply, in the order Azure evaluates them.

Pure: no I/O, nothing about nftables. `render.py` turns what this module reads into a ruleset.

Service tags have no meaning outside Azure, so the lab maps them (`ServiceTags`):

- `VirtualNetwork`: the address spaces of the lab's VNets (Azure adds peered VNets and on-premises ranges; the
  lab has neither).
- `Internet`: every address outside `VirtualNetwork` (Azure: "the IP address space outside the virtual network
  and reachable by the public internet"), so callers in 203.0.113.0/24 are `Internet`.
- `AzureLoadBalancer`: nothing by default. Azure means its health probe source 168.63.129.16, which is no
  documentation address, and the lab has no load balancer.
- any other tag (`Storage`, `Sql.WestEurope`, ...): nothing. Application security groups: nothing either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Azure's inbound defaults, used when an NSG's JSON carries no `defaultSecurityRules` (the emulator always
# sends them; a hand-written NSG may not).
AZURE_DEFAULT_INBOUND_RULES: tuple[dict[str, Any], ...] = (
    {
        "name": "AllowVnetInBound",
        "properties": {
            "protocol": "*",
            "sourceAddressPrefix": "VirtualNetwork",
            "sourcePortRange": "*",
            "destinationAddressPrefix": "VirtualNetwork",
            "destinationPortRange": "*",
            "access": "Allow",
            "priority": 65000,
            "direction": "Inbound",
        },
    },
    {
        "name": "AllowAzureLoadBalancerInBound",
        "properties": {
            "protocol": "*",
            "sourceAddressPrefix": "AzureLoadBalancer",
            "sourcePortRange": "*",
            "destinationAddressPrefix": "*",
            "destinationPortRange": "*",
            "access": "Allow",
            "priority": 65001,
            "direction": "Inbound",
        },
    },
    {
        "name": "DenyAllInBound",
        "properties": {
            "protocol": "*",
            "sourceAddressPrefix": "*",
            "sourcePortRange": "*",
            "destinationAddressPrefix": "*",
            "destinationPortRange": "*",
            "access": "Deny",
            "priority": 65500,
            "direction": "Inbound",
        },
    },
)


class NsgFormatError(ValueError):
    """An NSG's JSON holds something Azure would not have accepted (a bad prefix, port or protocol)."""


@dataclass(frozen=True)
class ServiceTags:
    """What each service tag stands for in the lab (see the module docstring)."""

    virtual_network: tuple[IpNetwork, ...] = ()
    azure_load_balancer: tuple[IpNetwork, ...] = ()

    @classmethod
    def for_vnets(cls, prefixes: Iterable[str], load_balancer: Iterable[str] = ()) -> ServiceTags:
        """Tags for a lab whose VNets have these address spaces."""
        return cls(
            virtual_network=tuple(ipaddress.ip_network(p, strict=False) for p in prefixes),
            azure_load_balancer=tuple(ipaddress.ip_network(p, strict=False) for p in load_balancer),
        )


@dataclass(frozen=True)
class AddressMatch:
    """Which addresses a rule's source or destination matches.

    `any` matches everything; otherwise `networks`, or everything outside them when `negated`.
    An empty, non-negated match matches nothing.
    """

    any: bool = False
    networks: tuple[IpNetwork, ...] = ()
    negated: bool = False

    def for_family(self, version: int) -> AddressMatch | None:
        """The part of this match for IPv4 (4) or IPv6 (6); None when no address of that family matches."""
        if self.any:
            return self
        nets = tuple(_collapse(n for n in self.networks if n.version == version))
        if self.negated:
            if any(n.prefixlen == 0 for n in nets):
                return None
            return AddressMatch(any=not nets, networks=nets, negated=bool(nets))
        if not nets:
            return None
        if any(n.prefixlen == 0 for n in nets):
            return AddressMatch(any=True)
        return AddressMatch(networks=nets)


@dataclass(frozen=True)
class InboundRule:
    """One inbound NSG rule, parsed: the facts the data plane needs, in Azure's terms."""

    name: str
    priority: int
    allow: bool
    protocol: str  # "*", "tcp", "udp", "icmp", "esp", "ah"
    source: AddressMatch
    destination: AddressMatch
    source_ports: tuple[tuple[int, int], ...] | None  # None = any
    destination_ports: tuple[tuple[int, int], ...] | None
    is_default: bool = False
    notes: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Nsg:
    """An NSG's identity, its inbound rules in evaluation order, and whether rule changes flush live flows."""

    id: str
    name: str
    flush_connection: bool
    rules: tuple[InboundRule, ...]


_PROTOCOLS = {"*": "*", "tcp": "tcp", "udp": "udp", "icmp": "icmp", "esp": "esp", "ah": "ah"}


def parse_nsg(nsg_json: Mapping[str, Any], tags: ServiceTags) -> Nsg:
    """Read an NSG's ARM JSON into its inbound rules, lowest priority number first, as Azure does."""
    props = nsg_json.get("properties") or {}
    defaults = props.get("defaultSecurityRules") or AZURE_DEFAULT_INBOUND_RULES
    rules = [parse_rule(r, tags) for r in props.get("securityRules") or ()]
    rules += [parse_rule(r, tags, is_default=True) for r in defaults]
    inbound = sorted((r for r in rules if r is not None), key=lambda r: (r.is_default, r.priority))
    return Nsg(
        id=str(nsg_json.get("id", "")),
        name=str(nsg_json.get("name", "")),
        flush_connection=bool(props.get("flushConnection", False)),
        rules=tuple(inbound),
    )


def parse_rule(
    rule_json: Mapping[str, Any], tags: ServiceTags, *, is_default: bool = False
) -> InboundRule | None:
    """One security rule as Azure applies it inbound; None for outbound rules."""
    props = rule_json.get("properties") or {}
    if str(props.get("direction", "")).lower() != "inbound":
        return None
    name = str(rule_json.get("name", ""))
    protocol = _PROTOCOLS.get(str(props.get("protocol", "")).lower())
    if protocol is None:
        raise NsgFormatError(f"rule {name}: unknown protocol {props.get('protocol')!r}")
    notes: list[str] = []
    source = _address_match(props, "source", tags, notes)
    destination = _address_match(props, "destination", tags, notes)
    return InboundRule(
        name=name,
        priority=int(props["priority"]),
        allow=str(props.get("access", "")).lower() == "allow",
        protocol=protocol,
        source=source,
        destination=destination,
        source_ports=_ports(props, "source", name),
        destination_ports=_ports(props, "destination", name),
        is_default=is_default,
        notes=tuple(notes),
    )


def _address_match(props: Mapping[str, Any], side: str, tags: ServiceTags, notes: list[str]) -> AddressMatch:
    if props.get(f"{side}ApplicationSecurityGroups"):
        notes.append(f"{side} application security groups match nothing in the lab")
        return AddressMatch()
    prefixes: Sequence[str] = props.get(f"{side}AddressPrefixes") or ()
    if not prefixes:
        single = props.get(f"{side}AddressPrefix")
        prefixes = [single] if single else []
    if not prefixes:
        return AddressMatch()
    networks: list[IpNetwork] = []
    for prefix in prefixes:
        text = str(prefix).strip()
        key = text.lower()
        if key in ("*", "any"):
            return AddressMatch(any=True)
        if key == "internet":
            # ARM accepts a tag only alone, never in a list, so Internet is the whole match.
            return AddressMatch(networks=tags.virtual_network, negated=True)
        if key == "virtualnetwork":
            networks.extend(tags.virtual_network)
            continue
        if key == "azureloadbalancer":
            networks.extend(tags.azure_load_balancer)
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            if not text[:1].isalpha():
                raise NsgFormatError(f"invalid address prefix {text!r}") from None
            notes.append(f"service tag {text} matches nothing in the lab")
    return AddressMatch(networks=tuple(networks))


def _ports(props: Mapping[str, Any], side: str, rule: str) -> tuple[tuple[int, int], ...] | None:
    ranges: Sequence[str] = props.get(f"{side}PortRanges") or ()
    if not ranges:
        single = props.get(f"{side}PortRange")
        ranges = [single] if single not in (None, "") else ["*"]
    parsed: list[tuple[int, int]] = []
    for item in ranges:
        text = str(item).strip()
        if text == "*":
            return None
        low, _, high = text.partition("-")
        try:
            lo, hi = int(low), int(high or low)
        except ValueError:
            raise NsgFormatError(f"rule {rule}: invalid {side} port {text!r}") from None
        if not 0 <= lo <= hi <= 65535:
            raise NsgFormatError(f"rule {rule}: invalid {side} port {text!r}")
        parsed.append((lo, hi))
    return merge_ranges(parsed)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Overlapping or touching port ranges merged (nftables refuses overlapping intervals in one set)."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _collapse(networks: Iterable[IpNetwork]) -> list[IpNetwork]:
    nets = list(networks)
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]
