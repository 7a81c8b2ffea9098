"""Sweep cost against history: seed thousands of closed grants through `GrantStore`, open 100 real grants
(rules in ARM), then time one sweep at a clock past their expiry and count what it read from Table Storage.

Entities read are counted on the wire: every response from Azurite seen by azure-core in this process,
with the entities in its body (`value` of a query, or one entity).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import crowd, scenarios
from bench.lab import BenchLab
from bench.table import Figure
from jitbroker.model import Grant, GrantStatus

DUE = 100
HISTORY = (1_000, 10_000)
GOAL_S = 2.0
PREFIX = "benchsweep"


@dataclass
class WireCount:
    """Table Storage requests and entities returned, counted at the transport."""

    requests: int = 0
    entities: int = 0


@contextlib.contextmanager
def counting_table_reads(endpoint: str) -> Iterator[WireCount]:
    """Count requests to `endpoint` and the entities in their responses, for this process, while open."""
    from azure.core.pipeline.transport import RequestsTransport

    netloc = urlsplit(endpoint).netloc
    count = WireCount()
    lock = threading.Lock()
    original = RequestsTransport.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        response = original(self, request, **kwargs)
        if urlsplit(request.url).netloc == netloc:
            found = _entities(response)
            with lock:
                count.requests += 1
                count.entities += found
        return response

    RequestsTransport.send = send
    try:
        yield count
    finally:
        RequestsTransport.send = original


def _entities(response: Any) -> int:
    if response.status_code != 200 or "json" not in (response.headers.get("content-type") or ""):
        return 0
    try:
        body = json.loads(response.text())
    except ValueError:
        return 0
    if isinstance(body.get("value"), list):
        return len(body["value"])
    return 1 if "PartitionKey" in body else 0


def sweep_figures(workdir: Path) -> list[Figure]:
    """The sweep at two history sizes with the same 100 due grants."""
    world = scenarios.write_scenario(scenarios.subnet_world(DUE // 2), workdir / "sweep")
    figures = []
    with BenchLab(world, scenarios.scope()) as lab:
        broker = lab.broker(PREFIX)
        from jitbroker.config import Settings
        from jitbroker.runtime import build

        os.environ.update(lab.identity_env())
        settings = Settings.from_env(lab.settings(PREFIX))
        store = build(settings).store
        seeded = 0
        for history in HISTORY:
            _seed_history(store, history - seeded, offset=seeded)
            seeded = history
            latest = _open_due(lab, broker)
            sweeper = build(settings, clock=_frozen(latest + timedelta(seconds=1))).sweeper
            with counting_table_reads(lab.azurite.table_endpoint) as wire:
                started = time.perf_counter()
                report = sweeper.run()
                seconds = time.perf_counter() - started
            if report.expired != DUE or report.errors:
                raise RuntimeError(f"the sweep did not expire {DUE} grants: {report}")
            figures.append(
                Figure(
                    f"Sweep, {history:,} historical grants, {DUE} due",
                    f"{seconds:.2f} s; {wire.entities:,} entities read in {wire.requests:,} table requests "
                    f"({wire.entities / DUE:.1f} per due grant)",
                    f"≤ {GOAL_S:g} s; entities read ∝ due",
                    seconds <= GOAL_S,
                )
            )
    return figures


def _frozen(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _seed_history(store: Any, count: int, *, offset: int) -> None:
    """`count` closed grants from last month, written through the store as the broker writes them."""
    base = datetime.now(UTC) - timedelta(days=30)
    vm_id = f"{scenarios.scope()}/providers/Microsoft.Compute/virtualMachines/{scenarios.vm_name(0)}"

    def one(n: int) -> None:
        who = crowd.member(n % crowd.MAX_MEMBERS)
        created = base + timedelta(minutes=n)
        store.create(
            Grant(
                id=f"g-history{n:08d}",
                principal=who.oid,
                principal_name=who.upn,
                vm_id=vm_id,
                vm_name=scenarios.vm_name(0),
                port=22,
                protocol="ssh",
                source=who.source,
                status=GrantStatus.EXPIRED if n % 2 else GrantStatus.REVOKED,
                created_at=created,
                expires_at=created + timedelta(hours=1),
                updated_at=created + timedelta(hours=1),
            )
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(offset, offset + count)))


def _open_due(lab: BenchLab, broker: Any) -> datetime:
    """Open DUE real grants (two people per VM); returns the latest expiry."""
    pairs = [(crowd.member(i), scenarios.vm_name(i % (DUE // 2))) for i in range(DUE)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda p: lab.grant(broker, p[0], {"vm": p[1], "duration": "PT10M"}), pairs))
    failed = [(status, body) for status, _, body in results if status != 201]
    if failed:
        raise RuntimeError(f"could not open the due grants: {failed[:3]}")
    return max(datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")) for _, _, body in results)
