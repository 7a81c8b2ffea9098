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
