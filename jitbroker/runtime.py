"""Wiring: everything the broker needs, built once per process from the environment, on first use.

`app` is the ASGI app uvicorn and `function_app.py` serve; `run_sweep()` is the timer's body. Building is lazy
so that importing this module (the Functions host indexing `function_app.py`) reads no settings and opens no
connection. The sweeper is built from `SweepSettings` alone, so a settings error on the HTTP side (a token
setting, a scope) never stops expiry; a process that serves HTTP shares its adapters with its sweeper.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from jitbroker.api import Services, create_app
from jitbroker.approvals import ApprovalService
from jitbroker.audit import AuditReader
from jitbroker.closing import Closer
from jitbroker.config import Settings, SweepSettings
from jitbroker.events import Publisher
from jitbroker.grants import GrantService
from jitbroker.identity import TokenVerifier
from jitbroker.readiness import Readiness, ReadinessReport, unavailable
from jitbroker.sweeper import Sweeper, SweepReport

if TYPE_CHECKING:
    from jitbroker.clients import AzureClients
    from jitbroker.reconciler import NsgReconciler
    from jitbroker.store import GrantStore
    from jitbroker.topology import TopologyReader

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """The broker's clock in production."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Backend:
    """The adapters a sweep needs: storage, the NSG reconciler and closing, over one set of clients."""

    clients: AzureClients
    store: GrantStore
    reconciler: NsgReconciler
    closer: Closer
    sweeper: Sweeper


@dataclass(frozen=True)
class Broker:
    """The whole broker of one process: HTTP services and the sweeper, sharing adapters and caches."""

    services: Services
    sweeper: Sweeper
    store: GrantStore
    topology: TopologyReader
    reconciler: NsgReconciler
    readiness: Readiness


def build_backend(
    settings: SweepSettings,
    *,
    clock: Callable[[], datetime] = utc_now,
    answer_budget: float = 20.0,
    topology: Callable[[AzureClients], TopologyReader] | None = None,
    publisher: Publisher | None = None,
) -> tuple[Backend, TopologyReader | None]:
    """Storage, reconciler, closer and sweeper from the sweeper's settings (the HTTP side adds the rest)."""
    from jitbroker.clients import AzureClients
    from jitbroker.reconciler import NsgReconciler
    from jitbroker.store import GrantStore

    clients = AzureClients(
        arm_endpoint=settings.arm_endpoint,
        table_endpoint=settings.table_endpoint,
        table_connection_string=settings.table_connection_string,
        managed_identity_client_id=settings.azure_client_id,
        poll_interval=settings.arm_poll_seconds,
    )
    store = GrantStore(clients.table_service(), prefix=settings.table_prefix, clock=clock)
    store.ensure_tables()
    reader = topology(clients) if topology is not None else None
    reconciler = NsgReconciler(
        clients,
        openings=store.openings,
        clock=clock,
        priority_band=(settings.priority_min, settings.priority_max),
        lro_timeout=settings.arm_timeout_seconds,
        poll_interval=settings.arm_poll_seconds,
    )
    closer = Closer(
        store=store, reconciler=reconciler, clock=clock, answer_budget=answer_budget, publisher=publisher
    )
    sweeper = Sweeper(
        closer=closer,
        store=store,
        reconciler=reconciler,
        clock=clock,
        batch=settings.sweep_batch,
        pending_grace=settings.pending_grace,
        budget_seconds=settings.sweep_budget_seconds,
        approval_use_window=settings.approval_use_window,
        expiring_minutes=settings.expiring_minutes,
    )
    return Backend(clients, store, reconciler, closer, sweeper), reader


def build(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_now,
    publisher: Publisher | None = None,
) -> Broker:
    """Build every part from settings; `clock` is injectable so tests can sweep at a chosen time, and
    `publisher` receives the lifecycle's events (notifications)."""
    from jitbroker.topology import TopologyReader, warm_sdk_models

    warm_sdk_models()  # before any request thread meets a cold SDK model class
    backend, topology = build_backend(
        settings.sweep(),
        clock=clock,
        answer_budget=settings.answer_budget_seconds,
        topology=lambda clients: TopologyReader(
            clients, cache_seconds=settings.topology_cache_seconds, clock=clock
        ),
        publisher=publisher,
    )
    assert topology is not None
    grants = GrantService(
        settings=settings,
        store=backend.store,
        topology=topology,
        reconciler=backend.reconciler,
        closer=backend.closer,
        clock=clock,
        answer_budget=settings.answer_budget_seconds,
    )
    verifier = TokenVerifier.from_settings(settings)
    audit = AuditReader(settings=settings, store=backend.store, clock=clock)
    approvals = ApprovalService(
        settings=settings,
        store=backend.store,
        topology=topology,
        activator=grants,
        closer=backend.closer,
        clock=clock,
    )
    services = Services(settings=settings, grants=grants, verifier=verifier, audit=audit, approvals=approvals)
    readiness = Readiness(
        {
            "table_storage": backend.store.ping,
            "arm": lambda: arm_ping(backend.clients, settings.allowed_scopes[0]),
        }
    )
    return Broker(
        services=services,
        sweeper=backend.sweeper,
        store=backend.store,
        topology=topology,
        reconciler=backend.reconciler,
        readiness=readiness,
    )


def arm_ping(clients: AzureClients, scope: str) -> None:
    """One cheap ARM read the broker's role allows (the first page of NSGs in a served scope)."""
    parts = scope.strip("/").split("/")
    network = clients.network_client(parts[1])
    pager = (
        network.network_security_groups.list(parts[3])
        if len(parts) >= 4
        else (network.network_security_groups.list_all())
    )
    next(iter(pager.by_page()), None)


_lock = threading.Lock()
_broker: Broker | None = None


def broker() -> Broker:
    """This process's broker, built from the environment the first time it is needed."""
    global _broker  # noqa: PLW0603 - one broker per process is the point
    with _lock:
        if _broker is None:
            from jitbroker import notify
            from jitbroker.config import NotifySettings

            settings = Settings.from_env()
            # A malformed notification setting stops the HTTP side at start, where someone sees it.
            publisher = notify.publisher_from_settings(NotifySettings.from_env())
            _broker = build(settings, publisher=publisher)
        return _broker


def readiness() -> ReadinessReport:
    """`GET /api/ready`: this process's dependencies, checked with its own identity (cached briefly)."""
    try:
        return broker().readiness.report()
    except Exception as err:  # settings or wiring: the instance cannot serve at all
        log.exception("the broker could not be built for a readiness check")
        return unavailable(f"the broker could not start ({type(err).__name__}); see its logs")


_sweeper: Sweeper | None = None


def sweeper() -> Sweeper:
    """This process's sweeper: the broker's when it serves HTTP too, else one built from `SweepSettings`."""
    global _sweeper  # noqa: PLW0603 - one sweeper per process
    with _lock:
        if _broker is not None:
            return _broker.sweeper
        if _sweeper is None:
            from jitbroker import notify

            # Expiry runs whatever the notification settings say: a bad one is logged, events are dropped.
            _sweeper = build_backend(SweepSettings.from_env(), publisher=notify.publisher_from_env())[
                0
            ].sweeper
        return _sweeper


def run_sweep() -> SweepReport:
    """The timer's body: one sweep within its time budget."""
    return sweeper().run()


app = create_app(lambda: broker().services, readiness=readiness)
