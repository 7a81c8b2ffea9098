"""The lab's world, read from a scenario file: tenant, users, and the Azure resources the ARM emulator serves."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_SCENARIO = Path(__file__).parent / "scenarios" / "demo.json"


@dataclass(frozen=True)
class TenantSpec:
    """The Entra ID tenant and the broker's app registration the lab's tokens are for."""

    tenant_id: str
    api_client_id: str
    app_id_uri: str


@dataclass(frozen=True)
class UserSpec:
    """A person in the lab: who they are to Entra ID, their app roles, and their address in the network lab."""

    name: str
    oid: str
    upn: str
    display_name: str
    roles: tuple[str, ...]
    address: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A whole lab world; `azure` holds the raw resource description the ARM emulator builds its state from."""

    tenant: TenantSpec
    users: tuple[UserSpec, ...]
    azure: dict[str, Any] = field(default_factory=dict)

    def user(self, name: str) -> UserSpec:
        """The user called `name` (KeyError names the known ones when there is none)."""
        for user in self.users:
            if user.name == name:
                return user
        known = ", ".join(u.name for u in self.users)
        raise KeyError(f"no user {name!r} in the scenario (known: {known})")


def load_scenario(path: Path | str | None = None) -> Scenario:
    """Read a scenario file; the shipped demo scenario when no path is given."""
    raw = json.loads(Path(path or DEMO_SCENARIO).read_text(encoding="utf-8"))
    tenant = TenantSpec(**raw["tenant"])
    users = tuple(
        UserSpec(
            name=u["name"],
            oid=u["oid"],
            upn=u["upn"],
            display_name=u["display_name"],
            roles=tuple(u.get("roles", ())),
            address=u.get("address"),
        )
        for u in raw["users"]
    )
    return Scenario(tenant=tenant, users=users, azure=raw.get("azure", {}))
