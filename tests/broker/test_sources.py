"""Whose address a grant lets in: the caller's own by default; another only with the permission to name it,
inside the VM's allow-list, and never an address no internet caller has.

The first half is policy as a table (pure functions); the second drives the api broker over HTTP, where the
lab's callers use documentation addresses that `JIT_EXTRA_SOURCE_RANGES` lets in (lab/settings.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from jitbroker import policy
from jitbroker.config import ConfigError, Settings
from jitbroker.errors import InvalidRequest, SourceNotAllowed, SourceNotRoutable
from tests.broker.conftest import broker_rules, retag, sources

SUB = "/subscriptions/00000000-0000-4000-8000-0000000000a1"
ENV = {
    "JIT_AUTHORITY_HOST": "https://127.0.0.1:1",
    "JIT_TENANT_ID": "t",
    "JIT_API_CLIENT_ID": "c",
    "JIT_API_APP_ID_URI": "api://c",
    "JIT_ALLOWED_SCOPES": f"{SUB}/resourceGroups/rg-jit-demo",
    "JIT_ARM_ENDPOINT": "https://127.0.0.1:2",
    "JIT_TABLE_CONNECTION_STRING": "UseDevelopmentStorage=true",
}
AZURE = Settings.from_env(ENV)  # every default: no private sources, no extra ranges
PRIVATE = Settings.from_env({**ENV, "JIT_ALLOW_PRIVATE_SOURCES": "true"})
LAB = Settings.from_env({**ENV, "JIT_EXTRA_SOURCE_RANGES": "127.0.0.0/8,203.0.113.0/24,2001:db8::/32"})
REQUESTER = frozenset({"JIT.Requester"})
OVERRIDE = frozenset({"JIT.Requester", "JIT.SourceOverride"})
GLOBAL_V4 = "20.50.2.10"  # ordinary internet addresses
GLOBAL_V6 = "2a00:1450:4001:81a::200e"


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def tagged(**tags: str) -> policy.VmPolicy:
    vm_policy = policy.vm_policy({"jit-ports": "22", **{k.replace("_", "-"): v for k, v in tags.items()}})
    assert vm_policy is not None
    return vm_policy


# -- the caller's own address --------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", [GLOBAL_V4, GLOBAL_V6, "8.8.8.8", "2600:1f18::1"])
def test_a_global_caller_address_is_the_source(caller: str) -> None:
    choice = policy.choose_source(ip(caller), None, AZURE)
    assert choice.network == ipaddress.ip_network(caller)
    assert not choice.named


@pytest.mark.parametrize(
    ("caller", "what"),
    [
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.10", "private"),
        ("100.64.0.9", "carrier-grade NAT"),
        ("fd00::5", "unique local"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("168.63.129.16", "platform"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.0.0.0", "this network"),
        ("224.0.0.1", "multicast"),
        ("192.0.2.10", "documentation"),
        ("203.0.113.10", "documentation"),
        ("2001:db8::10", "documentation"),
        ("198.18.0.5", "benchmarking"),
        ("64:ff9b::cb00:710a", "IPv4"),
        ("2002:cb00:710a::1", "6to4"),
    ],
)
def test_a_caller_address_no_internet_caller_has_is_refused(caller: str, what: str) -> None:
    with pytest.raises(SourceNotRoutable, match=what) as refused:
        policy.choose_source(ip(caller), None, AZURE)
    assert refused.value.status == 400
    assert refused.value.code == "source_not_routable"
    assert "the address the broker sees for you" in refused.value.message


@pytest.mark.parametrize("caller", ["10.1.2.3", "172.31.255.1", "192.168.1.10", "100.64.0.9", "fd00::5"])
def test_private_ranges_are_callers_addresses_only_when_the_setting_allows_them(caller: str) -> None:
    assert policy.choose_source(ip(caller), None, PRIVATE).network == ipaddress.ip_network(caller)


@pytest.mark.parametrize(
    "caller", ["127.0.0.1", "169.254.169.254", "168.63.129.16", "240.0.0.1", "192.0.2.1"]
)
def test_allowing_private_ranges_lets_in_nothing_else(caller: str) -> None:
    with pytest.raises(SourceNotRoutable):
        policy.choose_source(ip(caller), None, PRIVATE)


@pytest.mark.parametrize("caller", ["127.0.0.1", "203.0.113.10", "2001:db8::10"])
def test_a_lab_names_the_ranges_its_callers_use(caller: str) -> None:
    assert policy.choose_source(ip(caller), None, LAB).network == ipaddress.ip_network(caller)
    with pytest.raises(SourceNotRoutable):
        policy.choose_source(ip("198.51.100.7"), None, LAB)  # a range the lab did not name


# -- naming a source -----------------------------------------------------------------------------------------


def test_naming_another_source_takes_the_role_or_an_allow_list() -> None:
    with pytest.raises(SourceNotAllowed, match=r"JIT\.SourceOverride") as refused:
        policy.choose_source(ip(GLOBAL_V4), "20.50.2.11", AZURE, roles=REQUESTER, vm_policy=tagged())
    assert (refused.value.status, refused.value.code) == (403, "source_not_allowed")

    by_role = policy.choose_source(ip(GLOBAL_V4), "20.50.2.11", AZURE, roles=OVERRIDE, vm_policy=tagged())
    assert str(by_role.network) == "20.50.2.11/32"
    assert by_role.named_via == "role JIT.SourceOverride"

    listed = tagged(jit_sources="20.50.2.0/24, 2a00:1450::/32")
    by_tag = policy.choose_source(ip(GLOBAL_V4), "20.50.2.11", AZURE, roles=REQUESTER, vm_policy=listed)
    assert by_tag.named_via == "tag jit-sources"
    v6 = policy.choose_source(ip(GLOBAL_V4), "2a00:1450::1", AZURE, roles=REQUESTER, vm_policy=listed)
    assert str(v6.network) == "2a00:1450::1/128"


def test_a_named_source_stays_inside_the_allow_list_even_for_the_role() -> None:
    listed = tagged(jit_sources="20.50.2.0/24")
    for roles in (REQUESTER, OVERRIDE):
        with pytest.raises(SourceNotAllowed, match=r"outside VM web-01's allow-list.*20\.50\.2\.0/24"):
            policy.choose_source(
                ip(GLOBAL_V4), "20.50.3.1", AZURE, roles=roles, vm_policy=listed, vm_name="web-01"
            )
    inside = policy.choose_source(ip(GLOBAL_V4), "20.50.2.99", AZURE, roles=OVERRIDE, vm_policy=listed)
    assert inside.named_via == "role JIT.SourceOverride, inside tag jit-sources"


@pytest.mark.parametrize("value", ["", "20.50.2.0/24,banana", "20.50.2.1/24", "*", "Internet"])
def test_an_empty_or_malformed_allow_list_lets_no_one_name_a_source(value: str) -> None:
    listed = tagged(jit_sources=value)
    assert listed.sources == ()
    with pytest.raises(SourceNotAllowed, match="empty or malformed"):
        policy.choose_source(ip(GLOBAL_V4), "20.50.2.11", AZURE, roles=OVERRIDE, vm_policy=listed)
    assert policy.choose_source(ip(GLOBAL_V4), None, AZURE, vm_policy=listed).network.num_addresses == 1


def test_naming_ones_own_address_needs_no_permission() -> None:
    choice = policy.choose_source(ip(GLOBAL_V4), f"{GLOBAL_V4}/32", AZURE, roles=REQUESTER)
    assert (str(choice.network), choice.named) == (f"{GLOBAL_V4}/32", False)


@pytest.mark.parametrize(
    "source",
    ["10.0.0.5", "192.168.1.1", "100.64.1.1", "fd00::1", "127.0.0.1", "169.254.169.254", "168.63.129.16",
     "240.0.0.1", "203.0.113.7", "192.0.2.21", "::1", "fe80::1", "100::1", "2001::1", "3fff::1"],
)  # fmt: skip
def test_a_named_source_must_be_a_global_address_even_for_the_role(source: str) -> None:
    with pytest.raises(SourceNotRoutable):
        policy.choose_source(ip(GLOBAL_V4), source, AZURE, roles=OVERRIDE)


def test_an_allow_list_naming_private_ranges_does_not_make_them_sources() -> None:
    listed = tagged(jit_sources="10.0.0.0/8")
    with pytest.raises(SourceNotRoutable, match="private"):
        policy.choose_source(ip(GLOBAL_V4), "10.1.1.1", AZURE, roles=REQUESTER, vm_policy=listed)
    assert (
        str(policy.choose_source(ip(GLOBAL_V4), "10.1.1.1", PRIVATE, vm_policy=listed).network)
        == "10.1.1.1/32"
    )


def test_the_shape_of_a_source_is_checked_before_who_names_it() -> None:
    with pytest.raises(InvalidRequest) as refused:
        policy.choose_source(ip(GLOBAL_V4), "20.50.2.0/24", AZURE, roles=REQUESTER)
    assert refused.value.code == "invalid_request"


def test_a_wide_prefix_spanning_a_special_range_is_refused() -> None:
    wide = Settings.from_env({**ENV, "JIT_MAX_SOURCE_PREFIX_V4": "8"})
    with pytest.raises(SourceNotRoutable, match="carrier-grade NAT"):
        policy.choose_source(ip(GLOBAL_V4), "100.0.0.0/8", wide, roles=OVERRIDE)  # holds 100.64.0.0/10


def test_whoami_knows_who_may_name_sources() -> None:
    assert not policy.may_name_sources(REQUESTER, AZURE)
    assert policy.may_name_sources(OVERRIDE, AZURE)
    renamed = dataclasses.replace(AZURE, source_override_role="Ops.AnySource")
    assert policy.may_name_sources(frozenset({"Ops.AnySource"}), renamed)


# -- the settings --------------------------------------------------------------------------------------------


def test_source_and_limit_settings_default_to_the_strict_side() -> None:
    assert AZURE.source_override_role == "JIT.SourceOverride"
    assert AZURE.allow_private_sources is False
    assert AZURE.extra_source_ranges == ()
    assert (AZURE.max_open_grants_per_principal, AZURE.max_sources_per_principal) == (10, 3)
    assert PRIVATE.allow_private_sources is True
    assert [str(r) for r in LAB.extra_source_ranges] == ["127.0.0.0/8", "203.0.113.0/24", "2001:db8::/32"]


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("JIT_ALLOW_PRIVATE_SOURCES", "maybe", "true or false"),
        ("JIT_EXTRA_SOURCE_RANGES", "10.0.0.1/8", "without host bits"),
        ("JIT_EXTRA_SOURCE_RANGES", "Internet", "without host bits"),
        ("JIT_EXTRA_SOURCE_RANGES", "0.0.0.0/0", "wider than"),
        ("JIT_EXTRA_SOURCE_RANGES", "2000::/3", "wider than"),
        ("JIT_EXTRA_SOURCE_RANGES", "169.254.0.0/16", "never a source"),
        ("JIT_EXTRA_SOURCE_RANGES", "168.63.129.16/32", "never a source"),
        ("JIT_EXTRA_SOURCE_RANGES", "fe80::/64", "never a source"),
        ("JIT_MAX_OPEN_GRANTS_PER_PRINCIPAL", "0", "between 1 and 1000"),
        ("JIT_MAX_SOURCES_PER_PRINCIPAL", "many", "invalid literal"),
    ],
)
def test_a_bad_source_or_limit_setting_is_named(name: str, value: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**ENV, name: value})
    assert name in str(raised.value)
    assert complaint in str(raised.value)


# -- over HTTP -----------------------------------------------------------------------------------------------

OVERRIDE_ROLES = ["JIT.Requester", "JIT.SourceOverride"]


def events(store: Any, kind: str, source: str) -> list[Any]:
    return [e for e in store.audit_events(limit=100_000) if e.kind == kind and e.source == source]


@pytest.mark.usefixtures("clean_lab")
def test_naming_another_source_without_permission_is_refused_and_audited(as_user, arm_admin, api_store):
    response = as_user("alice").post("/api/v1/grants", json={"vm": "web-01", "source": "198.51.100.201"})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "source_not_allowed"
    assert "JIT.SourceOverride" in response.json()["error"]["message"]
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []
    (denied,) = events(api_store, "denied", "198.51.100.201")
    assert denied.reason.startswith("source_not_allowed: ")


@pytest.mark.usefixtures("clean_lab")
def test_the_override_role_names_a_source_and_the_audit_says_who(as_user, token_for, arm_admin, api_store):
    alice = as_user("alice", token=token_for("alice", roles=OVERRIDE_ROLES))
    response = alice.post("/api/v1/grants", json={"vm": "web-01", "source": "198.51.100.202"})
    assert response.status_code == 201, response.text
    grant = response.json()
    assert grant["source"] == "198.51.100.202/32"
    (rule,) = broker_rules(arm_admin.nsg("web-01-nsg"))
    assert sources(rule) == {"198.51.100.202/32"}
    (requested,) = [e for e in api_store.audit_events(grant["id"]) if e.kind == "requested"]
    assert "alice@contoso.test" in requested.reason
    assert "role JIT.SourceOverride" in requested.reason
    assert requested.principal == grant["principal"]


@pytest.mark.usefixtures("clean_lab")
def test_a_vm_allow_list_lets_anyone_name_a_source_inside_it_and_no_one_outside(as_user, token_for, arm):
    retag(arm, "web-01", {"jit-ports": "22", "jit-sources": "198.51.100.192/26"})
    alice = as_user("alice")
    inside = alice.post("/api/v1/grants", json={"vm": "web-01", "source": "198.51.100.203"})
    assert inside.status_code == 201, inside.text
    outside = alice.post("/api/v1/grants", json={"vm": "web-01", "source": "198.51.100.7"})
    assert (outside.status_code, outside.json()["error"]["code"]) == (403, "source_not_allowed")
    assert "198.51.100.192/26" in outside.json()["error"]["message"]
    bob = as_user("bob", token=token_for("bob", roles=OVERRIDE_ROLES))
    also_outside = bob.post("/api/v1/grants", json={"vm": "web-01", "source": "198.51.100.7"})
    assert (also_outside.status_code, also_outside.json()["error"]["code"]) == (403, "source_not_allowed")
    elsewhere = alice.post("/api/v1/grants", json={"vm": "db-01", "port": 22, "source": "198.51.100.203"})
    assert elsewhere.status_code == 403  # the allow-list is web-01's alone


@pytest.mark.usefixtures("clean_lab")
@pytest.mark.parametrize("seen", ["10.1.2.3", "172.20.0.4", "192.168.0.4", "100.64.1.2", "169.254.169.254"])
def test_a_caller_seen_from_an_internal_address_gets_no_door(seen: str, as_user, arm_admin, api_store):
    response = as_user("alice", address=seen).post("/api/v1/grants", json={"vm": "web-01"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "source_not_routable"
    assert seen in response.json()["error"]["message"]
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []
    assert [e.reason.split(":")[0] for e in events(api_store, "denied", seen)][-1] == "source_not_routable"


@pytest.mark.usefixtures("clean_lab")
@pytest.mark.parametrize(
    ("seen", "what"),
    [("224.0.0.5", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified")],
)
def test_a_caller_seen_from_a_multicast_or_unspecified_address_gets_no_door_and_it_is_audited(
    seen: str, what: str, as_user, arm_admin, api_store
) -> None:
    response = as_user("alice", address=seen).post("/api/v1/grants", json={"vm": "web-01"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "source_not_routable"
    assert response.headers["x-ms-error-code"] == "source_not_routable"
    assert what in response.json()["error"]["message"]
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []
    alice = as_user("alice").get("/api/v1/whoami").json()["principal"]
    (event,) = [
        e
        for e in api_store.audit_events(limit=100_000)
        if e.kind == "denied" and e.principal == alice and f", {seen}, is" in (e.reason or "")
    ]
    assert event.reason.startswith("source_not_routable:") and event.grant_id is None


@pytest.mark.usefixtures("clean_lab")
@pytest.mark.parametrize("source", ["10.0.0.5", "100.64.0.1", "192.0.2.21", "168.63.129.16", "240.0.0.1"])
def test_the_role_names_no_internal_address(source: str, as_user, token_for, arm_admin) -> None:
    alice = as_user("alice", token=token_for("alice", roles=OVERRIDE_ROLES))
    response = alice.post("/api/v1/grants", json={"vm": "db-01", "port": 22, "source": source})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "source_not_routable"
    assert broker_rules(arm_admin.nsg("db-01-nsg")) == []


def test_whoami_says_whether_the_caller_may_name_sources(as_user, token_for) -> None:
    assert as_user("alice").get("/api/v1/whoami").json()["may_name_sources"] is False
    me = as_user("alice", token=token_for("alice", roles=OVERRIDE_ROLES)).get("/api/v1/whoami").json()
    assert me["may_name_sources"] is True
