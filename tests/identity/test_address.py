"""The caller's address: the one source a grant opens a port to, so it is taken only from what is trusted."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from starlette.datastructures import Headers

from jitbroker.errors import InvalidRequest
from jitbroker.identity import caller_address, check_address_mode

XFF = "x-forwarded-for"


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        ("203.0.113.10", "203.0.113.10"),
        ("203.0.113.10:61598", "203.0.113.10"),
        ("  203.0.113.10:1  ", "203.0.113.10"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:5678", "2001:db8::1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::ffff:203.0.113.10", "203.0.113.10"),
        ("[::ffff:203.0.113.10]:443", "203.0.113.10"),
        ("::ffff:cb00:710a", "203.0.113.10"),
        # the platform appends the address it saw; everything to its left is whatever the client sent
        ("198.51.100.7, 203.0.113.10", "203.0.113.10"),
        ("10.0.0.5, 192.168.1.20, 203.0.113.10:49828", "203.0.113.10"),
        ("evil, 0.0.0.0/0, 203.0.113.10", "203.0.113.10"),
        ("[2001:db8::dead]:1, [2001:db8::1]:2", "2001:db8::1"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_forwarded_for_takes_the_right_most_element_without_its_port(
    forwarded_for: str, expected: str
) -> None:
    address = caller_address({"X-Forwarded-For": forwarded_for}, None, XFF)

    assert address == ip_address(expected)
    assert isinstance(address, IPv4Address if "." in expected else IPv6Address)


@pytest.mark.parametrize(
    "forwarded_for",
    [
        "",
        "   ",
        "203.0.113.10, ",  # an empty last element is not a reason to trust the one before it
        "203.0.113.10,",
        "unknown",
        "_hidden",
        "203.0.113.10/32",
        "0.0.0.0/0",
        "*",
        "Internet",
        "203.0.113",
        "203.0.113.256",
        "203.0.113.010",
        "203.0.113.10:",
        "203.0.113.10:port",
        "203.0.113.10:65536",
        "203.0.113.10:123456",
        "[203.0.113.10]:22",
        "[2001:db8::1",
        "[2001:db8::1]22",
        "[2001:db8::1]:",
        "2001:db8::1:22:33:44:55:66",
        "fe80::1%eth0",
        "[fe80::1%25eth0]:22",
        "0.0.0.0",
        "::",
        "[::]:22",
        "224.0.0.1",
        "ff02::1",
        "203.0.113.10 198.51.100.7",
        "for=203.0.113.10",
        "x" * 100,
    ],
)
def test_forwarded_for_garbage_is_refused_never_treated_as_any(forwarded_for: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        caller_address({"X-Forwarded-For": forwarded_for}, "198.51.100.99", XFF)
    assert caught.value.status == 400


def test_missing_forwarded_for_is_refused_even_with_a_socket_peer() -> None:
    with pytest.raises(InvalidRequest, match="X-Forwarded-For"):
        caller_address({"Host": "broker"}, "198.51.100.99", XFF)


def test_forwarded_for_header_name_is_case_insensitive() -> None:
    assert caller_address({"X-FORWARDED-FOR": "203.0.113.10"}, None, XFF) == IPv4Address("203.0.113.10")
    assert caller_address({"x-forwarded-for": "203.0.113.10"}, None, XFF) == IPv4Address("203.0.113.10")


def test_repeated_forwarded_for_lines_count_as_one_list_with_the_platforms_last() -> None:
    # What the ASGI app receives when a client sends its own X-Forwarded-For and a proxy adds a second line.
    headers = Headers(raw=[(b"x-forwarded-for", b"198.51.100.7"), (b"x-forwarded-for", b"203.0.113.10:5000")])

    assert headers.get("x-forwarded-for") == "198.51.100.7"  # what a naive lookup would trust
    assert caller_address(headers, None, XFF) == IPv4Address("203.0.113.10")


def test_client_supplied_forwarded_for_is_ignored_when_the_peer_is_trusted() -> None:
    address = caller_address({"X-Forwarded-For": "198.51.100.7"}, "203.0.113.10", "peer")

    assert address == IPv4Address("203.0.113.10")


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("203.0.113.10", "203.0.113.10"),
        ("::1", "::1"),
        ("2001:db8::10", "2001:db8::10"),
        ("::ffff:203.0.113.10", "203.0.113.10"),
    ],
)
def test_peer_mode_uses_the_socket_peer(peer: str, expected: str) -> None:
    assert caller_address({}, peer, "peer") == ip_address(expected)


@pytest.mark.parametrize("peer", [None, "", "testclient", "/run/uvicorn.sock", "0.0.0.0", "203.0.113.10/32"])
def test_peer_mode_without_a_usable_peer_is_refused(peer: str | None) -> None:
    with pytest.raises(InvalidRequest):
        caller_address({"X-Forwarded-For": "203.0.113.10"}, peer, "peer")


@pytest.mark.parametrize(("mode", "normalised"), [("peer", "peer"), (" X-Forwarded-For ", XFF), (XFF, XFF)])
def test_address_mode_is_checked_at_configuration_time(mode: str, normalised: str) -> None:
    assert check_address_mode(mode) == normalised


@pytest.mark.parametrize("mode", ["", "any", "x-real-ip", "client-ip", "none", "forwarded"])
def test_unknown_address_mode_is_a_configuration_error(mode: str) -> None:
    with pytest.raises(ValueError, match="peer"):
        check_address_mode(mode)
    with pytest.raises(ValueError):
        caller_address({"X-Forwarded-For": "203.0.113.10"}, "203.0.113.10", mode)
