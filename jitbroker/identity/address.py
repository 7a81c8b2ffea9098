"""The address a caller connects from: the source the broker opens a port to.

Which source is trusted is configuration (`JIT_CLIENT_ADDRESS_FROM`):
- `peer`: the socket peer, as uvicorn sees it (the lab, or wherever the broker terminates TCP itself);
- `x-forwarded-for`: the right-most element of `X-Forwarded-For`, which the Azure front end appends (the
  Functions host hands the ASGI app no client address). Elements to its left are whatever the client sent.

An address that cannot be determined is refused with `InvalidRequest` (400: the request cannot be served as
sent; a 401 would wrongly invite the client to fetch a new token), never treated as "any".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address

from jitbroker.errors import InvalidRequest, SourceNotRoutable

PEER = "peer"
X_FORWARDED_FOR = "x-forwarded-for"
ADDRESS_MODES = frozenset({PEER, X_FORWARDED_FOR})

_PORT = re.compile(r"[0-9]{1,5}")
_MAX_ELEMENT_CHARS = 64


def check_address_mode(mode: str) -> str:
    """The normalised mode, or ValueError naming the valid ones; call it when reading configuration."""
    normalised = mode.strip().lower()
    if normalised not in ADDRESS_MODES:
        valid = ", ".join(sorted(ADDRESS_MODES))
        raise ValueError(f"unknown client address source {mode!r}; use one of: {valid}")
    return normalised


def caller_address(headers: Mapping[str, str], peer: str | None, mode: str) -> IPv4Address | IPv6Address:
    """The caller's address under the configured trust `mode`; `InvalidRequest` if it cannot be determined."""
    if check_address_mode(mode) == PEER:
        if not peer:
            raise InvalidRequest(
                "the broker cannot see the address you connect from (no connection peer), so it opens nothing"
            )
        return parse_address(peer, origin="the connection's peer address")
    forwarded = _header_value(headers, X_FORWARDED_FOR)
    if forwarded is None or not forwarded.strip():
        raise InvalidRequest(
            "the broker cannot determine the address you connect from (no X-Forwarded-For from the platform)"
        )
    return parse_address(forwarded.rsplit(",", 1)[-1], origin="the right-most X-Forwarded-For element")


def parse_address(text: str, *, origin: str = "the address") -> IPv4Address | IPv6Address:
    """One address as proxies write it: `a.b.c.d`, `a.b.c.d:port`, `v6`, `[v6]`, `[v6]:port`, port stripped.

    IPv4-mapped IPv6 becomes IPv4; unspecified, multicast and zone-scoped addresses are refused.
    """
    element = text.strip()
    if not element or len(element) > _MAX_ELEMENT_CHARS or "%" in element:
        raise InvalidRequest(f"{origin} is not an IP address")
    if element.startswith("["):
        host, bracket, rest = element[1:].partition("]")
        if not bracket or (rest and not _is_port_suffix(rest)):
            raise InvalidRequest(f"{origin} is not an IP address")
        address = _ip(host, origin)
        if not isinstance(address, IPv6Address):
            raise InvalidRequest(f"{origin} is not an IP address")
    elif element.count(":") == 1:
        host, _, port = element.partition(":")
        address = _ip(host, origin)
        if not isinstance(address, IPv4Address) or not _is_port_suffix(":" + port):
            raise InvalidRequest(f"{origin} is not an IP address")
    else:
        address = _ip(element, origin)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast:
        what = "the unspecified address" if address.is_unspecified else "a multicast address"
        raise SourceNotRoutable(f"{origin}, {address}, is {what}: no port can be opened to it")
    return address


def _ip(text: str, origin: str) -> IPv4Address | IPv6Address:
    try:
        return ip_address(text)
    except ValueError:
        raise InvalidRequest(f"{origin} is not an IP address") from None


def _is_port_suffix(text: str) -> bool:
    return text.startswith(":") and bool(_PORT.fullmatch(text[1:])) and int(text[1:]) <= 65535


def _header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Every value of header `name`, joined in order, found case-insensitively.

    Repeated header lines count as one comma-separated list (RFC 9110), so the platform's element stays last
    even when the client sent its own X-Forwarded-For line first.
    """
    getlist = getattr(headers, "getlist", None)
    if callable(getlist):
        values = [str(v) for v in getlist(name)]
        return ", ".join(values) if values else None
    matches = [value for key, value in headers.items() if key.lower() == name]
    return ", ".join(matches) if matches else None
