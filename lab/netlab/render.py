"""Render the NSGs on a VM's path into one nftables ruleset for traffic into that VM. Pure: text in, text out.

The shape (table `inet jitlab`, base chain `inbound` on the input hook of the VM's namespace):

- loopback and IPv6 neighbour discovery pass (Azure's fabric answers those, no NSG sees them);
- one chain per NSG on the path (NIC NSG first, then subnet NSG), jumped to in turn: an Allow rule `return`s
  to the base chain, so the next NSG decides too; a Deny rule drops. A packet is accepted only if every NSG
  allowed it.
- each NSG chain opens with its flow record, as Azure keeps one: `ct state established,related return`, so
  flows survive the removal of the rule that let them in.
- `flushConnection: true` (Azure: "flows ... will be re-evaluated when rules are updated") is modelled with a
  generation number per NSG kept in the connection mark (16 bits per chain). A flow counts as established for
  that NSG only while its mark carries the NSG's current generation; the caller bumps the generation on every
  change of that NSG, so each live flow's next packet is evaluated against the new rules: still allowed, it is
  re-marked and passes; no longer allowed, it is dropped. It is atomic with the rule change (one `nft -f`),
  and needs no conntrack tool. Flows the VM opened itself (`ct direction reply`) are outbound flows and always
  pass: the lab models inbound rules only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lab.netlab.nsg import AddressMatch, InboundRule, Nsg, ServiceTags, parse_nsg

TABLE = "jitlab"
_MARK_BITS = 16
_GENERATION_MASK = (1 << _MARK_BITS) - 1


@dataclass(frozen=True)
class PathNsg:
    """An NSG on a VM's path and its flush generation (only read when the NSG has `flushConnection`)."""

    nsg: Nsg
    generation: int = 1


def render_ruleset(vm_name: str, path: Sequence[PathNsg]) -> str:
    """The whole `nft -f` input that atomically replaces the VM's inbound filtering with this path's NSGs."""
    if len(path) > 2:
        raise ValueError("a NIC's traffic passes at most two NSGs (the NIC's and the subnet's)")
    chains = [_nsg_chain(f"nsg{i + 1}", i, item) for i, item in enumerate(path)]
    jumps = [f'\t\tjump nsg{i + 1} comment "{_comment(item.nsg.name)}"' for i, item in enumerate(path)]
    base = [
        "\tchain inbound {",
        "\t\ttype filter hook input priority filter; policy accept;",
        '\t\tiif "lo" accept',
        "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }"
        " accept",
        *jumps,
        "\t}",
    ]
    lines = [
        f"# inbound NSG filtering for {_comment(vm_name)}, rendered by lab.netlab",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        *base,
        *[line for chain in chains for line in chain],
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_from_json(
    vm_name: str,
    nsgs: Sequence[Mapping[str, Any]],
    tags: ServiceTags,
    generations: Mapping[str, int] | None = None,
) -> str:
    """Convenience: parse the NSGs' ARM JSON (NIC NSG first) and render them."""
    gens = generations or {}
    path = []
    for nsg_json in nsgs:
        nsg = parse_nsg(nsg_json, tags)
        path.append(PathNsg(nsg, gens.get(nsg.id, 1)))
    return render_ruleset(vm_name, path)


def _nsg_chain(chain: str, index: int, item: PathNsg) -> list[str]:
    nsg = item.nsg
    shift = _MARK_BITS * index
    mask = _GENERATION_MASK << shift
    mark = (((item.generation - 1) % _GENERATION_MASK) + 1) << shift
    lines = [f"\tchain {chain} {{"]
    if nsg.flush_connection:
        lines.append("\t\tct direction reply return")
        lines.append(f"\t\tct state established,related ct mark and {mask:#010x} == {mark:#010x} return")
        allow = f"ct mark set ct mark and {~mask & 0xFFFFFFFF:#010x} or {mark:#010x} return"
    else:
        lines.append("\t\tct state established,related return")
        allow = "return"
    for rule in nsg.rules:
        verdict = allow if rule.allow else "drop"
        comment = _comment(f"{nsg.name}/{rule.name} {rule.priority}")
        lines.extend(f'\t\t{match}{verdict} comment "{comment}"' for match in rule_matches(rule))
    lines.append(f'\t\tdrop comment "{_comment(nsg.name)}: nothing allowed it"')
    lines.append("\t}")
    return lines


def rule_matches(rule: InboundRule) -> list[str]:
    """The nft match expressions (each ending in a space, verdict to follow) equivalent to one NSG rule."""
    matches = []
    for version, nfproto, keyword in ((4, "ipv4", "ip"), (6, "ipv6", "ip6")):
        source = rule.source.for_family(version)
        destination = rule.destination.for_family(version)
        if source is None or destination is None:
            continue
        parts = [f"meta nfproto {nfproto}"]
        parts += _address(keyword, "saddr", source)
        parts += _address(keyword, "daddr", destination)
        protocol = _protocol(rule, version)
        if protocol is None:
            continue
        parts += protocol
        matches.append(" ".join(parts) + " ")
    return matches


def _address(keyword: str, field: str, match: AddressMatch) -> list[str]:
    if match.any:
        return []
    operator = "!= " if match.negated else ""
    return [f"{keyword} {field} {operator}{_set(str(n) for n in match.networks)}"]


def _protocol(rule: InboundRule, version: int) -> list[str] | None:
    ports = []
    if rule.source_ports is not None:
        ports.append(f"th sport {_port_set(rule.source_ports)}")
    if rule.destination_ports is not None:
        ports.append(f"th dport {_port_set(rule.destination_ports)}")
    if rule.protocol in ("tcp", "udp"):
        return [f"meta l4proto {rule.protocol}", *ports]
    if rule.protocol == "*":
        # Ports only mean something for TCP and UDP; a port-less "*" rule matches every protocol.
        return ["meta l4proto { tcp, udp }", *ports] if ports else []
    if rule.protocol == "icmp":
        return ["meta l4proto icmp" if version == 4 else "meta l4proto ipv6-icmp"]
    return [f"meta l4proto {rule.protocol}"]


def _port_set(ranges: Sequence[tuple[int, int]]) -> str:
    return _set(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def _set(items: Iterable[str]) -> str:
    values = list(items)
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _comment(text: str) -> str:
    """nft comments: at most 128 bytes, no double quotes."""
    return text.replace('"', "'").replace("\\", "/")[:120]
