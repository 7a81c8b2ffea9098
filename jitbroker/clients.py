"""The one place Azure SDK clients are made, from settings alone, so Azure and the lab differ only in values.

ARM clients point at `JIT_ARM_ENDPOINT` (Azure, or the lab's emulator over HTTPS) and authenticate with
`DefaultAzureCredential` (the managed identity in Azure and in the lab). Their own retries are off: every
retry goes through `jitbroker.retry`, so backoff, Retry-After and limits are decided in one place.
`azure.mgmt.*` is imported lazily because it is slow to import and a cold start pays for every import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.data.tables import TableServiceClient

PUBLIC_ARM_AUDIENCE = "https://management.azure.com/.default"
# Sovereign clouds are their own audiences; any other endpoint (the lab's emulator) stands in for public ARM.
_KNOWN_ARM_HOSTS = frozenset(
    {"management.azure.com", "management.usgovcloudapi.net", "management.chinacloudapi.cn"}
)


class ClientSettings(Protocol):
    """The part of `jitbroker.config.Settings` the clients are built from (read-only: Settings is frozen)."""

    @property
    def arm_endpoint(self) -> str: ...
    @property
    def table_endpoint(self) -> str | None: ...
    @property
    def table_connection_string(self) -> str | None: ...
    @property
    def azure_client_id(self) -> str | None: ...


def arm_scope(arm_endpoint: str) -> str:
    """The token scope for an ARM endpoint: its own audience for Azure clouds, public ARM's otherwise."""
    host = (urlsplit(arm_endpoint).hostname or "").lower()
    if host in _KNOWN_ARM_HOSTS:
        return f"https://{host}/.default"
    return PUBLIC_ARM_AUDIENCE


class AzureClients:
    """Creates and caches the Azure SDK clients: one compute and one network client per subscription."""

    def __init__(
        self,
        *,
        arm_endpoint: str,
        table_endpoint: str | None = None,
        table_connection_string: str | None = None,
        managed_identity_client_id: str | None = None,
        credential: TokenCredential | None = None,
        arm_scope_override: str | None = None,
        poll_interval: float = 1.0,
        connection_timeout: float = 10.0,
        read_timeout: float = 30.0,
    ) -> None:
        if not arm_endpoint.startswith("https://"):
            raise ValueError("the ARM endpoint must be https:// (azure-core never sends tokens in the clear)")
        self.arm_endpoint = arm_endpoint.rstrip("/")
        self.table_endpoint = table_endpoint
        self.table_connection_string = table_connection_string
        self.managed_identity_client_id = managed_identity_client_id
        self.arm_scope = arm_scope_override or arm_scope(self.arm_endpoint)
        self.poll_interval = poll_interval
        self.connection_timeout = connection_timeout
        self.read_timeout = read_timeout
        self._credential = credential
        self._lock = threading.Lock()
        self._compute: dict[str, Any] = {}
        self._network: dict[str, Any] = {}
        self._tables: TableServiceClient | None = None

    @classmethod
    def from_settings(cls, settings: ClientSettings, **overrides: Any) -> AzureClients:
        """Clients for the configured endpoints; `overrides` adjust timeouts or inject a credential."""
        options: dict[str, Any] = {
            "arm_endpoint": settings.arm_endpoint,
            "table_endpoint": settings.table_endpoint,
            "table_connection_string": settings.table_connection_string,
            "managed_identity_client_id": settings.azure_client_id,
        }
        poll = getattr(settings, "arm_poll_seconds", None)
        if poll is not None:
            options["poll_interval"] = float(poll)
        options.update(overrides)
        return cls(**options)

    @property
    def credential(self) -> TokenCredential:
        """The broker's identity: `DefaultAzureCredential`, pinned to the user-assigned identity if set."""
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential(
                    managed_identity_client_id=self.managed_identity_client_id,
                )
            return self._credential

    def compute_client(self, subscription: str) -> Any:
        """`ComputeManagementClient` for `subscription` against the configured ARM endpoint (cached)."""
        return self._cached(self._compute, subscription, self._make_compute)

    def network_client(self, subscription: str) -> Any:
        """`NetworkManagementClient` for `subscription` against the configured ARM endpoint (cached)."""
        return self._cached(self._network, subscription, self._make_network)

    def table_service(self) -> TableServiceClient:
        """The Table Storage client: connection string if set (lab), else endpoint + the managed identity."""
        with self._lock:
            if self._tables is not None:
                return self._tables
        from azure.data.tables import TableServiceClient

        if self.table_connection_string:
            client = TableServiceClient.from_connection_string(self.table_connection_string)
        elif self.table_endpoint:
            client = TableServiceClient(endpoint=self.table_endpoint, credential=self.credential)
        else:
            raise ValueError("no table storage configured: set a connection string or an endpoint")
        with self._lock:
            if self._tables is None:
                self._tables = client
            return self._tables

    def close(self) -> None:
        """Close every client made so far (their HTTP sessions); the object can make new ones afterwards."""
        with self._lock:
            clients = [*self._compute.values(), *self._network.values()]
            tables, self._tables = self._tables, None
            self._compute.clear()
            self._network.clear()
        for client in clients:
            client.close()
        if tables is not None:
            tables.close()

    # ------------------------------------------------------------------ internals

    def _cached(self, cache: dict[str, Any], subscription: str, make: Callable[[str], Any]) -> Any:
        key = subscription.lower()
        with self._lock:
            if key in cache:
                return cache[key]
        client = make(subscription)
        with self._lock:
            return cache.setdefault(key, client)

    def _arm_options(self) -> dict[str, Any]:
        return {
            "base_url": self.arm_endpoint,
            "credential_scopes": [self.arm_scope],
            "polling_interval": self.poll_interval,
            "retry_total": 0,  # jitbroker.retry decides
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
        }

    def _make_compute(self, subscription: str) -> Any:
        from azure.mgmt.compute import ComputeManagementClient

        return ComputeManagementClient(self.credential, subscription, **self._arm_options())

    def _make_network(self, subscription: str) -> Any:
        from azure.mgmt.network import NetworkManagementClient

        return NetworkManagementClient(self.credential, subscription, **self._arm_options())
