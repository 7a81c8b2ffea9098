"""The security suite's tools: what "refused and nothing changed" means, checked against the real parts.

The suite drives its own broker process (`sec_broker`): the api broker's settings (caller address from
`X-Forwarded-For`, as in Azure; no background sweeper) on tables of its own, with the topology cache on,
so the hundreds of hostile requests here cost milliseconds each instead of a full ARM walk.

A refusal is a 4xx in the API's one error shape, and afterwards every jit table of the broker under test
holds exactly the entities it held before (the audit trail may only have gained `denied` events: that is
how a refusal is recorded) and every NSG in the ARM emulator is byte-for-byte what it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from azure.data.tables import TableServiceClient

from lab.broker import BrokerProcess
from lab.scenario import Scenario
from tests.fixtures.broker import close_open_grants

if TYPE_CHECKING:
    from jitbroker.store import GrantStore
    from lab.arm.admin import ArmAdmin

SEC_TABLE_PREFIX = "jitsec"

SUB = "00000000-0000-4000-8000-0000000000a1"
OTHER_SUB = "00000000-0000-4000-8000-0000000000b2"
RG = "rg-jit-demo"
VM_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/web-01"

Entities = dict[str, list[dict[str, Any]]]


def assert_refused(response: httpx.Response, *, what: object = "") -> None:
    """A clear client error: 4xx, `{"error": {"code", "message"}}`, a message for a person, no trace."""
    context = f"{what!r} -> {response.status_code} {response.text[:300]}"
    assert 400 <= response.status_code < 500, context
    body = response.json()
    assert set(body) == {"error"}, context
    assert set(body["error"]) == {"code", "message"}, context
    assert body["error"]["code"] and body["error"]["message"].strip(), context
    assert "Traceback" not in response.text, context


def snapshot_tables(service: TableServiceClient, prefix: str) -> Entities:
    """Every entity of every table named `prefix…`, with its etag, in key order."""
    tables: Entities = {}
    for table in service.list_tables():
        if not table.name.startswith(prefix):
            continue
        client = service.get_table_client(table.name)
        rows = [{**dict(e), "_etag": e.metadata.get("etag")} for e in client.list_entities()]
        tables[table.name] = sorted(rows, key=lambda r: (r["PartitionKey"], r["RowKey"]))
    return tables


def table_changes(before: Entities, after: Entities) -> list[str]:
    """What changed between two snapshots, ignoring only new `denied` audit events (refusals are audited)."""
    problems: list[str] = []
    for name in sorted(set(before) | set(after)):
        old = {(r["PartitionKey"], r["RowKey"]): r for r in before.get(name, [])}
        new = {(r["PartitionKey"], r["RowKey"]): r for r in after.get(name, [])}
        for key in old.keys() - new.keys():
            problems.append(f"{name}: {key} disappeared")
        for key in old.keys() & new.keys():
            if old[key] != new[key]:
                problems.append(f"{name}: {key} changed: {old[key]} -> {new[key]}")
        for key in new.keys() - old.keys():
            row = new[key]
            audit = name.endswith("audit")  # the trail records every refusal, of a request or of a grant
            if audit and row.get("kind") == "denied":
                continue
            problems.append(f"{name}: {key} appeared: {row}")
    return problems


@dataclass
class World:
    """The api broker's tables and the emulator's NSGs, to prove a refusal left both untouched."""

    tables: TableServiceClient
    arm: ArmAdmin
    prefix: str = SEC_TABLE_PREFIX

    def snapshot(self) -> tuple[Entities, list[dict[str, Any]]]:
        """Every jit table's entities and every NSG's full ARM JSON."""
        return snapshot_tables(self.tables, self.prefix), self.arm.nsgs()

    @contextmanager
    def unchanged(self) -> Iterator[None]:
        """The block may only be refused: no entity and no NSG differs afterwards."""
        tables, nsgs = self.snapshot()
        yield
        after_tables, after_nsgs = self.snapshot()
        problems = table_changes(tables, after_tables)
        assert not problems, "\n".join(problems[:20])
        assert after_nsgs == nsgs, "an NSG changed"


@pytest.fixture(scope="session")
def sec_broker_env(api_broker_env: dict[str, str]) -> dict[str, str]:
    """The api broker's settings on the suite's own tables, topology cached for the length of a run."""
    return {**api_broker_env, "JIT_TABLE_PREFIX": SEC_TABLE_PREFIX, "JIT_TOPOLOGY_CACHE_SECONDS": "600"}


@pytest.fixture(scope="session")
def sec_broker(
    sec_broker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """The broker the security suite attacks: real uvicorn, no sweeper loop (nothing moves behind a test)."""
    log_dir = tmp_path_factory.mktemp("sec-broker")
    with BrokerProcess(sec_broker_env, sweep_interval=None, log_dir=log_dir) as running:
        yield running


@pytest.fixture(scope="session")
def sec_tables(sec_broker_env: dict[str, str]) -> Iterator[TableServiceClient]:
    """A Table Storage client on the suite broker's Azurite account (the test's own eyes on the store)."""
    with TableServiceClient.from_connection_string(sec_broker_env["JIT_TABLE_CONNECTION_STRING"]) as service:
        yield service


@pytest.fixture(scope="session")
def sec_store(sec_tables: TableServiceClient, sec_broker: BrokerProcess) -> GrantStore:
    """The suite broker's store, read from the test process."""
    from jitbroker.store import GrantStore

    store = GrantStore(sec_tables, prefix=SEC_TABLE_PREFIX, clock=lambda: datetime.now(UTC))
    store.ensure_tables()
    return store


@pytest.fixture
def world(arm_admin: ArmAdmin, sec_store: GrantStore, sec_tables: TableServiceClient) -> World:
    """A fresh lab (the scenario's NSGs, no open grants) and the means to prove that nothing changed."""
    close_open_grants(sec_store)
    return World(tables=sec_tables, arm=arm_admin)


Caller = Callable[..., httpx.Client]


@pytest.fixture
def as_caller(
    sec_broker: BrokerProcess, token_for: Callable[..., str], scenario: Scenario
) -> Iterator[Caller]:
    """`as_caller("alice", address=..., token=...)`: a client of the suite broker for a scenario user."""
    clients: list[httpx.Client] = []

    def make(name: str, *, address: str | None = None, token: str | None = None) -> httpx.Client:
        address = scenario.user(name).address if address is None else address
        headers = {
            "X-Forwarded-For": address or "203.0.113.99",
            "Authorization": f"Bearer {token or token_for(name)}",
        }
        client = httpx.Client(base_url=sec_broker.url, headers=headers, timeout=60)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
