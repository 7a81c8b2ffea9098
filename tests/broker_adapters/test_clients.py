"""AzureClients: the one place SDK clients are made, from settings values alone."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from jitbroker.clients import AzureClients, arm_scope


@pytest.mark.parametrize(
    ("endpoint", "scope"),
    [
        ("https://management.azure.com", "https://management.azure.com/.default"),
        ("https://management.usgovcloudapi.net/", "https://management.usgovcloudapi.net/.default"),
        ("https://127.0.0.1:8443", "https://management.azure.com/.default"),  # the lab's emulator stands in
    ],
)
def test_tokens_are_asked_for_the_arm_audience_of_the_endpoint(endpoint, scope):
    assert arm_scope(endpoint) == scope


def test_an_http_arm_endpoint_is_refused_so_tokens_never_travel_in_the_clear():
    with pytest.raises(ValueError, match="https"):
        AzureClients(arm_endpoint="http://127.0.0.1:8080")


@dataclass(frozen=True)
class FakeSettings:
    arm_endpoint: str = "https://127.0.0.1:9"
    table_endpoint: str | None = None
    table_connection_string: str | None = None
    azure_client_id: str | None = None
    arm_poll_seconds: float = 0.25


def test_clients_are_built_from_settings_and_cached_per_subscription():
    clients = AzureClients.from_settings(FakeSettings())
    assert clients.poll_interval == 0.25
    network = clients.network_client("sub-a")
    assert clients.network_client("SUB-A") is network
    assert clients.network_client("sub-b") is not network
    assert clients.compute_client("sub-a") is clients.compute_client("sub-a")
    assert network._config.polling_interval == 0.25
    clients.close()


def test_without_table_settings_there_is_no_table_client():
    with pytest.raises(ValueError, match="no table storage"):
        AzureClients.from_settings(FakeSettings()).table_service()


def test_the_table_client_uses_the_connection_string_when_set(adapter_table_connection_string):
    clients = AzureClients.from_settings(
        FakeSettings(table_connection_string=adapter_table_connection_string)
    )
    service = clients.table_service()
    assert service is clients.table_service()
    service.create_table_if_not_exists("clientsprobe")
    assert "clientsprobe" in {t.name for t in service.list_tables()}
    clients.close()


def test_the_arm_clients_reach_the_emulator_as_the_managed_identity(clients):
    vm = clients.compute_client("00000000-0000-4000-8000-0000000000a1").virtual_machines.get(
        "rg-jit-demo", "web-01"
    )
    assert vm.name == "web-01"
