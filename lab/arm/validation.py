"""The Network resource provider's checks on security rules, as pure functions that raise `ArmError`.

What ARM enforces and how it words it (reference §2.5, §2.6 and public error logs):

| check | status | code |
|---|---|---|
| name: 1-80 chars, word char first, word char or `_` last, `.-_` inside | 400 | InvalidResourceName |
| body not JSON / missing or mistyped required field / unknown enum | 400 | InvalidRequestFormat |
| priority outside 100-4096 | 400 | SecurityRuleInvalidPriority (assumed: no verbatim text found) |
| bad address prefix (host bits set, `any`, garbage) | 400 | SecurityRuleInvalidAddressPrefix |
| tag or `*` inside a plural prefix list, or singular and plural both given | 400 |
  SecurityRuleParameterContainsUnsupportedValue |
| bad port or range | 400 | SecurityRuleInvalidPortRange |
| no source (nor destination) prefix, prefixes or ASGs | 400 | SecurityRuleParametersMissing |
| IPv4 and IPv6 prefixes in one rule | 400 |
  ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies |
| same priority and direction as another rule | 400 | SecurityRuleConflict |
| more than 1000 rules in one NSG | 400 | SecurityRuleCountLimitReached |
| over 4000 prefixes of one kind in an NSG | 400 | SecurityRuleAddressesOrPortsPerSecurityGroupLimitReached |
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from lab.arm.errors import ArmError, invalid_request_format

MIN_PRIORITY = 100
MAX_PRIORITY = 4096
MAX_RULES_PER_NSG = 1000
MAX_PREFIXES_PER_NSG = 4000
MAX_DESCRIPTION = 140
PROTOCOLS = ("Tcp", "Udp", "Icmp", "Esp", "*", "Ah")
ACCESSES = ("Allow", "Deny")
DIRECTIONS = ("Inbound", "Outbound")

_NAME = re.compile(r"^\w(?:[\w.\-]{0,78}\w)?$")
_SERVICE_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)?$")
_PORT_RANGE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
_PLURAL_FIELDS = (
    "sourceAddressPrefixes",
    "destinationAddressPrefixes",
    "sourcePortRanges",
    "destinationPortRanges",
)


def check_name(name: str) -> None:
    """ARM's resource-name rule for security rules (and NSGs)."""
    if not _NAME.match(name):
        raise ArmError(
            400,
            "InvalidResourceName",
            f"Resource name {name} is invalid. The name can be up to 80 characters long. It must begin "
            "with a word "
            "character, and it must end with a word character or with '_'. The name may contain word "
            "characters "
            "or '.', '-', '_'.",
            details=[],
        )


def normalize_rule(rule_id: str, properties: Any) -> dict[str, Any]:
    """Validate a rule's `properties` as given in a PUT and return them as ARM stores and shows them.

    ARM shows every rule with all four plural arrays (empty when unused) and canonical enum casing.
    """
    if not isinstance(properties, Mapping):
        raise invalid_request_format("Security rule properties must be an object.")
    out: dict[str, Any] = {}
    out["protocol"] = _enum(properties, "protocol", PROTOCOLS)
    out["access"] = _enum(properties, "access", ACCESSES)
    out["direction"] = _enum(properties, "direction", DIRECTIONS)
    out["priority"] = _priority(rule_id, properties.get("priority"))
    description = properties.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise invalid_request_format("Property 'description' must be a string.")
        if len(description) > MAX_DESCRIPTION:
            raise invalid_request_format(
                f"Security rule description is {len(description)} characters long; the limit is "
                f"{MAX_DESCRIPTION}."
            )
        out["description"] = description
    for side in ("source", "destination"):
        single, plural = _prefixes(rule_id, properties, side)
        if single is not None:
            out[f"{side}AddressPrefix"] = single
        out[f"{side}AddressPrefixes"] = plural
        single_port, plural_ports = _ports(rule_id, properties, side)
        if single_port is not None:
            out[f"{side}PortRange"] = single_port
        out[f"{side}PortRanges"] = plural_ports
    for key in ("sourceApplicationSecurityGroups", "destinationApplicationSecurityGroups"):
        if properties.get(key):
            out[key] = list(properties[key])
    _check_one_family(rule_id, out)
    return out


def check_conflicts(
    rule_id: str, rule: Mapping[str, Any], others: Iterable[tuple[str, Mapping[str, Any]]]
) -> None:
    """No two rules of one NSG share priority and direction (`others` excludes the rule being replaced)."""
    for other_id, other in others:
        if other["priority"] == rule["priority"] and other["direction"] == rule["direction"]:
            raise ArmError(
                400,
                "SecurityRuleConflict",
                f"Security rule {other_id} conflicts with rule {rule_id}. Rules cannot have the same "
                "Priority and "
                "Direction. To learn more, see aka.ms/nsgrules.",
                details=[],
            )


def check_limits(nsg_id: str, rules: list[Mapping[str, Any]]) -> None:
    """An NSG holds at most 1000 rules and 4000 prefixes of each kind across its rules."""
    if len(rules) > MAX_RULES_PER_NSG:
        raise ArmError(
            400,
            "SecurityRuleCountLimitReached",
            f"A security group cannot have more than {MAX_RULES_PER_NSG} security rules.",
            details=[],
        )
    for kind in ("SourceAddressPrefixes", "DestinationAddressPrefixes"):
        key = kind[0].lower() + kind[1:]
        total = sum(max(1, len(r.get(key, ()))) for r in rules)
        if total > MAX_PREFIXES_PER_NSG:
            raise ArmError(
                400,
                "SecurityRuleAddressesOrPortsPerSecurityGroupLimitReached",
                f"Network security group {nsg_id} has {total} {kind}. A security group cannot have more than "
                f"{MAX_PREFIXES_PER_NSG} {kind} as per the limit "
                "MaxSecurityRuleAddressesOrPortsPerSecurityGroup.",
                details=[],
            )


def _enum(properties: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = properties.get(key)
    if value is None:
        raise invalid_request_format(f"Required property '{key}' not found in JSON.")
    if isinstance(value, str):
        for choice in allowed:
            if value.lower() == choice.lower():
                return choice
    raise invalid_request_format(
        f"Requested value '{value}' for '{key}' was not found; allowed: {', '.join(allowed)}."
    )


def _priority(rule_id: str, value: Any) -> int:
    if value is None:
        raise invalid_request_format("Required property 'priority' not found in JSON.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request_format(f"Could not convert '{value}' to an integer for 'priority'.")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise ArmError(
            400,
            "SecurityRuleInvalidPriority",
            f"Security rule {rule_id} has invalid Priority. Value provided: {value}. Allowed range "
            f"{MIN_PRIORITY}-{MAX_PRIORITY}.",
            details=[],
        )
    return value


def _prefixes(rule_id: str, properties: Mapping[str, Any], side: str) -> tuple[str | None, list[str]]:
    single = properties.get(f"{side}AddressPrefix")
    plural = properties.get(f"{side}AddressPrefixes") or []
    asgs = properties.get(f"{side}ApplicationSecurityGroups") or []
    field = f"{side[0].upper()}{side[1:]}AddressPrefix"
    if not isinstance(plural, list) or not all(isinstance(p, str) for p in plural):
        raise invalid_request_format(f"Property '{side}AddressPrefixes' must be a list of strings.")
    if single is not None and not isinstance(single, str):
        raise invalid_request_format(f"Property '{side}AddressPrefix' must be a string.")
    if single and plural:
        raise _unsupported(rule_id, field + "es", single)
    if not single and not plural and not asgs:
        raise _parameters_missing(rule_id, field)
    if single:
        if single != "*" and not _is_service_tag(single) and not _is_network(single):
            raise _bad_prefix(rule_id, single)
        return single, []
    for prefix in plural:
        if prefix == "*" or _is_service_tag(prefix):
            raise _unsupported(rule_id, field + "es", prefix)
        if not _is_network(prefix):
            raise _bad_prefix(rule_id, prefix)
    return None, list(plural)


def _ports(rule_id: str, properties: Mapping[str, Any], side: str) -> tuple[str | None, list[str]]:
    single = properties.get(f"{side}PortRange")
    plural = properties.get(f"{side}PortRanges") or []
    if single is not None and not isinstance(single, str):
        single = str(single)
    if not isinstance(plural, list):
        raise invalid_request_format(f"Property '{side}PortRanges' must be a list of strings.")
    plural = [str(p) for p in plural]
    if single and plural:
        raise _unsupported(rule_id, f"{side[0].upper()}{side[1:]}PortRanges", single)
    if not single and not plural:
        raise invalid_request_format(
            f"Security rule {rule_id} must specify {side}PortRange or {side}PortRanges."
        )
    if single:
        if single != "*":
            _check_port(single)
        return single, []
    for port in plural:
        if port == "*":
            raise _unsupported(rule_id, f"{side[0].upper()}{side[1:]}PortRanges", port)
        _check_port(port)
    return None, plural


def _check_one_family(rule_id: str, rule: Mapping[str, Any]) -> None:
    """Every address and prefix of a rule, source and destination together, is IPv4 or every one is IPv6.

    NRP's wording (gardener/gardener-extension-provider-azure#397, an NSG PUT whose rule listed an IPv4 and an
    IPv6 source; hashicorp/terraform-provider-azurerm#12534, a service tag's v4+v6 prefixes as sources).
    Service tags and `*` belong to no family.
    """
    families: set[int] = set()
    for side in ("source", "destination"):
        values = list(rule.get(f"{side}AddressPrefixes", ()))
        single = rule.get(f"{side}AddressPrefix")
        if single is not None:
            values.append(single)
        families.update(_family(v) for v in values if _is_network(v))
    if len(families) > 1:
        raise ArmError(
            400,
            "ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies",
            f"Resource {rule_id} contains IP addresses or prefixes that belong to different address "
            "families. All IP addresses or prefixes in the resource should belong to the same address "
            "family.",
            details=[],
        )


def _family(value: str) -> int:
    return ipaddress.ip_network(value, strict=False).version


def _parameters_missing(rule_id: str, field: str) -> ArmError:
    """A rule naming no source (or destination) at all.

    NRP's wording for the source side (Azure/sap-hana#135, Azure/migAz#103): "Required security rule
    parameters are missing for security rule with Id: {id}. Security rule must specify SourceAddressPrefixes,
    SourceAddressPrefix, or SourceApplicationSecurityGroups." The destination side is assumed to read alike.
    """
    kind = field.removesuffix("AddressPrefix")
    return ArmError(
        400,
        "SecurityRuleParametersMissing",
        f"Required security rule parameters are missing for security rule with Id: {rule_id}. Security rule "
        f"must specify {field}es, {field}, or {kind}ApplicationSecurityGroups.",
        details=[],
    )


def _check_port(value: str) -> None:
    match = _PORT_RANGE.match(value)
    ok = False
    if match:
        low = int(match.group(1))
        high = int(match.group(2) or low)
        ok = 0 <= low <= high <= 65535
    if not ok:
        raise ArmError(
            400,
            "SecurityRuleInvalidPortRange",
            f"Security rule has invalid Port range. Value provided: {value}. Value should be an integer OR "
            "integer "
            "range with '-' delimiter. Valid range 0-65535.",
            details=[],
        )


def _is_service_tag(value: str) -> bool:
    """`Internet`, `VirtualNetwork`, `Sql.WestEurope`, … (ARM refuses `any`: the wildcard is `*`)."""
    return bool(_SERVICE_TAG.match(value)) and value.lower() != "any"


def _is_network(value: str) -> bool:
    """A single address or a CIDR without host bits (ARM rejects `20.20.20.20/16`)."""
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=True)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _bad_prefix(rule_id: str, value: str) -> ArmError:
    return ArmError(
        400,
        "SecurityRuleInvalidAddressPrefix",
        f"Security rule {rule_id} has invalid Address prefix. Value provided: {value}",
        details=[],
    )


def _unsupported(rule_id: str, field: str, value: str) -> ArmError:
    return ArmError(
        400,
        "SecurityRuleParameterContainsUnsupportedValue",
        f"Security rule parameter {field} for rule with Id {rule_id} cannot specify existing VIRTUALNETWORK, "
        f"INTERNET, AZURELOADBALANCER, '*' or system tags. Unsupported value used: {value}.",
        details=[],
    )
