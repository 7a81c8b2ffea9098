"""Azurite's Table service behaves as the broker's store needs it to, through the real `azure-data-tables`."""

from __future__ import annotations

import socket
import uuid

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

import lab.azurite
from lab.azurite import Azurite, AzuriteError


@pytest.fixture
def table(table_connection_string):
    service = TableServiceClient.from_connection_string(table_connection_string)
    name = f"t{uuid.uuid4().hex[:12]}"
    client = service.create_table(name)
    yield client
    service.delete_table(name)


def test_table_create_is_visible_and_refuses_a_duplicate(table_connection_string):
    service = TableServiceClient.from_connection_string(table_connection_string)
    name = f"t{uuid.uuid4().hex[:12]}"

    service.create_table(name)

    assert name in {t.name for t in service.list_tables()}
    with pytest.raises(ResourceExistsError):
        service.create_table(name)
    service.delete_table(name)


def test_upsert_inserts_then_merges(table: TableClient):
    table.upsert_entity({"PartitionKey": "alice", "RowKey": "g-1", "status": "pending", "port": 22})
    table.upsert_entity({"PartitionKey": "alice", "RowKey": "g-1", "status": "active"}, mode=UpdateMode.MERGE)

    entity = table.get_entity("alice", "g-1")
    assert entity["status"] == "active"
    assert entity["port"] == 22


def test_parameterized_query_treats_values_as_data(table: TableClient):
    table.upsert_entity({"PartitionKey": "alice", "RowKey": "g-1", "status": "active"})
    table.upsert_entity({"PartitionKey": "alice", "RowKey": "g-2", "status": "revoked"})
    table.upsert_entity({"PartitionKey": "bob", "RowKey": "g-3", "status": "active"})

    found = table.query_entities(
        "PartitionKey eq @who and status eq @status", parameters={"who": "alice", "status": "active"}
    )
    assert [e["RowKey"] for e in found] == ["g-1"]

    hostile = table.query_entities("PartitionKey eq @who", parameters={"who": "alice' or PartitionKey ne '"})
    assert list(hostile) == []


def test_range_query_on_row_keys_returns_only_what_is_due(table: TableClient):
    for expiry in ("2030-01-01T10:00Z", "2030-01-01T11:00Z", "2030-01-01T12:00Z"):
        table.upsert_entity({"PartitionKey": "2030-01-01", "RowKey": f"{expiry}|g"})

    due = table.query_entities(
        "PartitionKey eq @bucket and RowKey lt @before",
        parameters={"bucket": "2030-01-01", "before": "2030-01-01T11:30Z"},
    )
    assert [e["RowKey"] for e in due] == ["2030-01-01T10:00Z|g", "2030-01-01T11:00Z|g"]


def test_etag_conditional_update_succeeds_on_the_current_etag(table: TableClient):
    table.create_entity({"PartitionKey": "alice", "RowKey": "g-1", "status": "pending"})
    current = table.get_entity("alice", "g-1")
    current["status"] = "active"

    table.update_entity(current, etag=current.metadata["etag"], match_condition=MatchConditions.IfNotModified)

    assert table.get_entity("alice", "g-1")["status"] == "active"


def test_etag_conditional_update_fails_on_a_stale_etag(table: TableClient):
    table.create_entity({"PartitionKey": "alice", "RowKey": "g-1", "status": "pending"})
    stale = table.get_entity("alice", "g-1")
    winner = table.get_entity("alice", "g-1")
    winner["status"] = "revoked"
    table.update_entity(winner, etag=winner.metadata["etag"], match_condition=MatchConditions.IfNotModified)

    stale["status"] = "active"
    with pytest.raises(ResourceModifiedError) as refused:
        table.update_entity(stale, etag=stale.metadata["etag"], match_condition=MatchConditions.IfNotModified)

    assert refused.value.status_code == 412
    assert table.get_entity("alice", "g-1")["status"] == "revoked"


def test_stop_ends_azurite_and_frees_its_port(tmp_path):
    azurite = Azurite(tmp_path / "data").start()
    port = azurite.port
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    service.create_table("alive")

    azurite.stop()

    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_data_lives_in_the_given_folder(tmp_path):
    with Azurite(tmp_path / "data") as azurite:
        TableServiceClient.from_connection_string(azurite.connection_string).create_table("kept")

    assert any((tmp_path / "data").iterdir())


def test_missing_azurite_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lab.azurite, "AZURITE_TABLE", tmp_path / "no-such-azurite")

    with pytest.raises(AzuriteError, match="make setup"):
        Azurite(tmp_path / "data").start()
