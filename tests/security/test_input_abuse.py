"""Hostile input at every field of every route: refused with a clear 4xx, and nothing changed anywhere.

Real HTTP to the suite's broker (uvicorn, Azurite, the ARM emulator). After each batch its jit tables hold
the same entities (refusals only add `denied` audit events) and every NSG is byte-for-byte the same.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.security.conftest import OTHER_SUB, RG, SUB, VM_ID, World, assert_refused

# Strings that would widen a naively concatenated OData filter (`PartitionKey eq '{value}'`).
ODATA_INJECTION = [
    "' or PartitionKey ne '",
    "') or true or ('",
    "' or 1 eq 1 or '",
    "x' or RowKey gt '",
    "g-0' or status eq 'active",
    '" or "" eq "',
    "@pk",
    "*",
    "PartitionKey ne ''",
]
# Characters Table Storage forbids in keys, control characters, NUL and sizes no key can hold.
KEY_BREAKERS = [
    "web/01",
    "web\\01",
    "web#01",
    "web?01",
    "web%2F01",
    "web\t01",
    "web\n01",
    "web\r\n01",
    "web\x00",
    "\x00",
    "web\x7f",
    "web\u0085",
    "web\u2028",
    "..",
    "../..",
    "x" * 390,
]
HOSTILE = ODATA_INJECTION + KEY_BREAKERS


@pytest.fixture
def alice(as_caller: Any) -> httpx.Client:
    client: httpx.Client = as_caller("alice")
    return client


@pytest.fixture
def bob(as_caller: Any) -> httpx.Client:
    client: httpx.Client = as_caller("bob")
    return client


def post_grant(client: httpx.Client, body: Any) -> httpx.Response:
    return client.post("/api/v1/grants", json=body)


# -- every field of POST /api/v1/grants --------------------------------------------------------------------

BODY_FIELDS: dict[str, Any] = {
    "vm": lambda s: {"vm": s},
    "vm_in_scope": lambda s: {"vm": s, "subscription": SUB, "resource_group": RG},
    "resource_group": lambda s: {"vm": "web-01", "resource_group": s},
    "resource_group_in_scope": lambda s: {"vm": "web-01", "subscription": SUB, "resource_group": s},
    "subscription": lambda s: {"vm": "web-01", "subscription": s},
    "subscription_with_rg": lambda s: {"vm": "web-01", "subscription": s, "resource_group": RG},
    "protocol": lambda s: {"vm": "web-01", "protocol": s},
    "duration": lambda s: {"vm": "web-01", "duration": s},
    "source": lambda s: {"vm": "web-01", "source": s},
}


@pytest.mark.parametrize("field", sorted(BODY_FIELDS))
def test_injection_and_key_breaking_strings_in_a_grant_field_are_refused_and_change_nothing(
    field: str, alice: httpx.Client, world: World
) -> None:
    with world.unchanged():
        for value in HOSTILE:
            assert_refused(post_grant(alice, BODY_FIELDS[field](value)), what=(field, value))


def test_hostile_justifications_are_stored_verbatim_and_widen_nothing(
    alice: httpx.Client, bob: httpx.Client, world: World
) -> None:
    bobs = post_grant(bob, {"vm": "web-01"}).json()
    for text in [*ODATA_INJECTION, "line\nbreak\ttab", "nul\x00inside", "x" * 500]:
        response = post_grant(alice, {"vm": "web-01", "justification": text})
        assert response.status_code in (200, 201), response.text
        assert response.json()["justification"] == text.strip()
        mine = alice.get("/api/v1/grants").json()["grants"]
        assert {g["principal_name"] for g in mine} == {"alice@contoso.test"}
        assert bobs["id"] not in {g["id"] for g in mine}
        alice.delete(f"/api/v1/grants/{response.json()['id']}")


def test_a_justification_too_long_is_refused(alice: httpx.Client, world: World) -> None:
    with world.unchanged():
        assert_refused(post_grant(alice, {"vm": "web-01", "justification": "x" * 501}))


# -- source abuse -----------------------------------------------------------------------------------------

SOURCE_ABUSE = [
    "*",
    "Internet",
    "internet",
    "Any",
    "VirtualNetwork",
    "AzureLoadBalancer",
    "AzureCloud",
    "Storage.WestEurope",
    "AzureCloud.westeurope",
    "0.0.0.0/0",
    "0.0.0.0",
    "::/0",
    "::",
    "203.0.113.0/24",
    "203.0.113.10/31",
    "198.51.100.0/25",
    "2001:db8::/64",
    "2001:db8::10/127",
    "10.0.0.0/8",
    "127.0.0.1",
    "169.254.169.254",
    "224.0.0.1",
    "fe80::1",
    "203.0.113.10/33",
    "203.0.113.256",
    "203.0.113.10/32/32",
    "203.0.113.11/24",
    "203.0.113.010",
    "0x7f.0.0.1",
    "203.0.113.10,198.51.100.1",
    "203.0.113.10 198.51.100.1",
    "203.0.113.10-203.0.113.20",
    "\uff12\uff10\uff13.0.113.10",
    "::ffff:0.0.0.0/96",
    "::ffff:203.0.113.0/120",
    "::ffff:203.0.113.10",
    "::ffff:cb00:710a",
    "2001:db8::10%eth0",
    "2001:db8::10%25eth0",
    "fe80::1%eth0",
    "[2001:db8::10]",
    "",
    " ",
]


def test_wide_symbolic_and_malformed_sources_are_refused_and_change_nothing(
    alice: httpx.Client, world: World
) -> None:
    with world.unchanged():
        for source in SOURCE_ABUSE:
            assert_refused(post_grant(alice, {"vm": "web-01", "source": source}), what=source)


@pytest.mark.parametrize(
    "forwarded",
    [
        "*",
        "Internet",
        "0.0.0.0",
        "::",
        "0.0.0.0/0",
        "203.0.113.0/24",
        "::ffff:0.0.0.0",
        "2001:db8::10%eth0",
        "[fe80::1%25eth0]:22",
        "203.0.113.10:99999",
        "unknown",
        "203.0.113.10, *",
        "203.0.113.10,",
        "' or PartitionKey ne '",
        "224.0.0.1",
    ],
)
def test_a_forged_or_unusable_forwarded_address_opens_nothing(
    forwarded: str, as_caller: Any, world: World
) -> None:
    with world.unchanged():
        client = as_caller("alice", address=forwarded)
        assert_refused(post_grant(client, {"vm": "web-01"}), what=forwarded)


# -- resource-id tricks in vm -------------------------------------------------------------------------------

_PREFIX = f"/subscriptions/{SUB}/resourceGroups/{RG}"
VM_ID_TRICKS = [
    f"{_PREFIX}/../../subscriptions/{OTHER_SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/web-01",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/../../../../../resourceGroups/x/providers/Microsoft.Compute/virtualMachines/web-01",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/web-01/..",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/web-01/../legacy-01",
    f"/subscriptions/{OTHER_SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/web-01",
    f"/subscriptions/{SUB}/resourceGroups/rg-other/providers/Microsoft.Compute/virtualMachines/web-01",
    f"/subscriptions/{SUB}/resourceGroups/rg-jit-demo-2/providers/Microsoft.Compute/virtualMachines/web-01",
    f"{_PREFIX}/providers/Microsoft.Storage/storageAccounts/jitdemo",
    f"{_PREFIX}/providers/Microsoft.Network/networkSecurityGroups/web-01-nsg",
    f"{_PREFIX}/providers/Microsoft.Network/networkInterfaces/web-01-nic",
    f"{_PREFIX}/providers/Microsoft.Storage/storageAccounts/jitdemo/providers/Microsoft.Compute/virtualMachines/web-01",
    f"{_PREFIX}/providers/Microsoft.Network/virtualMachines/web-01",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/web-01/extensions/ssh",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/",
    f"{_PREFIX}//providers/Microsoft.Compute/virtualMachines/web-01",
    f"/subscriptions/{SUB}/resourceGroups/{RG}%2F..%2F..%2Fsubscriptions%2F{OTHER_SUB}/providers/Microsoft.Compute/virtualMachines/web-01",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/web%2D01",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/web-01%2F..%2Flegacy-01",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/web-01?api-version=2024-07-01",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/web-01#fragment",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/legacy-01",
    f"{_PREFIX}/providers/Microsoft.Compute/virtualMachines/stopped-01",
    "/subscriptions/",
    "/SUBSCRIPTIONS",
    "subscriptions/" + SUB,
]


def test_resource_id_tricks_in_vm_are_refused_and_change_nothing(alice: httpx.Client, world: World) -> None:
    with world.unchanged():
        for vm in VM_ID_TRICKS:
            assert_refused(post_grant(alice, {"vm": vm}), what=vm)


@pytest.mark.parametrize(
    "spelling",
    [VM_ID, VM_ID + "/", VM_ID.upper(), VM_ID.lower(), " " + VM_ID + " "],
    ids=["canonical", "trailing-slash", "upper", "lower", "padded"],
)
def test_every_spelling_of_a_vm_id_means_that_one_vm_and_one_grant(
    spelling: str, alice: httpx.Client, world: World
) -> None:
    first = post_grant(alice, {"vm": "web-01"})
    assert first.status_code == 201, first.text
    again = post_grant(alice, {"vm": spelling})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["vm_id"].lower() == VM_ID.lower()


# -- grant ids in paths and query filters -------------------------------------------------------------------

# Already percent-encoded where the encoding is the trick; everything else is encoded once here.
PATH_SEGMENTS = [
    *(quote(s, safe="") for s in HOSTILE if s not in ("..", "*")),
    "g-" + "0" * 100,
    "g-%00",
    "g-%2F..",
    "%2e%2e",
    "g-x%3BDROP",
    "g-0%20or%201%20eq%201",
]


def test_hostile_grant_ids_in_paths_are_refused_on_every_grant_route(
    alice: httpx.Client, world: World
) -> None:
    with world.unchanged():
        for segment in PATH_SEGMENTS:
            path = f"/api/v1/grants/{segment}"
            for response in (
                alice.get(path),
                alice.delete(path),
                alice.post(path + "/extend", json={"duration": "1h"}),
            ):
                assert_refused(response, what=segment)


def test_an_unknown_grant_id_is_404_on_every_grant_route(alice: httpx.Client, world: World) -> None:
    with world.unchanged():
        for response in (
            alice.get("/api/v1/grants/g-00000000000000000000"),
            alice.delete("/api/v1/grants/g-00000000000000000000"),
            alice.post("/api/v1/grants/g-00000000000000000000/extend", json={"duration": "1h"}),
        ):
            assert_refused(response)
            assert response.status_code == 404


def test_hostile_status_filters_are_refused(alice: httpx.Client, world: World) -> None:
    with world.unchanged():
        for status in [*HOSTILE, "ACTIVE ", "active,revoked", "1"]:
            assert_refused(alice.get("/api/v1/grants", params={"status": status}), what=status)


def test_hostile_vm_filters_never_widen_a_listing(
    alice: httpx.Client, bob: httpx.Client, world: World
) -> None:
    bobs = post_grant(bob, {"vm": "web-01"}).json()
    mine = post_grant(alice, {"vm": "db-01"}).json()
    for vm in [*HOSTILE, "x" * 401]:
        response = alice.get("/api/v1/grants", params={"vm": vm})
        if response.status_code != 200:
            assert_refused(response, what=vm)
            continue
        assert response.json()["grants"] == [], vm
    for vm in ["*", "' or PartitionKey ne '"]:
        assert_refused(alice.get("/api/v1/grants", params={"vm": vm, "all": "true"}), what=vm)
    listed = alice.get("/api/v1/grants", params={"vm": "db-01"}).json()["grants"]
    assert [g["id"] for g in listed] == [mine["id"]]
    assert bobs["id"] not in {g["id"] for g in listed}


def test_a_hostile_extend_duration_is_refused_and_the_grant_keeps_its_expiry(
    alice: httpx.Client, world: World
) -> None:
    grant = post_grant(alice, {"vm": "web-01", "duration": "PT30M"}).json()
    path = f"/api/v1/grants/{grant['id']}/extend"
    with world.unchanged():
        durations: list[Any] = [*HOSTILE, "PT0S", "-1h", "P1000D", 10**30, -60, 0, True, 1.5, None, [], {}]
        for duration in durations:
            assert_refused(alice.post(path, json={"duration": duration}), what=duration)
    assert alice.get(f"/api/v1/grants/{grant['id']}").json()["expires_at"] == grant["expires_at"]


# -- bodies ------------------------------------------------------------------------------------------------

RAW_BODIES: list[tuple[str, bytes, str]] = [
    ("not json", b"vm=web-01&port=22", "application/json"),
    ("truncated", b'{"vm": "web-01"', "application/json"),
    ("empty", b"", "application/json"),
    ("null", b"null", "application/json"),
    ("a string", b'"web-01"', "application/json"),
    ("a number", b"22", "application/json"),
    ("an array", b'[{"vm": "web-01"}]', "application/json"),
    ("nested arrays", b"[" * 5000 + b"]" * 5000, "application/json"),
    ("nested objects", b'{"vm": ' * 1500 + b'"x"' + b"}" * 1500, "application/json"),
    ("deep vm", b'{"vm": ' + b"[" * 3000 + b"]" * 3000 + b"}", "application/json"),
    ("invalid utf-8", b'{"vm": "web-\xff\xfe01"}', "application/json"),
    ("NaN port", b'{"vm": "web-01", "port": NaN}', "application/json"),
    ("huge int port", b'{"vm": "web-01", "port": ' + b"9" * 4000 + b"}", "application/json"),
    ("form encoded", b"vm=web-01", "application/x-www-form-urlencoded"),
    ("xml", b"<grant><vm>web-01</vm></grant>", "application/xml"),
    ("oversize", b'{"vm": "web-01", "justification": "' + b"x" * 20_000 + b'"}', "application/json"),
]


def test_malformed_and_oversize_bodies_are_refused_and_change_nothing(
    alice: httpx.Client, world: World
) -> None:
    with world.unchanged():
        for name, content, content_type in RAW_BODIES:
            for path in ("/api/v1/grants", "/api/v1/grants/g-00000000000000000000/extend"):
                response = alice.post(path, content=content, headers={"Content-Type": content_type})
                assert_refused(response, what=(name, path))


WRONG_TYPES: list[dict[str, Any]] = [
    {"vm": 123},
    {"vm": None},
    {"vm": True},
    {"vm": ["web-01"]},
    {"vm": {"name": "web-01"}},
    {"vm": "web-01", "port": 22.5},
    {"vm": "web-01", "port": [22]},
    {"vm": "web-01", "port": {"$gt": 0}},
    {"vm": "web-01", "port": -22},
    {"vm": "web-01", "protocol": 22},
    {"vm": "web-01", "source": ["203.0.113.10"]},
    {"vm": "web-01", "source": 3405803786},
    {"vm": "web-01", "duration": [1800]},
    {"vm": "web-01", "duration": {"minutes": 30}},
    {"vm": "web-01", "justification": 1},
    {"vm": "web-01", "subscription": [SUB]},
    {"vm": "web-01", "resource_group": {"$ne": ""}},
    {"vm": "x" * 401},
    {"vm": "web-01", "resource_group": "r" * 91},
    {"vm": "web-01", "subscription": "s" * 65},
    {"vm": "web-01", "protocol": "s" * 17},
    {"vm": "web-01", "source": "1" * 65},
    {"vm": "web-01", "status": "active"},
    {"vm": "web-01", "principal": "b0b00000-0000-4000-8000-000000000002"},
    {"vm": "web-01", "expires_at": "2999-01-01T00:00:00Z"},
    {"vm": "web-01", "__proto__": {"admin": True}},
]


def test_wrong_types_overlong_strings_and_smuggled_fields_are_refused(
    alice: httpx.Client, world: World
) -> None:
    with world.unchanged():
        for body in WRONG_TYPES:
            assert_refused(post_grant(alice, body), what=body)


# -- someone else's grant ---------------------------------------------------------------------------------


def test_another_users_grant_id_gives_nothing_on_get_revoke_or_extend(
    alice: httpx.Client, bob: httpx.Client, world: World
) -> None:
    grant = post_grant(alice, {"vm": "web-01", "duration": "PT30M"}).json()
    path = f"/api/v1/grants/{grant['id']}"
    with world.unchanged():
        for response in (
            bob.get(path),
            bob.delete(path),
            bob.post(path + "/extend", json={"duration": "PT4H"}),
            bob.get("/api/v1/grants", params={"all": "true"}),
        ):
            assert_refused(response)
            assert response.status_code == 403
        listed = bob.get("/api/v1/grants").json()["grants"]
        assert grant["id"] not in {g["id"] for g in listed}
    assert alice.get(path).json()["status"] == "active"
