"""Pure planning of one NSG's whole rule collection: what the broker's rules must be, given its open grants.

The store is the truth. For one NSG, `desired_state` turns the open grants recorded for VMs behind *that*
NSG into one rule per (VM private IP, port): sources = those grants' sources, expiry = the latest of theirs.
A rule cannot tell two VMs with the same private IP apart, so when two VMs behind one NSG share an address
(subnets of different VNets with overlapping ranges) only the VM whose grant came first is served and the
others' grants are refused, never opened silently.

`plan_nsg` replaces the broker's own rules in the collection read from ARM by the desired ones and keeps
every other rule exactly as read; `plan_trim` (the sweeper's orphan pass) may only take sources out of the
broker's rules or delete them, never add. `put_body` is the NSG as read with the new collection, read-only
parts dropped, and `require_foreign_untouched` refuses any body that would change a rule the broker does
not own. Nothing here does I/O.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jitbroker.errors import AddressAmbiguous, Conflict, InvalidRequest, JitError, NotAllowed
from jitbroker.model import Opening
from jitbroker.rules import (
    Band,
    RuleView,
    as_rule_view,
    describe,
    is_broker_rule,
    normalise_sources,
    rule_expiry,
    rule_key,
    rule_name,
)

RuleKey = tuple[str, int]  # (canonical private IP, port)

# Read-only parts of an NSG and of a security rule (the REST specs mark them readOnly); ARM ignores them on
# PUT, and azure-mgmt-network drops them when it serialises a model, so the broker drops them too.
_NSG_READ_ONLY = ("etag",)
_NSG_PROPS_READ_ONLY = (
    "provisioningState",
    "resourceGuid",
    "defaultSecurityRules",
    "networkInterfaces",
    "subnets",
    "flowLogs",
)
_RULE_READ_ONLY = ("etag",)
_RULE_PROPS_READ_ONLY = ("provisioningState",)


@dataclass(frozen=True)
class DesiredRule:
    """The one broker rule an NSG should hold for a (VM private IP, port)."""

    private_ip: str
    port: int
    vm_id: str
    vm_name: str
    sources: tuple[str, ...]
    expires_at: datetime
    grant_ids: frozenset[str]
    first_created: datetime
    source_of: Mapping[str, str] = field(default_factory=dict)  # grant id -> its canonical source


@dataclass(frozen=True)
class Desired:
    """An NSG's desired broker rules, and the open grants that cannot be served in it (with the reason)."""

    rules: Mapping[RuleKey, DesiredRule]
    refused: Mapping[str, JitError] = field(default_factory=dict)

    def access(self) -> dict[RuleKey, tuple[frozenset[str], datetime]]:
        """Who gets in where until when: what two desired states must agree on to need no write."""
        return {key: (frozenset(r.sources), _second(r.expires_at)) for key, r in self.rules.items()}


@dataclass(frozen=True)
class PlacedRule:
    """A broker rule in a plan: its name and priority, and the grants whose sources it holds."""

    name: str
    priority: int
    private_ip: str
    port: int
    grant_ids: frozenset[str]


@dataclass(frozen=True)
class NsgPlan:
    """The NSG's new security-rule collection (raw ARM JSON), and what it means for each grant."""

    security_rules: tuple[dict[str, Any], ...]
    changed: bool
    placed: tuple[PlacedRule, ...]
    refused: Mapping[str, JitError]
    removed: tuple[str, ...] = ()
    trimmed: tuple[str, ...] = ()

    def rule_for(self, grant_id: str) -> PlacedRule | None:
        """The rule that holds this grant's source, if the plan placed it."""
        return next((p for p in self.placed if grant_id in p.grant_ids), None)


def desired_state(openings: Iterable[Opening], now: datetime) -> Desired:
    """Group an NSG's open grants into one desired rule per (VM private IP, port); refuse what cannot be."""
    # An address shared by two VMs behind this NSG belongs to the VM whose grant began to open first: a grant
    # already served opened before any that comes later, so a later request never takes a door someone has.
    live = sorted((o for o in openings if o.expires_at > now), key=lambda o: (o.opened, o.grant_id))
    refused: dict[str, JitError] = {}
    owner: dict[str, Opening] = {}  # private IP -> the first grant's opening: its VM owns the address here
    grouped: dict[RuleKey, list[Opening]] = {}
    for opening in live:
        try:
            address = str(ipaddress.ip_address(opening.private_ip))
            normalise_sources([opening.source], address)
        except (ValueError, JitError):  # a record that cannot become a rule (a damaged row)
            refused[opening.grant_id] = InvalidRequest(
                f"the grant's source {opening.source!r} or VM address {opening.private_ip!r} cannot make an "
                "NSG rule; ask again"
            )
            continue
        first = owner.setdefault(address, opening)
        if first.vm_id.lower() != opening.vm_id.lower():
            refused[opening.grant_id] = AddressAmbiguous(
                f"VM {opening.vm_name} has the private address {address}, as VM {first.vm_name} behind the "
                "same network security group does; a rule cannot tell them apart, so jit-broker does not "
                "open it for this grant"
            )
            continue
        grouped.setdefault((address, opening.port), []).append(opening)
    rules: dict[RuleKey, DesiredRule] = {}
    for (address, port), group in grouped.items():
        rules[(address, port)] = DesiredRule(
            private_ip=address,
            port=port,
            vm_id=group[0].vm_id,
            vm_name=group[0].vm_name,
            sources=normalise_sources((o.source for o in group), address),
            expires_at=max(o.expires_at for o in group),
            grant_ids=frozenset(o.grant_id for o in group),
            first_created=group[0].created_at,
            source_of={o.grant_id: canonical(o.source) for o in group},
        )
    return Desired(rules, refused)


def broker_rules(security_rules: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The raw rules of a collection that the broker wrote (`rules.is_broker_rule`)."""
    return [r for r in security_rules if is_broker_rule(r)]


def plan_nsg(security_rules: Sequence[Mapping[str, Any]], desired: Desired, band: Band) -> NsgPlan:
    """The collection with the broker's rules replaced by `desired`; every other rule kept as read.

    A key keeps the priority its rule already has (when in the band), new keys take the lowest free
    priorities in order of their first grant; a key that finds none left, or whose planned name is taken by
    a rule the broker did not write, is refused for its grants.
    """
    foreign = [r for r in security_rules if not is_broker_rule(r)]
    ours = broker_rules(security_rules)
    used = {v.priority for v in map(as_rule_view, foreign) if v.direction.lower() == "inbound"}
    foreign_names = {str(r.get("name", "")).lower() for r in foreign}
    existing: dict[RuleKey, list[Mapping[str, Any]]] = {}
    for raw in ours:
        key = rule_key(str(raw.get("name", "")))
        if key is not None:
            existing.setdefault(key, []).append(raw)

    refused = dict(desired.refused)
    priorities: dict[RuleKey, int] = {}
    for key in sorted(desired.rules, key=lambda k: (desired.rules[k].first_created, k)):
        kept = [as_rule_view(r).priority for r in existing.get(key, [])]
        mine = min((p for p in kept if band[0] <= p <= band[1] and p not in used), default=None)
        if mine is not None:
            priorities[key] = mine
            used.add(mine)
    placed: list[PlacedRule] = []
    new_rules: list[dict[str, Any]] = []
    for key in sorted(desired.rules, key=lambda k: (desired.rules[k].first_created, k)):
        want = desired.rules[key]
        name = rule_name(want.private_ip, want.port, want.expires_at)
        if name.lower() in foreign_names:
            _refuse(refused, want, f"the NSG already holds a rule named {name} that jit-broker did not write")
            continue
        priority = priorities.get(key)
        if priority is None:
            priority = next((p for p in range(band[0], band[1] + 1) if p not in used), None)
            if priority is None:
                _refuse(refused, want, f"no free inbound priority left between {band[0]} and {band[1]}")
                continue
            used.add(priority)
        rule = _rule_json(want, name, priority)
        same = next((r for r in existing.get(key, []) if _same_rule(r, rule)), None)
        new_rules.append(copy.deepcopy(dict(same)) if same is not None else rule)
        placed.append(PlacedRule(name, priority, want.private_ip, want.port, want.grant_ids))
    kept_names = {str(r["name"]).lower() for r in new_rules}
    removed = tuple(sorted(str(r.get("name")) for r in ours if str(r.get("name")).lower() not in kept_names))
    changed = {_shape(r) for r in ours} != {_shape(r) for r in new_rules}
    collection = (*(copy.deepcopy(dict(r)) for r in foreign), *sorted(new_rules, key=_priority))
    return NsgPlan(collection, changed, tuple(placed), refused, removed=removed)


def plan_trim(security_rules: Sequence[Mapping[str, Any]], desired: Desired, now: datetime) -> NsgPlan:
    """The sweeper's orphan pass: broker rules lose every source no open grant of this NSG holds, and go
    when none is left or their own name says they expired. Never adds a source, a rule or a later expiry."""
    out: list[dict[str, Any]] = []
    removed: list[str] = []
    trimmed: list[str] = []
    placed: list[PlacedRule] = []
    for raw in security_rules:
        if not is_broker_rule(raw):
            out.append(copy.deepcopy(dict(raw)))
            continue
        view = as_rule_view(raw)
        key = rule_key(view.name)
        expiry = rule_expiry(view.name)
        want = desired.rules.get(key) if key is not None else None
        if key is None or expiry is None or expiry <= now or want is None:
            removed.append(view.name)
            continue
        wanted = {canonical(s) for s in want.sources}
        keep = tuple(p for p in view.source_prefixes if canonical(p) in wanted)
        if not keep:
            removed.append(view.name)
            continue
        holders = _holders(want, keep)
        placed.append(PlacedRule(view.name, view.priority, key[0], key[1], holders))
        if len(keep) == len(view.source_prefixes):
            out.append(copy.deepcopy(dict(raw)))
            continue
        trimmed.append(view.name)
        out.append(_trimmed_rule(raw, view, want, keep, expiry))
    changed = bool(removed or trimmed)
    return NsgPlan(tuple(out), changed, tuple(placed), {}, removed=tuple(removed), trimmed=tuple(trimmed))


def put_body(nsg: Mapping[str, Any], security_rules: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The NSG exactly as read, with a new security-rule collection and without its read-only parts."""
    body = {k: copy.deepcopy(v) for k, v in nsg.items() if k not in _NSG_READ_ONLY}
    props = {
        k: copy.deepcopy(v) for k, v in (nsg.get("properties") or {}).items() if k not in _NSG_PROPS_READ_ONLY
    }
    props["securityRules"] = [_writable_rule(r) for r in security_rules]
    body["properties"] = props
    return body


def require_foreign_untouched(
    before: Iterable[Mapping[str, Any]], after: Iterable[Mapping[str, Any]]
) -> None:
    """Refuse (`NotAllowed`) a collection that adds, drops or changes any rule the broker did not write."""
    mine = [_writable_rule(r) for r in before if not is_broker_rule(r)]
    theirs = [_writable_rule(r) for r in after if not is_broker_rule(r)]
    if sorted(map(repr, mine)) != sorted(map(repr, theirs)):
        raise NotAllowed("jit-broker refused a write that would change a rule it did not create")


def rules_view(security_rules: Iterable[Mapping[str, Any]]) -> list[RuleView]:
    """Every rule of a raw collection reduced to what warnings read."""
    return [as_rule_view(r) for r in security_rules]


# ---------------------------------------------------------------- internals


def _rule_json(want: DesiredRule, name: str, priority: int) -> dict[str, Any]:
    return {
        "name": name,
        "properties": {
            "description": describe(
                vm_name=want.vm_name,
                expires_at=want.expires_at,
                sources=want.sources,
                grant_ids=want.grant_ids,
            ),
            "protocol": "Tcp",
            "sourcePortRange": "*",
            "destinationPortRange": str(want.port),
            "sourceAddressPrefixes": list(want.sources),
            "destinationAddressPrefix": want.private_ip,
            "access": "Allow",
            "priority": priority,
            "direction": "Inbound",
        },
    }


def _trimmed_rule(
    raw: Mapping[str, Any], view: RuleView, want: DesiredRule, keep: tuple[str, ...], expiry: datetime
) -> dict[str, Any]:
    rule = _writable_rule(raw)
    props = rule["properties"]
    props.pop("sourceAddressPrefix", None)
    props["sourceAddressPrefixes"] = list(keep)
    props["description"] = describe(
        vm_name=want.vm_name, expires_at=expiry, sources=keep, grant_ids=_holders(want, keep)
    )
    return rule


def _holders(want: DesiredRule, keep: Iterable[str]) -> frozenset[str]:
    kept = {canonical(p) for p in keep}
    return frozenset(gid for gid, source in want.source_of.items() if source in kept)


def _writable_rule(raw: Mapping[str, Any]) -> dict[str, Any]:
    rule = {k: copy.deepcopy(v) for k, v in raw.items() if k not in _RULE_READ_ONLY}
    if isinstance(raw.get("properties"), Mapping):
        rule["properties"] = {
            k: copy.deepcopy(v) for k, v in raw["properties"].items() if k not in _RULE_PROPS_READ_ONLY
        }
    return rule


def _same_rule(current: Mapping[str, Any], planned: Mapping[str, Any]) -> bool:
    """True when the rule as read is exactly what the broker would write (any edit by hand is rewritten)."""
    return _shape(current) == _shape(planned)


def _shape(rule: Mapping[str, Any]) -> tuple[Any, ...]:
    props = {k: v for k, v in (rule.get("properties") or {}).items() if k not in _RULE_PROPS_READ_ONLY}
    sources = [props.pop("sourceAddressPrefix", None), *(props.pop("sourceAddressPrefixes", None) or [])]
    for key in ("protocol", "access", "direction"):
        if isinstance(props.get(key), str):
            props[key] = props[key].lower()
    return (
        str(rule.get("name", "")).lower(),
        frozenset(canonical(str(s)) for s in sources if s),
        tuple(sorted((k, repr(v)) for k, v in props.items() if v not in (None, [], ""))),
    )


def _refuse(refused: dict[str, JitError], want: DesiredRule, reason: str) -> None:
    for grant_id in want.grant_ids:
        refused[grant_id] = Conflict(reason)


def _priority(rule: Mapping[str, Any]) -> int:
    return as_rule_view(rule).priority


def canonical(prefix: str) -> str:
    """A prefix in its canonical text (`192.0.2.4/32`), or as given when it is not one."""
    try:
        return str(ipaddress.ip_network(prefix.strip(), strict=False))
    except ValueError:
        return prefix.strip()


def _second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)
