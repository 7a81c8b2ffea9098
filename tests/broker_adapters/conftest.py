"""Fixtures for the adapter tests: real Azurite (the lab's fixture when present, else our own)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

_tables = itertools.count()


@pytest.fixture(scope="session")
def adapter_table_connection_string(request: pytest.FixtureRequest) -> Iterator[str]:
    """A connection string for a running Azurite: the lab fixture's when the lab provides one."""
    try:
        yield request.getfixturevalue("table_connection_string")
        return
    except pytest.FixtureLookupError:
        pass
    from lab.azurite import Azurite

    with Azurite() as azurite:
        yield azurite.connection_string


@pytest.fixture
def table_prefix() -> str:
    """A fresh table prefix per test, so tests share one Azurite but never each other's rows."""
    return f"t{next(_tables)}x"


SUBSCRIPTION = "00000000-0000-4000-8000-0000000000a1"
RG = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-jit-demo"


def vm_id(name: str) -> str:
    """The demo scenario's id for VM `name`."""
    return f"{RG}/providers/Microsoft.Compute/virtualMachines/{name}"


def nsg_id(name: str) -> str:
    """The demo scenario's id for NSG `name`."""
    return f"{RG}/providers/Microsoft.Network/networkSecurityGroups/{name}"


@pytest.fixture
def clients(arm, arm_admin, identity_env):
    """Real SDK clients against the emulator, authenticating as the broker's managed identity (lab issuer)."""
    from jitbroker.clients import AzureClients

    made = AzureClients(
        arm_endpoint=arm.url,
        managed_identity_client_id=identity_env["AZURE_CLIENT_ID"],
        poll_interval=0.05,
        read_timeout=2.0,
    )
    yield made
    made.close()
