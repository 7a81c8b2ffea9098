"""Policy, as pure functions: may this principal open this port on this VM, for how long, from which source.

A VM opts in through tags (names are case-insensitive, as in Azure):
    jit-ports                   "22,3389"  (required: no tag, no grant)
    jit-max-duration            "PT2H"     (optional, tightens the broker-wide maximum)
    jit-required-role           "JIT.Prod" (optional app role the caller must hold)
    jit-justification-required  "true"     (optional)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from jitbroker.config import Settings
from jitbroker.durations import format_duration, parse_duration
from jitbroker.errors import (
    AddressFamilyMismatch,
    InvalidRequest,
    NoNetworkSecurityGroup,
    NotAllowed,
    NotFound,
    VmNotEligible,
    VmNotRunning,
)
from jitbroker.model import VM_DELETED, VmTopology

TAG_PORTS = "jit-ports"
TAG_MAX_DURATION = "jit-max-duration"
TAG_REQUIRED_ROLE = "jit-required-role"
TAG_JUSTIFICATION = "jit-justification-required"

PROTOCOL_PORTS = {"ssh": 22, "rdp": 3389}
_OS_DEFAULT_PROTOCOL = {"linux": "ssh", "windows": "rdp"}
_MAX_JUSTIFICATION = 500

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class VmPolicy:
    """What a VM's tags allow."""

    ports: frozenset[int]
    max_duration: timedelta | None = None
    required_role: str | None = None
    justification_required: bool = False


def _tag(tags: Mapping[str, str], name: str) -> str | None:
    for key, value in tags.items():
        if key.lower() == name:
            return value.strip()
    return None


def vm_policy(tags: Mapping[str, str]) -> VmPolicy | None:
    """The VM's opt-in policy from its tags; None when it has not opted in or its tags are malformed."""
    ports_tag = _tag(tags, TAG_PORTS)
    if not ports_tag:
        return None
    try:
        ports = frozenset(int(p) for p in ports_tag.replace(";", ",").split(",") if p.strip())
        max_tag = _tag(tags, TAG_MAX_DURATION)
        max_duration = parse_duration(max_tag) if max_tag else None
    except (ValueError, InvalidRequest):
        return None
    if not ports or not all(1 <= p <= 65535 for p in ports):
        return None
    return VmPolicy(
        ports=ports,
        max_duration=max_duration,
        required_role=_tag(tags, TAG_REQUIRED_ROLE) or None,
        justification_required=(_tag(tags, TAG_JUSTIFICATION) or "").lower() in ("true", "yes", "1"),
    )


def in_allowed_scope(vm_id: str, scopes: tuple[str, ...]) -> bool:
    """True when the VM's resource id sits under one of the configured scopes (case-insensitive)."""
    vm_parts = vm_id.lower().strip("/").split("/")
    for scope in scopes:
        scope_parts = scope.lower().strip("/").split("/")
        if vm_parts[: len(scope_parts)] == scope_parts:
            return True
    return False


def require_requester(roles: frozenset[str], settings: Settings) -> None:
    """Only holders of the requester (or admin) role may ask for anything."""
    if not roles & {settings.requester_role, settings.admin_role}:
        raise NotAllowed(f"you need the {settings.requester_role} app role to request access")


def is_admin(roles: frozenset[str], settings: Settings) -> bool:
    """Admins see and revoke every grant."""
    return settings.admin_role in roles


def eligible_policy(vm: VmTopology, roles: frozenset[str], settings: Settings) -> VmPolicy:
    """The VM's policy when this caller may request it at all; `VmNotEligible` says why not."""
    if not in_allowed_scope(vm.vm_id, settings.allowed_scopes):
        raise VmNotEligible(
            f"VM {vm.name} is outside the subscriptions and resource groups this broker serves"
        )
    policy = vm_policy(vm.tags)
    if policy is None:
        raise VmNotEligible(
            f"VM {vm.name} has not opted in to just-in-time access (tag {TAG_PORTS} missing or malformed)"
        )
    if policy.required_role and policy.required_role not in roles:
        raise VmNotEligible(f"VM {vm.name} needs the {policy.required_role} app role")
    return policy


def choose_port(policy: VmPolicy, *, port: int | None, protocol: str | None, os_type: str) -> tuple[int, str]:
    """The port to open and its protocol label, from what was asked and what the VM opted in to."""
    if protocol is not None:
        protocol = protocol.lower()
        if protocol not in PROTOCOL_PORTS:
            raise InvalidRequest(f"protocol {protocol!r} is not one of {', '.join(PROTOCOL_PORTS)}")
        if port is not None and port != PROTOCOL_PORTS[protocol]:
            raise InvalidRequest(
                f"port {port} does not match protocol {protocol} ({PROTOCOL_PORTS[protocol]})"
            )
        port = PROTOCOL_PORTS[protocol]
    if port is None:
        default = PROTOCOL_PORTS.get(_OS_DEFAULT_PROTOCOL.get(os_type.lower(), ""), 0)
        if default in policy.ports:
            port = default
        elif len(policy.ports) == 1:
            (port,) = policy.ports
        else:
            raise InvalidRequest(f"name a port: this VM opens {_ports(policy)}")
    if not 1 <= port <= 65535:
        raise InvalidRequest(f"port {port} is not between 1 and 65535")
    if port not in policy.ports:
        raise VmNotEligible(f"port {port} is not opted in for this VM (it opens {_ports(policy)})")
    label = next((name for name, number in PROTOCOL_PORTS.items() if number == port), "tcp")
    return port, label


def _ports(policy: VmPolicy) -> str:
    return ", ".join(str(p) for p in sorted(policy.ports))


def max_duration(policy: VmPolicy, settings: Settings) -> timedelta:
    """The longest single request: the broker's maximum, tightened by the VM's tag."""
    if policy.max_duration is None:
        return settings.max_duration
    return min(policy.max_duration, settings.max_duration)


def choose_duration(requested: timedelta | None, policy: VmPolicy, settings: Settings) -> timedelta:
    """The duration to grant: the default when none is asked, refused when above the maximum."""
    limit = max_duration(policy, settings)
    if requested is None:
        return min(settings.default_duration, limit)
    if requested > limit:
        raise InvalidRequest(
            f"duration {format_duration(requested)} is longer than the maximum {format_duration(limit)}"
        )
    return requested


def extended_expiry(
    *, created_at: datetime, expires_at: datetime, now: datetime, duration: timedelta, settings: Settings
) -> tuple[datetime, bool]:
    """The new expiry for an extension: `now + duration`, never earlier than today's expiry, never past the
    maximum total; the flag is True when the maximum total cut it short."""
    ceiling = created_at + settings.max_total_duration
    wanted = max(expires_at, now + duration)
    if wanted > ceiling:
        return max(expires_at, ceiling), True
    return wanted, False


def choose_source(caller: IpAddress | None, requested: str | None, settings: Settings) -> IpNetwork:
    """The source prefix to let in: the caller's own address, or another one no wider than policy allows."""
    if requested is None:
        if caller is None:
            raise InvalidRequest("the broker cannot tell your address; name a source")
        return ipaddress.ip_network(caller)
    text = requested.strip()
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise InvalidRequest(
            f"source {requested!r} is not an IP address or a CIDR prefix without host bits "
            "(service tags, '*', 'Internet' and 'any' are never allowed)"
        ) from None
    widest = settings.max_source_prefix_v4 if network.version == 4 else settings.max_source_prefix_v6
    if network.prefixlen == 0 or network.prefixlen < widest:
        raise InvalidRequest(
            f"source {network} is wider than policy allows (at most /{widest} for IPv{network.version})"
        )
    if network.is_multicast or network.is_unspecified or network.is_loopback or network.is_link_local:
        raise InvalidRequest(f"source {network} cannot be a caller's address")
    if isinstance(network, ipaddress.IPv6Network) and _embeds_ipv4(network):
        raise InvalidRequest(
            f"source {network} is an IPv4 address written as IPv6: name the IPv4 address itself"
        )
    return network


_IPV4_IN_IPV6 = (ipaddress.IPv6Network("::ffff:0:0/96"), ipaddress.IPv6Network("64:ff9b::/96"))


def _embeds_ipv4(network: ipaddress.IPv6Network) -> bool:
    """IPv4-mapped and NAT64 prefixes: an NSG would read them as IPv6 and open a door nobody can use."""
    return any(network.subnet_of(embedded) or embedded.subnet_of(network) for embedded in _IPV4_IN_IPV6)


def choose_private_ip(vm: VmTopology, source: IpNetwork) -> str:
    """The VM address the rule lets the source reach: the first private IP of the source's family."""
    for address in vm.addresses:
        if address.version == source.version:
            return address.private_ip
    other = 4 if source.version == 6 else 6
    raise AddressFamilyMismatch(
        f"you reached the broker over IPv{source.version} ({source}) but VM {vm.name} is reachable only over "
        f"IPv{other}: retry the request over IPv{other} (e.g. curl -{other}) or name an IPv{other} source"
    )


def require_running(vm: VmTopology) -> None:
    """A stopped VM gets no door: it would stay open for whoever comes later."""
    if vm.power_state == VM_DELETED:
        raise NotFound(f"VM {vm.name} no longer exists")
    if not vm.is_running:
        raise VmNotRunning(f"VM {vm.name} is {vm.power_state}, not running: start it first")


def require_nsg(vm: VmTopology) -> None:
    """No NSG means nothing to open and nothing protected: refuse rather than pretend."""
    if not vm.nsg_ids:
        raise NoNetworkSecurityGroup(
            f"no network security group filters VM {vm.name}'s traffic: there is nothing to open"
        )


def check_justification(policy: VmPolicy, justification: str | None) -> str | None:
    """The justification to record; required when the VM's tag says so."""
    text = (justification or "").strip() or None
    if policy.justification_required and text is None:
        raise InvalidRequest("this VM requires a justification: say why you need access")
    if text is not None and len(text) > _MAX_JUSTIFICATION:
        raise InvalidRequest(f"justification is longer than {_MAX_JUSTIFICATION} characters")
    return text
