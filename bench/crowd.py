"""Synthetic users: many distinct principals, each with its own caller address, for load and benchmarks.

Tokens come from the lab issuer with the `oid` and names of a scenario user overridden, so every member is a
distinct principal with the requester role. Addresses are 203.0.113.100 onwards (documentation range), sent as
`X-Forwarded-For` to a broker that trusts it (`JIT_CLIENT_ADDRESS_FROM=x-forwarded-for`), as in Azure.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.issuer import TokenIssuer

MAX_MEMBERS = 150  # 203.0.113.100 .. 203.0.113.249
BASE_USER = "alice"  # a scenario user holding JIT.Requester


@dataclass(frozen=True)
class Member:
    """One synthetic user: principal id, names, and the address the broker will see."""

    index: int
    oid: str
    upn: str
    address: str

    @property
    def source(self) -> str:
        """The /32 the broker writes for this member."""
        return f"{self.address}/32"


def member(index: int) -> Member:
    """The `index`-th synthetic user (0-based)."""
    if not 0 <= index < MAX_MEMBERS:
        raise ValueError(f"the crowd has {MAX_MEMBERS} members, not {index + 1}")
    return Member(
        index=index,
        oid=f"c20bd000-0000-4000-8000-{index:012d}",
        upn=f"crowd{index:03d}@contoso.test",
        address=f"203.0.113.{100 + index}",
    )


def crowd(size: int) -> list[Member]:
    """The first `size` synthetic users."""
    return [member(i) for i in range(size)]


def token(issuer: TokenIssuer, who: Member, *, roles: tuple[str, ...] = ("JIT.Requester",)) -> str:
    """A valid API token for a synthetic user."""
    return issuer.token(
        BASE_USER,
        oid=who.oid,
        name=f"Crowd Member {who.index:03d}",
        preferred_username=who.upn,
        roles=list(roles),
    )


def headers(issuer: TokenIssuer, who: Member) -> dict[str, str]:
    """Request headers for a synthetic user: bearer token and the forwarded caller address."""
    return {"Authorization": f"Bearer {token(issuer, who)}", "X-Forwarded-For": who.address}
