"""Wiring: everything the broker needs, built once per process from `Settings.from_env()`, on first use.

`app` is the ASGI app uvicorn and `function_app.py` serve; `run_sweep()` is the timer's body. Building is lazy
so that importing this module (the Functions host indexing `function_app.py`) reads no settings and opens no
connection, and a timer-only instance never builds the HTTP side's verifier.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from jitbroker import rules
from jitbroker.api import Services, create_app
from jitbroker.config import Settings
from jitbroker.grants import GrantService
from jitbroker.identity import TokenVerifier
from jitbroker.model import VmTopology
from jitbroker.sweeper import Sweeper, SweepReport

if TYPE_CHECKING:
    from jitbroker.network import NsgWriter
    from jitbroker.store import GrantStore
    from jitbroker.topology import TopologyReader

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """The broker's clock in production."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Broker:
    """The whole broker of one process: HTTP services and the sweeper, sharing adapters and caches."""

    services: Services
    sweeper: Sweeper
    store: GrantStore
    topology: TopologyReader
    writer: NsgWriter


def build(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> Broker:
    """Build every part from settings; `clock` is injectable so tests can sweep at a chosen time."""
    from jitbroker.clients import AzureClients
    from jitbroker.network import NsgWriter
    from jitbroker.store import GrantStore
    from jitbroker.topology import TopologyReader

    now = clock
    clients = AzureClients(
        arm_endpoint=settings.arm_endpoint,
        table_endpoint=settings.table_endpoint,
        table_connection_string=settings.table_connection_string,
        managed_identity_client_id=settings.azure_client_id,
        poll_interval=settings.arm_poll_seconds,
    )
    topology = TopologyReader(clients, cache_seconds=settings.topology_cache_seconds, clock=now)
    band = (settings.priority_min, settings.priority_max)
    store = GrantStore(clients.table_service(), prefix=settings.table_prefix, clock=now)
    store.ensure_tables()

    def key_lease(name: str) -> AbstractContextManager[None]:
        # 30 s covers a read-plan-write up to ARM accepting the write (after that the write is visible, so a
        # lease that lapses while its holder waits for the operation lets the next writer plan from it);
        # a broker that dies holding it delays that one rule key by at most this long.
        return store.lease(name, ttl_s=30.0, wait_s=90.0)

    writer = NsgWriter(
        clients,
        clock=now,
        priority_band=band,
        lro_timeout=settings.arm_timeout_seconds,
        poll_interval=settings.arm_poll_seconds,
        topology=topology,
        key_lease=key_lease,
    )

    def warnings(
        vm: VmTopology, port: int, private_ip: str, source: str, priorities: Mapping[str, int]
    ) -> list[str]:
        # Called right after the writer read each NSG fresh (and cached that view): a deny added a moment
        # ago is seen without a second read per NSG.
        found: list[str] = []
        for nsg_id in vm.nsg_ids:
            view = topology.nsg(nsg_id)
            found.extend(
                rules.exposure_warnings(
                    view.get("rules", ()),
                    port=port,
                    private_ip=private_ip,
                    band=band,
                    source=source,
                    priority=priorities.get(nsg_id.lower()),
                )
            )
        return list(dict.fromkeys(found))

    grants = GrantService(
        settings=settings, store=store, topology=topology, writer=writer, clock=now, warnings=warnings
    )
    verifier = TokenVerifier(
        authority_host=settings.authority_host,
        tenant_id=settings.tenant_id,
        api_client_id=settings.api_client_id,
        app_id_uri=settings.app_id_uri,
        token_versions=settings.token_versions,
        v1_issuer=settings.v1_issuer,
    )
    sweeper = Sweeper(
        grants=grants,
        store=store,
        writer=writer,
        clock=now,
        batch=settings.sweep_batch,
        pending_grace=settings.pending_grace,
    )
    services = Services(settings=settings, grants=grants, verifier=verifier)
    return Broker(services=services, sweeper=sweeper, store=store, topology=topology, writer=writer)


_lock = threading.Lock()
_broker: Broker | None = None


def broker() -> Broker:
    """This process's broker, built from the environment the first time it is needed."""
    global _broker  # noqa: PLW0603 - one broker per process is the point
    with _lock:
        if _broker is None:
            _broker = build(Settings.from_env())
        return _broker


def run_sweep() -> SweepReport:
    """The timer's body: one bounded sweep."""
    return broker().sweeper.run()


app = create_app(lambda: broker().services)
