"""Pure planning of the broker's NSG rules: naming, ownership, priorities, source lists and warnings.

In each NSG the broker keeps one inbound allow rule per (VM private IP, port) whose source list holds every
open grant's source (`jitbroker.nsgplan` plans the whole collection). The rule's name carries the VM
address, the port and the latest expiry, so the sweeper can remove an expired rule from the NSG alone,
without the store:

    jit-192.0.2.4-p22-x20250101T120000Z
    jit-2001.0db8.0000.0000.0000.0000.0000.0004-p22-x20250101T120000Z     (IPv6, exploded, ':' -> '.')

and its description starts with a marker (`jit-broker:`) and repeats the expiry; `is_broker_rule` requires
both, so a rule someone else wrote is never taken for ours. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jitbroker.errors import InvalidRequest

MARKER = "jit-broker:"
DESCRIPTION_LIMIT = 140  # ARM: "Restricted to 140 chars"
NAME_LIMIT = 80
PRIORITY_MIN, PRIORITY_MAX = 100, 4096
INTERNET_WIDE = frozenset({"*", "any", "internet", "0.0.0.0/0", "::/0", "0.0.0.0", "::"})

_V4 = r"\d{1,3}(?:\.\d{1,3}){3}"
_V6 = r"[0-9a-f]{4}(?:\.[0-9a-f]{4}){7}"
_NAME_RE = re.compile(rf"^jit-(?P<ip>{_V4}|{_V6})-p(?P<port>\d{{1,5}})-x(?P<exp>\d{{8}}T\d{{6}}Z)$")
_DESC_RE = re.compile(r"^jit-broker: until (?P<exp>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)(?: |$)")
_NAME_TIME = "%Y%m%dT%H%M%SZ"
_DESC_TIME = "%Y-%m-%dT%H:%M:%SZ"

Band = tuple[int, int]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RuleView:
    """One security rule reduced to what planning and warnings need, whatever shape it was read in."""

    name: str
    priority: int
    direction: str
    access: str
    protocol: str
    source_prefixes: tuple[str, ...]
    destination_prefixes: tuple[str, ...]
    destination_ports: tuple[str, ...]
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The flat JSON-ish form (lists, not tuples) used by `TopologyReader.nsg` and the API."""
        data = asdict(self)
        for key in ("source_prefixes", "destination_prefixes", "destination_ports"):
            data[key] = list(data[key])
        return data


# ---------------------------------------------------------------- names and ownership


def rule_name(private_ip: str, port: int, expires_at: datetime) -> str:
    """The broker's name for the rule opening `port` on `private_ip` until `expires_at` (rounded up)."""
    address = _address(private_ip)
    _check_port(port)
    return f"jit-{_ip_token(address)}-p{port}-x{_ceil_second(expires_at).strftime(_NAME_TIME)}"


def rule_expiry(name: str) -> datetime | None:
    """The expiry a broker rule name carries (UTC), or None when the name is not a broker rule name."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match["exp"], _NAME_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def rule_key(name: str) -> tuple[str, int] | None:
    """The (canonical private IP, port) a broker rule name is about, or None for any other name."""
    match = _NAME_RE.match(name)
    if match is None or rule_expiry(name) is None:
        return None
    token = match["ip"]
    try:
        address: IpAddress = (
            ipaddress.IPv4Address(token)
            if token.count(".") == 3
            else ipaddress.IPv6Address(token.replace(".", ":"))
        )
    except ValueError:
        return None
    port = int(match["port"])
    if not 1 <= port <= 65535 or _ip_token(address) != token:
        return None
    return str(address), port


def is_broker_rule(rule: RuleView | Mapping[str, Any] | Any) -> bool:
    """True only for a rule the broker wrote: strict name, marker description, same expiry, inbound allow.

    A false positive would let the broker change or delete someone else's rule, so every part must agree.
    """
    view = as_rule_view(rule)
    if rule_key(view.name) is None or view.direction.lower() != "inbound" or view.access.lower() != "allow":
        return False
    match = _DESC_RE.match(view.description)
    if match is None:
        return False
    expiry = rule_expiry(view.name)
    return expiry is not None and match["exp"] == expiry.strftime(_DESC_TIME)


def describe(
    *, vm_name: str, expires_at: datetime, sources: Collection[str], grant_ids: Collection[str] = ()
) -> str:
    """The rule description: marker, expiry, VM, and the grant ids if they fit in 140 chars, else a digest."""
    head = f"{MARKER} until {_ceil_second(expires_at).strftime(_DESC_TIME)} vm {_safe(vm_name)[:40]}"
    ids = sorted(grant_ids)
    if ids:
        listed = f"{head} grants {','.join(ids)}"
        if len(listed) <= DESCRIPTION_LIMIT:
            return listed
    digest = hashlib.sha256("\n".join(sorted(ids or sources)).encode()).hexdigest()[:16]
    what = "grants" if ids else "sources"
    return f"{head} {what} {len(ids or sources)} sha256:{digest}"[:DESCRIPTION_LIMIT]


# ---------------------------------------------------------------- normalising rules


def as_rule_view(rule: RuleView | Mapping[str, Any] | Any) -> RuleView:
    """Normalise a rule given as a RuleView, its flat dict, ARM JSON (`properties`) or an azure-mgmt model."""
    if isinstance(rule, RuleView):
        return rule
    if isinstance(rule, Mapping) and "source_prefixes" in rule:
        return RuleView(
            name=str(rule.get("name", "")),
            priority=int(rule.get("priority", 0)),
            direction=str(rule.get("direction", "")),
            access=str(rule.get("access", "")),
            protocol=str(rule.get("protocol", "")),
            source_prefixes=tuple(rule.get("source_prefixes") or ()),
            destination_prefixes=tuple(rule.get("destination_prefixes") or ()),
            destination_ports=tuple(rule.get("destination_ports") or ()),
            description=str(rule.get("description") or ""),
        )
    if isinstance(rule, Mapping):
        props = rule.get("properties") or rule
        name = rule.get("name", "")
    else:
        props = _model_properties(rule)
        name = getattr(rule, "name", "") or ""
    return RuleView(
        name=str(name or ""),
        priority=int(props.get("priority") or 0),
        direction=str(props.get("direction") or ""),
        access=str(props.get("access") or ""),
        protocol=str(props.get("protocol") or ""),
        source_prefixes=_one_or_many(props, "sourceAddressPrefix", "sourceAddressPrefixes"),
        destination_prefixes=_one_or_many(props, "destinationAddressPrefix", "destinationAddressPrefixes"),
        destination_ports=_one_or_many(props, "destinationPortRange", "destinationPortRanges"),
        description=str(props.get("description") or ""),
    )


def _model_properties(rule: Any) -> dict[str, Any]:
    # azure-mgmt models expose flattened snake_case attributes; map them to the ARM names used above.
    names = {
        "priority": "priority",
        "direction": "direction",
        "access": "access",
        "protocol": "protocol",
        "description": "description",
        "sourceAddressPrefix": "source_address_prefix",
        "sourceAddressPrefixes": "source_address_prefixes",
        "destinationAddressPrefix": "destination_address_prefix",
        "destinationAddressPrefixes": "destination_address_prefixes",
        "destinationPortRange": "destination_port_range",
        "destinationPortRanges": "destination_port_ranges",
    }
    return {arm: getattr(rule, attr, None) for arm, attr in names.items()}


def _one_or_many(props: Mapping[str, Any], single: str, plural: str) -> tuple[str, ...]:
    many = [str(v) for v in (props.get(plural) or ()) if v not in (None, "")]
    one = props.get(single)
    if one not in (None, ""):
        many.insert(0, str(one))
    return tuple(many)


# ---------------------------------------------------------------- planning


def normalise_sources(sources: Iterable[str], private_ip: str) -> tuple[str, ...]:
    """Validate and canonicalise source prefixes for a rule to `private_ip`, sorted and deduplicated.

    Refuses anything but a literal prefix of the VM address's family with no host bits, and never
    internet-wide (`*`, `Internet`, `/0`), whatever policy upstream decided.
    """
    family = _address(private_ip).version
    networks: set[IpNetwork] = set()
    for raw in sources:
        text = str(raw).strip()
        if text.lower() in INTERNET_WIDE:
            raise InvalidRequest(f"source {text!r} would open the port to everyone")
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as err:
            raise InvalidRequest(f"source {text!r} is not an address or prefix without host bits") from err
        if network.prefixlen == 0:
            raise InvalidRequest(f"source {text!r} would open the port to everyone")
        if network.version != family:
            raise InvalidRequest(f"source {text!r} is IPv{network.version} but the VM address is IPv{family}")
        networks.add(network)
    ordered = sorted(networks, key=lambda n: (int(n.network_address), n.prefixlen))
    return tuple(str(n) for n in ordered)


def rules_for_key(nsg_rules: Iterable[Any], private_ip: str, port: int) -> list[RuleView]:
    """The broker's own rules in an NSG for one (private IP, port), whatever expiry their names carry."""
    key = (str(_address(private_ip)), port)
    views = [as_rule_view(r) for r in nsg_rules]
    return [v for v in views if is_broker_rule(v) and rule_key(v.name) == key]


# ---------------------------------------------------------------- warnings


def exposure_warnings(
    nsg_rules: Iterable[Any],
    *,
    port: int,
    private_ip: str,
    band: Band,
    source: str | None = None,
    priority: int | None = None,
) -> list[str]:
    """Why a grant may be pointless or useless: an existing broad allow for the port, or a deny that wins.

    A deny defeats the grant when it sits at a higher priority (lower number) than the broker's rule
    (`priority`, else the priority its rule has or would take here) and matches TCP to this port and address
    from the grant's source (or from everywhere, when `source` is not given).
    """
    address = _address(private_ip)
    caller = ipaddress.ip_network(source, strict=False) if source else None
    warnings: list[str] = []
    views = sorted((as_rule_view(r) for r in nsg_rules), key=lambda v: v.priority)
    ours_at = priority if priority is not None else _planned_priority(views, str(address), port, band)
    for view in views:
        if view.direction.lower() != "inbound" or is_broker_rule(view):
            continue
        if not (
            _protocol_covers_tcp(view) and _ports_cover(view, port) and _destination_covers(view, address)
        ):
            continue
        if view.access.lower() == "allow" and _broad(view.source_prefixes):
            warnings.append(
                f"rule {view.name!r} (priority {view.priority}) already allows port {port} from "
                f"{', '.join(view.source_prefixes)}: just-in-time access adds no protection here"
            )
        elif view.access.lower() == "deny" and view.priority < ours_at and _source_covers(view, caller):
            warnings.append(
                f"rule {view.name!r} (priority {view.priority}) denies port {port} before the broker's rule "
                f"(priority {ours_at}): the grant will not let traffic in"
            )
    return warnings


def _planned_priority(views: list[RuleView], address: str, port: int, band: Band) -> int:
    """The priority of the broker's rule for this key, else the lowest free one in the band (as plan_rule)."""
    ours = rules_for_key(views, address, port)
    if ours:
        return min(v.priority for v in ours)
    used = {v.priority for v in views if v.direction.lower() == "inbound"}
    return next((p for p in range(band[0], band[1] + 1) if p not in used), band[0])


def _protocol_covers_tcp(view: RuleView) -> bool:
    return view.protocol.lower() in ("tcp", "*", "any", "")


def _ports_cover(view: RuleView, port: int) -> bool:
    for item in view.destination_ports:
        text = item.strip()
        if text in ("*", "any", "Any"):
            return True
        low, _, high = text.partition("-")
        try:
            if int(low) <= port <= int(high or low):
                return True
        except ValueError:
            continue
    return False


def _destination_covers(view: RuleView, address: IpAddress) -> bool:
    for item in view.destination_prefixes:
        text = item.strip()
        if text.lower() in ("*", "any", "virtualnetwork"):
            return True
        try:
            if address in ipaddress.ip_network(text, strict=False):
                return True
        except (ValueError, TypeError):
            continue
    return False


def _source_covers(view: RuleView, caller: IpNetwork | None) -> bool:
    if _broad(view.source_prefixes, wide_prefix=False):
        return True
    if caller is None:
        return False
    for item in view.source_prefixes:
        try:
            network = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            continue
        if network.version == caller.version and caller.subnet_of(network):  # type: ignore[arg-type]
            return True
    return False


def _broad(prefixes: Iterable[str], *, wide_prefix: bool = True) -> bool:
    for item in prefixes:
        text = item.strip()
        if text.lower() in INTERNET_WIDE:
            return True
        if not wide_prefix:
            continue
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if network.prefixlen <= (8 if network.version == 4 else 32):
            return True
    return False


def live_session_warning(nsg: Mapping[str, Any]) -> str | None:
    """A warning when the NSG (ARM JSON) keeps established flows after a rule goes (`flushConnection` off):
    a revoke or expiry then stops new connections only."""
    props = nsg.get("properties") or {}
    if not nsg or props.get("flushConnection"):
        return None
    name = str(nsg.get("name") or "the VM's NSG")
    return (
        f"NSG {name!r} has flushConnection off: a revoke or expiry will not cut live sessions, only new "
        "connections (turn flushConnection on to end sessions when the door closes)"
    )


# ---------------------------------------------------------------- small helpers


def _address(text: str) -> IpAddress:
    try:
        return ipaddress.ip_address(str(text).strip())
    except ValueError as err:
        raise InvalidRequest(f"{text!r} is not an IP address") from err


def _ip_token(address: IpAddress) -> str:
    return str(address) if address.version == 4 else address.exploded.replace(":", ".")


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidRequest(f"port {port!r} is not between 1 and 65535")


def _check_band(band: Band) -> None:
    low, high = band
    if not PRIORITY_MIN <= low <= high <= PRIORITY_MAX:
        raise ValueError(f"priority band {band} must lie within {PRIORITY_MIN}..{PRIORITY_MAX}")


def _canonical(prefix: str) -> str:
    try:
        return str(ipaddress.ip_network(prefix.strip(), strict=False))
    except ValueError:
        return prefix.strip()


def _ceil_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else _ceil_second(moment)


def _ceil_second(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("expiry must be timezone-aware")
    utc = moment.astimezone(UTC)
    whole = utc.replace(microsecond=0)
    return whole if utc == whole else whole + timedelta(seconds=1)


def _safe(text: str) -> str:
    return "".join(ch if ch.isprintable() and ch not in "\r\n\t" else "_" for ch in text)
