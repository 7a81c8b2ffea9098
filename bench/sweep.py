"""Sweep cost against history: seed closed grants, open 100 real grants behind one subnet NSG (two people on
each of 50 VMs, rules written by a broker process), then time one sweep at a clock past their expiry, at
emulator latency 0, and count what it asked of Table Storage and ARM. The sweeper is built in this process
as the timer builds it (`build_backend`), its ARM token already fetched. Done at 1,000 and again at 20,000
historical grants with the same 100 due: the table requests must not change.

Table requests are counted on the wire: every response from Azurite seen by azure-core in this process (the
sweeper runs here; nothing else in this process talks to Azurite meanwhile), with the entities in its body
(`value` of a query, or one entity). NSG writes are the emulator's logged PUTs of the NSG.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bench import crowd, scenarios, seed
from bench.lab import BenchLab, arm_counts
from bench.table import Figure
from jitbroker.model import Grant, GrantStatus

DUE = 100
HISTORY = (1_000, 20_000)
GOAL_S = 2.0
GOAL_WRITES = 2
PREFIX = "benchsweep"


@dataclass
class WireCount:
    """Table Storage requests and entities returned, counted at the transport, with requests by kind."""

    requests: int = 0
    entities: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def top(self, n: int = 6) -> str:
        """The commonest kinds of request, e.g. `DELETE open x200`."""
        return ", ".join(f"{kind} x{count}" for kind, count in self.kinds.most_common(n))


@contextlib.contextmanager
def counting_table_reads(endpoint: str, *, prefix: str = "") -> Iterator[WireCount]:
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
            kind = f"{request.method} {table_of(request.url, prefix)}"
            with lock:
                count.requests += 1
                count.entities += found
                count.kinds[kind] += 1
        return response

    RequestsTransport.send = send
    try:
        yield count
    finally:
        RequestsTransport.send = original


def table_of(url: str, prefix: str = "") -> str:
    """The table a Table Storage URL is about, without the broker's prefix (`open`, `grants`, ...)."""
    path = unquote(urlsplit(url).path).rstrip("/")
    name = path.rsplit("/", 1)[-1].split("(", 1)[0]
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


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


@dataclass(frozen=True)
class SweepRun:
    """One measured sweep."""

    history: int
    seconds: float
    wire: WireCount
    nsg_writes: int
    report: Any
    grant_answer_s: float  # median answer of the 100 grants opened before it (10 at a time, latency 0)


def sweep_figures(workdir: Path) -> list[Figure]:
    """The sweep at two history sizes with the same 100 due grants behind one NSG."""
    world = scenarios.write_scenario(scenarios.subnet_world(DUE // 2), workdir / "sweep")
    runs: list[SweepRun] = []
    with BenchLab(world, scenarios.scope()) as lab:
        broker = lab.broker(PREFIX)
        lab.backend(PREFIX)  # creates the tables
        raw = seed.RawTables(lab.azurite.table_endpoint)
        seeded = 0
        for history in HISTORY:
            seed.insert_all(raw, seed.closed_grant_rows(PREFIX, _history(seeded, history)))
            seeded = history
            latest, answer = _open_due(lab, broker)
            backend = lab.backend(PREFIX, clock=_frozen(latest + timedelta(seconds=1)))
            backend.reconciler.read(scenarios.nsg_id())  # its ARM token and connections, as on a warm host
            sweeper = backend.sweeper
            lab.admin.clear_requests()
            with counting_table_reads(lab.azurite.table_endpoint, prefix=PREFIX) as wire:
                started = time.perf_counter()
                report = sweeper.run()
                seconds = time.perf_counter() - started
            if report.expired != DUE or report.errors:
                raise RuntimeError(f"the sweep did not expire {DUE} grants: {report}")
            writes = arm_counts(lab.admin.requests())["nsg_writes"]
            runs.append(SweepRun(history, seconds, wire, writes, report, answer))
    timing = "; ".join(
        f"{r.history:,} history: {r.seconds:.2f} s, "
        f"{r.nsg_writes} NSG write{'s' if r.nsg_writes != 1 else ''}"
        for r in runs
    )
    first, last = runs[0], runs[-1]
    figures = [
        Figure(
            f"Sweep, {DUE} due behind one NSG, latency 0",
            f"{timing} ({first.wire.requests:,} table requests: {first.wire.top(6)})",
            f"≤ {GOAL_S:g} s; ≤ {GOAL_WRITES} NSG writes",
            all(r.seconds <= GOAL_S and r.nsg_writes <= GOAL_WRITES for r in runs),
        ),
        Figure(
            f"Sweep table requests at {first.history:,} vs {last.history:,} historical grants",
            " vs ".join(f"{r.wire.requests:,} requests ({r.wire.entities:,} entities read)" for r in runs),
            "equal (no scan grows with history)",
            len({(r.wire.requests, r.wire.entities) for r in runs}) == 1,
        ),
        Figure(
            f"Grant answer at {first.history:,} vs {last.history:,} historical grants, latency 0",
            " vs ".join(
                f"median {r.grant_answer_s * 1000:.0f} ms "
                f"(~{r.history // crowd.MAX_MEMBERS} past grants a person)"
                for r in runs
            )
            + f" ({DUE} grants, 10 at a time)",
            "report",
            None,
        ),
    ]
    return figures


def _frozen(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _history(start: int, stop: int) -> Iterator[Grant]:
    """Closed grants from last month, numbered `start` to `stop - 1`."""
    base = datetime.now(UTC) - timedelta(days=30)
    vm_id = f"{scenarios.scope()}/providers/Microsoft.Compute/virtualMachines/{scenarios.vm_name(0)}"
    for n in range(start, stop):
        who = crowd.member(n % crowd.MAX_MEMBERS)
        created = base + timedelta(seconds=n * 60)
        yield Grant(
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
            nsg_ids=(scenarios.nsg_id(),),
        )


def _open_due(lab: BenchLab, broker: Any) -> tuple[datetime, float]:
    """Open DUE real grants (two people per VM); the latest expiry and the median answer in seconds."""
    pairs = [(crowd.member(i), scenarios.vm_name(i % (DUE // 2))) for i in range(DUE)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(
            pool.map(lambda p: lab.grant_settled(broker, p[0], {"vm": p[1], "duration": "PT10M"}), pairs)
        )
    failed = [(o.final, o.body) for o in results if not o.granted]
    if failed:
        raise RuntimeError(f"could not open the due grants: {failed[:3]}")
    latest = max(datetime.fromisoformat(o.body["expires_at"].replace("Z", "+00:00")) for o in results)
    return latest, statistics.median(o.answer_s for o in results)
