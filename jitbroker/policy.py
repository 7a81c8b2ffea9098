"""Policy, as pure functions: may this principal open this port on this VM, for how long, from which source.

A VM opts in through tags (names are case-insensitive, as in Azure):
    jit-ports                   "22,3389"  (required: no tag, no grant)
    jit-max-duration            "PT2H"     (optional, tightens the broker-wide maximum)
    jit-required-role           "JIT.Prod" (optional app role the caller must hold)
    jit-justification-required  "true"     (optional)
    jit-sources                 "203.0.113.0/24,2001:db8:1::/48"  (optional allow-list of sources callers may
                                           name; when present, every named source must lie inside it)
    jit-approval                "required" (optional: a second person approves each grant; the clock starts
                                           at approval)
    jit-approvers               "JIT.Approver.Prod" (optional app role of this VM's approvers; default the
                                           broker's JIT_APPROVER_ROLE)

Sources (docs/design.md §5): by default the source is the caller's own address as the platform reports it.
Naming another one takes a permission — the app role `JIT_SOURCE_OVERRIDE_ROLE`, or the VM's `jit-sources`
allow-list — and a named source always lies inside the VM's allow-list when it has one, role or not. Either
way the source must be a global unicast address: loopback, private (RFC 1918, carrier-grade NAT, unique
local), link-local, multicast, reserved and documentation ranges and Azure's platform address are refused,
unless `JIT_ALLOW_PRIVATE_SOURCES` lets the private ranges in or `JIT_EXTRA_SOURCE_RANGES` (a lab's or test
network's setting) names the range. Unspecified, multicast, link-local, `0.0.0.0/8`, `240.0.0.0/4` and
`168.63.129.16` are never a source, whatever the settings say.
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
    SourceNotAllowed,
    SourceNotRoutable,
    VmNotEligible,
    VmNotRunning,
)
from jitbroker.model import VM_DELETED, VmTopology

TAG_PORTS = "jit-ports"
TAG_MAX_DURATION = "jit-max-duration"
TAG_REQUIRED_ROLE = "jit-required-role"
TAG_JUSTIFICATION = "jit-justification-required"
TAG_SOURCES = "jit-sources"
TAG_APPROVAL = "jit-approval"
TAG_APPROVERS = "jit-approvers"

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
    # The `jit-sources` allow-list: None without the tag; empty when the tag is empty or malformed (then no
    # source may be named for this VM: a typo never widens what is allowed).
    sources: tuple[IpNetwork, ...] | None = None
    approval_required: bool = False
    approver_role: str | None = None  # the VM's approvers' app role when it names one


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
        sources=_allow_list(_tag(tags, TAG_SOURCES)),
        approval_required=(_tag(tags, TAG_APPROVAL) or "").lower() in ("required", "true", "yes", "1"),
        approver_role=_tag(tags, TAG_APPROVERS) or None,
    )


def _allow_list(value: str | None) -> tuple[IpNetwork, ...] | None:
    """The `jit-sources` tag's prefixes (comma, semicolon or space separated); () when any is malformed."""
    if value is None:
        return None
    try:
        return tuple(
            ipaddress.ip_network(part, strict=True)
            for part in value.replace(";", ",").replace(" ", ",").split(",")
            if part.strip()
        )
    except ValueError:
        return ()


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


@dataclass(frozen=True)
class SourceChoice:
    """The source a grant lets in, and, when the caller named it instead of using their own address, what
    allowed them to (for the audit trail)."""

    network: IpNetwork
    named_via: str | None = None

    @property
    def named(self) -> bool:
        """True when the caller named a source other than the address the broker sees for them."""
        return self.named_via is not None


def may_name_sources(roles: frozenset[str], settings: Settings) -> bool:
    """True when the caller holds the role that lets them name a source on any VM (within its allow-list)."""
    return settings.source_override_role in roles


def choose_source(
    caller: IpAddress | None,
    requested: str | None,
    settings: Settings,
    *,
    roles: frozenset[str] = frozenset(),
    vm_policy: VmPolicy | None = None,
    vm_name: str = "this VM",
) -> SourceChoice:
    """The source prefix to let in: the caller's own address, or one they named with the permission to.

    Refusals: `InvalidRequest` for what is no address or prefix (or wider than policy allows),
    `SourceNotAllowed` for a named source without the permission or outside the VM's allow-list,
    `SourceNotRoutable` for an address no internet caller has (see the module docstring)."""
    own = None if caller is None else ipaddress.ip_network(caller)
    if requested is None:
        if own is None:
            raise InvalidRequest("the broker cannot tell your address; name a source")
        _require_routable(own, settings, yours=True)
        return SourceChoice(own)
    network = parse_source(requested, settings)
    if own is not None and network == own:  # naming one's own address needs no permission
        _require_routable(own, settings, yours=True)
        return SourceChoice(own)
    via = _naming_permission(network, roles, vm_policy, settings, vm_name)
    _require_routable(network, settings, yours=False)
    return SourceChoice(network, via)


def parse_source(requested: str, settings: Settings) -> IpNetwork:
    """A named source as a prefix no wider than policy allows; `InvalidRequest` for anything else."""
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
    if isinstance(network, ipaddress.IPv6Network) and _embeds_ipv4(network):
        raise InvalidRequest(
            f"source {network} is an IPv4 address written as IPv6: name the IPv4 address itself"
        )
    return network


def _naming_permission(
    network: IpNetwork,
    roles: frozenset[str],
    vm_policy: VmPolicy | None,
    settings: Settings,
    vm_name: str,
) -> str:
    """What lets this caller name `network` for this VM; `SourceNotAllowed` when nothing does."""
    allow_list = vm_policy.sources if vm_policy is not None else None
    if allow_list is not None:
        if not any(_inside(network, allowed) for allowed in allow_list):
            listed = ", ".join(str(a) for a in allow_list) or "none: the tag is empty or malformed"
            raise SourceNotAllowed(
                f"source {network} is outside VM {vm_name}'s allow-list of sources "
                f"({TAG_SOURCES}: {listed}); ask without a source to be let in from the address the broker "
                "sees for you"
            )
        if may_name_sources(roles, settings):
            return f"role {settings.source_override_role}, inside tag {TAG_SOURCES}"
        return f"tag {TAG_SOURCES}"
    if may_name_sources(roles, settings):
        return f"role {settings.source_override_role}"
    raise SourceNotAllowed(
        f"naming a source other than your own address needs the {settings.source_override_role} app role "
        f"or a {TAG_SOURCES} allow-list on VM {vm_name}; ask without a source to be let in from the address "
        "the broker sees for you"
    )


def _inside(network: IpNetwork, allowed: IpNetwork) -> bool:
    return network.version == allowed.version and network.subnet_of(allowed)  # type: ignore[arg-type]


# -- which addresses may be a source -------------------------------------------------------------------------

_Ranges = tuple[tuple[IpNetwork, str], ...]


def _ranges(*pairs: tuple[str, str]) -> _Ranges:
    return tuple((ipaddress.ip_network(prefix), what) for prefix, what in pairs)


#: Never a source, whatever the settings say (JIT_EXTRA_SOURCE_RANGES may not name them either).
NEVER_SOURCES = _ranges(
    ("0.0.0.0/8", "in 0.0.0.0/8 ('this network')"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16, where the instance metadata service answers)"),
    ("168.63.129.16/32", "Azure's platform address (168.63.129.16)"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4, or the broadcast address)"),
    ("::/128", "the unspecified address"),
    ("::ffff:0:0/96", "an IPv4 address written as IPv6"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "a multicast address"),
)
#: Private ranges: a source only when JIT_ALLOW_PRIVATE_SOURCES is on (or JIT_EXTRA_SOURCE_RANGES names them).
PRIVATE_SOURCES = _ranges(
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("100.64.0.0/10", "a carrier-grade NAT address (100.64.0.0/10)"),
    ("fc00::/7", "a unique local address (fc00::/7)"),
)
#: Not global unicast: a source only when JIT_EXTRA_SOURCE_RANGES names the range (a lab or test network).
SPECIAL_SOURCES = _ranges(
    ("127.0.0.0/8", "a loopback address"),
    ("192.0.0.0/24", "reserved for IETF protocol assignments (192.0.0.0/24)"),
    ("192.0.2.0/24", "a documentation address (192.0.2.0/24)"),
    ("192.88.99.0/24", "the 6to4 relay anycast range (192.88.99.0/24)"),
    ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)"),
    ("198.51.100.0/24", "a documentation address (198.51.100.0/24)"),
    ("203.0.113.0/24", "a documentation address (203.0.113.0/24)"),
    ("::1/128", "the loopback address"),
    ("64:ff9b::/96", "an IPv4 address written as IPv6 (NAT64)"),
    ("64:ff9b:1::/48", "a local-use NAT64 address (64:ff9b:1::/48)"),
    ("100::/64", "a discard-only address (100::/64)"),
    ("2001::/23", "reserved for IETF protocol assignments (2001::/23)"),
    ("2001:db8::/32", "a documentation address (2001:db8::/32)"),
    ("2002::/16", "a 6to4 address (2002::/16)"),
    ("3fff::/20", "a documentation address (3fff::/20)"),
    ("5f00::/16", "a segment-routing identifier (5f00::/16)"),
    ("fec0::/10", "a deprecated site-local address (fec0::/10)"),
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def source_problem(network: IpNetwork, settings: Settings) -> str | None:
    """Why `network` cannot be a source under these settings (a phrase: "a private address (RFC 1918)"), or
    None when it can: a global unicast prefix, or one the settings let in."""
    for never, what in NEVER_SOURCES:
        if _overlaps(network, never):
            return what
    if any(_inside(network, extra) for extra in settings.extra_source_ranges):
        return None
    for private, what in PRIVATE_SOURCES:
        if _overlaps(network, private):
            return None if settings.allow_private_sources and _inside(network, private) else what
    for special, what in SPECIAL_SOURCES:
        if _overlaps(network, special):
            return what
    return _not_global_unicast(network)


def _not_global_unicast(network: IpNetwork) -> str | None:
    if isinstance(network, ipaddress.IPv6Network) and not network.subnet_of(_GLOBAL_UNICAST_V6):
        return "outside the global unicast range (2000::/3)"
    if not (network.network_address.is_global and network.broadcast_address.is_global):
        return "not a global unicast address"
    return None


def _overlaps(network: IpNetwork, other: IpNetwork) -> bool:
    return network.version == other.version and network.overlaps(other)


def _require_routable(network: IpNetwork, settings: Settings, *, yours: bool) -> None:
    problem = source_problem(network, settings)
    if problem is None:
        return
    if yours:
        raise SourceNotRoutable(
            f"the address the broker sees for you, {network.network_address}, is {problem}: no rule is "
            "opened for it. If you reach the broker through a proxy or VPN, the broker may be reading the "
            "wrong address: ask an admin to check how it learns callers' addresses"
        )
    raise SourceNotRoutable(f"source {network} is {problem}: it cannot be let in")


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


def approver_role(policy: VmPolicy, settings: Settings) -> str:
    """The app role whose holders may approve grants on this VM."""
    return policy.approver_role or settings.approver_role


def require_approver(roles: frozenset[str], oid: str, *, requester: str, role: str) -> None:
    """Only a holder of the VM's approver role approves or denies, and never their own request."""
    if oid == requester:
        raise NotAllowed("nobody approves or denies their own request: ask another approver")
    if role not in roles:
        raise NotAllowed(f"approving or denying grants on this VM needs the {role} app role")
