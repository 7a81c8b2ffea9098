"""Policy as a table: eligibility, ports, durations, sources and address families."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from jitbroker import policy
from jitbroker.config import Settings
from jitbroker.durations import parse_duration
from jitbroker.errors import (
    AddressFamilyMismatch,
    InvalidRequest,
    NoNetworkSecurityGroup,
    NotAllowed,
    NotFound,
    VmNotEligible,
    VmNotRunning,
)
from jitbroker.model import VM_DELETED, NicAddress, VmTopology

SUB = "/subscriptions/00000000-0000-4000-8000-0000000000a1"
RG = f"{SUB}/resourceGroups/rg-jit-demo"
ENV = {
    "JIT_AUTHORITY_HOST": "https://127.0.0.1:1",
    "JIT_TENANT_ID": "t",
    "JIT_API_CLIENT_ID": "c",
    "JIT_API_APP_ID_URI": "api://c",
    "JIT_ALLOWED_SCOPES": RG,
    "JIT_ARM_ENDPOINT": "https://127.0.0.1:2",
    "JIT_TABLE_CONNECTION_STRING": "UseDevelopmentStorage=true",
    "JIT_MAX_SOURCE_PREFIX_V4": "28",
    "JIT_MAX_SOURCE_PREFIX_V6": "64",
}
SETTINGS = Settings.from_env(ENV)
REQUESTER = frozenset({"JIT.Requester"})


def vm(
    *,
    tags: dict[str, str] | None = None,
    power: str = "running",
    nsgs: tuple[str, ...] = ("nsg",),
    addresses: tuple[str, ...] = ("192.0.2.4",),
    rg: str = RG,
) -> VmTopology:
    return VmTopology(
        vm_id=f"{rg}/providers/Microsoft.Compute/virtualMachines/web-01",
        name="web-01",
        subscription=SUB.rsplit("/", maxsplit=1)[-1],
        resource_group=rg.rsplit("/", maxsplit=1)[-1],
        location="westeurope",
        os_type="Linux",
        admin_username="azureuser",
        power_state=power,
        tags={"jit-ports": "22"} if tags is None else tags,
        addresses=tuple(
            NicAddress(
                private_ip=a,
                version=ipaddress.ip_address(a).version,
                public_ip=None,
                fqdn=None,
                subnet_id=None,
            )
            for a in addresses
        ),
        nsg_ids=nsgs,
    )


@pytest.mark.parametrize(
    ("tags", "roles", "rg", "outcome"),
    [
        ({"jit-ports": "22"}, REQUESTER, RG, frozenset({22})),
        ({"JIT-Ports": "22, 3389"}, REQUESTER, RG, frozenset({22, 3389})),
        ({}, REQUESTER, RG, VmNotEligible),
        ({"owner": "ops"}, REQUESTER, RG, VmNotEligible),
        ({"jit-ports": "ssh"}, REQUESTER, RG, VmNotEligible),
        ({"jit-ports": "70000"}, REQUESTER, RG, VmNotEligible),
        ({"jit-ports": "22", "jit-max-duration": "forever"}, REQUESTER, RG, VmNotEligible),
        ({"jit-ports": "22"}, REQUESTER, f"{SUB}/resourceGroups/other", VmNotEligible),
        ({"jit-ports": "22", "jit-required-role": "JIT.Admin"}, REQUESTER, RG, VmNotEligible),
        (
            {"jit-ports": "22", "jit-required-role": "JIT.Admin"},
            frozenset({"JIT.Admin"}),
            RG,
            frozenset({22}),
        ),
    ],
)
def test_a_vm_is_eligible_only_when_opted_in_in_scope_and_the_role_fits(tags, roles, rg, outcome) -> None:
    if isinstance(outcome, frozenset):
        assert policy.eligible_policy(vm(tags=tags, rg=rg), roles, SETTINGS).ports == outcome
    else:
        with pytest.raises(outcome):
            policy.eligible_policy(vm(tags=tags, rg=rg), roles, SETTINGS)


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        (frozenset(), False),
        (frozenset({"Other"}), False),
        (REQUESTER, True),
        (frozenset({"JIT.Admin"}), True),
    ],
)
def test_only_requesters_and_admins_may_ask(roles, allowed) -> None:
    if allowed:
        policy.require_requester(roles, SETTINGS)
    else:
        with pytest.raises(NotAllowed, match=r"JIT\.Requester"):
            policy.require_requester(roles, SETTINGS)


@pytest.mark.parametrize(
    ("ports", "port", "protocol", "os_type", "outcome"),
    [
        ({22}, None, None, "Linux", (22, "ssh")),
        ({3389}, None, None, "Windows", (3389, "rdp")),
        ({22, 3389}, None, None, "Windows", (3389, "rdp")),
        ({5432}, None, None, "Linux", (5432, "tcp")),
        ({22, 5432}, 5432, None, "Linux", (5432, "tcp")),
        ({22, 3389}, None, "RDP", "Linux", (3389, "rdp")),
        ({22}, 22, "ssh", "Linux", (22, "ssh")),
        ({22}, 3389, "ssh", "Linux", InvalidRequest),
        ({22}, None, "telnet", "Linux", InvalidRequest),
        ({5432, 6379}, None, None, "Linux", InvalidRequest),
        ({22}, 3389, None, "Linux", VmNotEligible),
    ],
)
def test_port_comes_from_the_request_or_the_vm_os_and_must_be_opted_in(
    ports, port, protocol, os_type, outcome
):
    vm_policy = policy.VmPolicy(ports=frozenset(ports))
    if isinstance(outcome, tuple):
        assert policy.choose_port(vm_policy, port=port, protocol=protocol, os_type=os_type) == outcome
    else:
        with pytest.raises(outcome):
            policy.choose_port(vm_policy, port=port, protocol=protocol, os_type=os_type)


@pytest.mark.parametrize(
    ("requested", "vm_max", "outcome"),
    [
        (None, None, timedelta(hours=1)),
        ("PT30M", None, timedelta(minutes=30)),
        ("4h", None, timedelta(hours=4)),
        ("PT4H1S", None, InvalidRequest),
        (None, "PT30M", timedelta(minutes=30)),
        ("PT45M", "PT30M", InvalidRequest),
        ("PT8H", "PT12H", InvalidRequest),
    ],
)
def test_duration_defaults_and_never_exceeds_the_tightest_maximum(requested, vm_max, outcome) -> None:
    vm_policy = policy.VmPolicy(
        ports=frozenset({22}), max_duration=parse_duration(vm_max) if vm_max else None
    )
    asked = parse_duration(requested) if requested else None
    if isinstance(outcome, timedelta):
        assert policy.choose_duration(asked, vm_policy, SETTINGS) == outcome
    else:
        with pytest.raises(outcome, match="longer than the maximum"):
            policy.choose_duration(asked, vm_policy, SETTINGS)


def test_extension_never_passes_the_maximum_total() -> None:
    created = datetime(2026, 1, 1, 8, tzinfo=UTC)
    now = created + timedelta(hours=7)
    expiry, capped = policy.extended_expiry(
        created_at=created,
        expires_at=now + timedelta(minutes=10),
        now=now,
        duration=timedelta(hours=2),
        settings=SETTINGS,
    )
    assert (expiry, capped) == (created + timedelta(hours=8), True)
    expiry, capped = policy.extended_expiry(
        created_at=created,
        expires_at=created + timedelta(hours=1),
        now=created,
        duration=timedelta(hours=2),
        settings=SETTINGS,
    )
    assert (expiry, capped) == (created + timedelta(hours=2), False)


CALLER_V4 = ipaddress.ip_address("203.0.113.10")
CALLER_V6 = ipaddress.ip_address("2001:db8::10")
# The shape of a source (prefix width, symbolic names, IPv4 written as IPv6) is checked whoever names it; this
# table names sources as a holder of the override role would, from a lab whose documentation ranges count as
# callers' addresses (tests/broker/test_sources.py: who may name a source, which addresses may be one).
LAB = Settings.from_env({**ENV, "JIT_EXTRA_SOURCE_RANGES": "198.51.100.0/24,203.0.113.0/24,2001:db8::/32"})
OVERRIDE = frozenset({"JIT.Requester", "JIT.SourceOverride"})


@pytest.mark.parametrize(
    ("caller", "requested", "outcome"),
    [
        (CALLER_V4, None, "203.0.113.10/32"),
        (CALLER_V6, None, "2001:db8::10/128"),
        (CALLER_V4, "198.51.100.7", "198.51.100.7/32"),
        (CALLER_V4, "203.0.113.16/28", "203.0.113.16/28"),
        (CALLER_V4, "203.0.113.0/24", InvalidRequest),
        (CALLER_V6, "2001:db8:1::/64", "2001:db8:1::/64"),
        (CALLER_V6, "2001:db8::/32", InvalidRequest),
        (CALLER_V4, "203.0.113.17/28", InvalidRequest),
        (CALLER_V4, "*", InvalidRequest),
        (CALLER_V4, "Internet", InvalidRequest),
        (CALLER_V4, "AzureCloud", InvalidRequest),
        (CALLER_V4, "VirtualNetwork", InvalidRequest),
        (CALLER_V4, "0.0.0.0/0", InvalidRequest),
        (CALLER_V4, "::/0", InvalidRequest),
        (CALLER_V4, "0.0.0.0", InvalidRequest),
        (CALLER_V4, "224.0.0.1", InvalidRequest),
        (CALLER_V4, "203.0.113.300", InvalidRequest),
        (CALLER_V6, "::ffff:203.0.113.10", InvalidRequest),
        (CALLER_V6, "::ffff:0:0/96", InvalidRequest),
        (CALLER_V6, "64:ff9b::203.0.113.10", InvalidRequest),
        (None, None, InvalidRequest),
    ],
)
def test_source_is_the_caller_or_a_narrow_prefix_never_everyone(caller, requested, outcome) -> None:
    if isinstance(outcome, str):
        assert str(policy.choose_source(caller, requested, LAB, roles=OVERRIDE).network) == outcome
    else:
        with pytest.raises(outcome):
            policy.choose_source(caller, requested, LAB, roles=OVERRIDE)


def test_an_ipv6_caller_to_an_ipv4_only_vm_is_told_to_retry_over_ipv4() -> None:
    with pytest.raises(AddressFamilyMismatch, match="retry the request over IPv4"):
        policy.choose_private_ip(vm(addresses=("192.0.2.4",)), ipaddress.ip_network("2001:db8::10/128"))


def test_a_dual_stack_vm_gets_the_rule_on_the_callers_family() -> None:
    dual = vm(addresses=("192.0.2.52", "2001:db8:0:1::4"))
    assert policy.choose_private_ip(dual, ipaddress.ip_network("2001:db8::10/128")) == "2001:db8:0:1::4"
    assert policy.choose_private_ip(dual, ipaddress.ip_network("203.0.113.10/32")) == "192.0.2.52"


def test_a_stopped_vm_and_a_vm_without_nsg_are_refused_with_reasons() -> None:
    with pytest.raises(VmNotRunning, match="deallocated"):
        policy.require_running(vm(power="deallocated"))
    with pytest.raises(NoNetworkSecurityGroup, match="nothing to open"):
        policy.require_nsg(vm(nsgs=()))


def test_a_vm_deleted_since_it_was_listed_is_not_found_rather_than_stopped() -> None:
    with pytest.raises(NotFound, match="no longer exists"):
        policy.require_running(vm(power=VM_DELETED))


@pytest.mark.parametrize(
    ("required", "given", "outcome"),
    [
        (False, None, None),
        (False, " why ", "why"),
        (True, "incident 42", "incident 42"),
        (True, " ", InvalidRequest),
    ],
)
def test_justification_is_required_only_where_the_vm_says_so(required, given, outcome) -> None:
    vm_policy = policy.VmPolicy(ports=frozenset({22}), justification_required=required)
    if outcome is InvalidRequest:
        with pytest.raises(InvalidRequest, match="justification"):
            policy.check_justification(vm_policy, given)
    else:
        assert policy.check_justification(vm_policy, given) == outcome


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT30M", 1800),
        ("pt1h30m", 5400),
        ("P1DT1H", 90000),
        ("30m", 1800),
        ("2h", 7200),
        ("90s", 90),
        ("45", 45),
        (60, 60),
    ],
)
def test_durations_accept_iso_short_forms_and_seconds(text, seconds) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "P", "PT", "0", "-5", "PT0S", "5 minutes", "1y", "PT1.5H", "99999999999999999d", True]
)
def test_bad_durations_are_refused_with_the_accepted_forms(text) -> None:
    with pytest.raises(InvalidRequest):
        parse_duration(text)
