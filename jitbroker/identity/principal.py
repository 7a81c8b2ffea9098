"""Who the caller is, as the broker knows them after their token verified."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """A verified caller: `oid` is the stable key (names are mutable and only for display and audit)."""

    oid: str
    name: str | None
    upn: str | None
    tenant_id: str
    roles: frozenset[str]

    def has_role(self, role: str) -> bool:
        """True if the token carried `role` among its app roles; role checks belong to policy and the API."""
        return role in self.roles

    @property
    def display_name(self) -> str:
        """The friendliest label for messages and audit: UPN, else name, else the object id."""
        return self.upn or self.name or self.oid
