"""1,500 open grants over the demo's NSGs: the orphan sweep removes what nobody owns and nothing else, and its
table reads follow what is open, never history.

Grants are seeded the way `jitbroker.grants` records them (record, then `open` rows) through the store of a
broker built in this process on tables of its own, and each NSG is written by one reconciler pass, instead
of 1,500 HTTP requests. Orphans are written with the Network SDK, in the broker's own naming.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.pipeline.transport import RequestsTransport

from jitbroker.model import ConnectInfo, Grant, GrantStatus
from jitbroker.rules import describe, rule_key, rule_name
from tests.broker.conftest import RG, SUB, broker_rules, nsg_id, others, sources

Key = tuple[str, int]  # (private IP, port)
State = dict[Key, set[str]]  # a rule's key -> its sources

# (VM, port, how many grants): 1,500 in all. The busiest NSG (app-subnet-nsg: db-01 twice, win-01) holds 800
# sources in three rules, well inside ARM's 4,000 prefixes per NSG; no NSG needs more than three priorities.
SPREAD = (
    ("web-01", 22, 300),
    ("db-01", 22, 300),
    ("db-01", 5432, 300),
    ("win-01", 3389, 200),
    ("open-01", 22, 150),
    ("locked-01", 22, 150),
    ("v6-01", 22, 100),  # IPv6 callers, to the VM's IPv6 address
)
NSGS = ("web-01-nsg", "db-01-nsg", "app-subnet-nsg", "open-01-nsg", "locked-01-nsg", "v6-01-nsg")
PROTOCOL = {22: "ssh", 3389: "rdp", 5432: "tcp"}


def vm_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{name}"


def source(n: int, *, v6: bool = False) -> str:
    """The n-th caller's address: 198.18.0.0/15 (benchmarking range) or 2001:db8:1500::/48."""
    if v6:
        return f"{ipaddress.IPv6Address('2001:db8:1500::') + n + 1}/128"
    return f"{ipaddress.IPv4Address('198.18.0.0') + n + 1}/32"


def rule_state(nsg: dict[str, Any]) -> State:
    """The broker's rules of an NSG by key; one rule per key."""
    state: State = {}
    for rule in broker_rules(nsg):
        key = rule_key(rule["name"])
        assert key is not None and key not in state, rule["name"]
        state[key] = sources(rule)
    return state


@dataclass
class Seeded:
    """What the seeding recorded: each NSG's expected broker rules, and the grants."""

    expected: dict[str, State]
    grants: list[Grant]


BuildParts = Callable[..., Any]


@pytest.fixture
def parts_for(
    broker_env: dict[str, str], identity_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> BuildParts:
    """`parts_for(prefix, clock)`: a broker built in this process over the demo's ARM, on tables `prefix*`."""
    from jitbroker.config import Settings
    from jitbroker.runtime import build

    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, broker_env[name])

    def make(prefix: str, clock: Callable[[], datetime]) -> Any:
        return build(Settings.from_env({**broker_env, "JIT_TABLE_PREFIX": prefix}), clock=clock)

    return make


@pytest.fixture
def network(arm: Any, identity_env: dict[str, str]) -> Iterator[Any]:
    """The demo's Network SDK client as the broker's managed identity (for the orphans)."""
    from jitbroker.clients import AzureClients

    clients = AzureClients(
        arm_endpoint=arm.url, managed_identity_client_id=identity_env["AZURE_CLIENT_ID"], poll_interval=0.05
    )
    yield clients.network_client(SUB)
    clients.close()


def seed_open(parts: Any, now: datetime, spread: tuple[tuple[str, int, int], ...] = SPREAD) -> Seeded:
    """Record active grants with their `open` rows as the lifecycle does, then one pass per NSG."""
    grants: list[Grant] = []
    n = 0
    for vm_name, port, count in spread:
        vm = parts.topology.resolve(vm_id(vm_name))
        v6 = vm_name == "v6-01"
        private_ip = next(a.private_ip for a in vm.addresses if a.version == (6 if v6 else 4))
        for _ in range(count):
            created = now - timedelta(seconds=n % 600)
            grants.append(
                Grant(
                    id=f"g-open{n:06d}",
                    principal=f"00000000-0000-4000-9000-{n:012d}",
                    principal_name=f"user{n}@contoso.test",
                    vm_id=vm.vm_id,
                    vm_name=vm.name,
                    port=port,
                    protocol=PROTOCOL[port],
                    source=source(n, v6=v6),
                    status=GrantStatus.ACTIVE,
                    created_at=created,
                    expires_at=now + timedelta(minutes=30 + n % 90),
                    updated_at=created,
                    connect=ConnectInfo(None, None, None, private_ip, vm.admin_username, vm.os_type),
                    nsg_ids=vm.nsg_ids,
                )
            )
            n += 1

    def record(grant: Grant) -> None:
        stored = parts.store.create(grant)
        parts.store.open_rows(stored)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(record, grants))
    expected: dict[str, State] = {}
    for grant in grants:
        for nsg in grant.nsg_ids:
            name = nsg.rsplit("/", 1)[-1]
            key = (str(ipaddress.ip_address(grant.private_ip or "")), grant.port)
            expected.setdefault(name, {}).setdefault(key, set()).add(grant.source)
    for name in expected:
        result = parts.reconciler.reconcile(nsg_id(name))
        assert result.plan.refused == {}, result.plan.refused
    return Seeded(expected, grants)


def plant(network: Any, nsg: str, name: str, fields: dict[str, Any]) -> None:
    """Write one security rule with the Network SDK, as a crashed broker (or a lost store) would leave it."""
    from azure.mgmt.network.models import SecurityRule

    network.security_rules.begin_create_or_update(RG, nsg, name, SecurityRule(**fields)).result()


def orphan_rule(network: Any, nsg: str, key: Key, srcs: list[str], *, priority: int) -> str:
    """A broker-style rule (named and described as the broker does) that no grant of `nsg` asks for."""
    private_ip, port = key
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=45)
    name = rule_name(private_ip, port, expires)
    plant(
        network,
        nsg,
        name,
        {
            "description": describe(vm_name="gone-01", expires_at=expires, sources=srcs),
            "protocol": "Tcp",
            "source_port_range": "*",
            "destination_port_range": str(port),
            "source_address_prefixes": srcs,
            "destination_address_prefix": private_ip,
            "access": "Allow",
            "priority": priority,
            "direction": "Inbound",
        },
    )
    return name


def add_source(network: Any, nsg: str, key: Key, extra: str) -> None:
    """Slip one more source into the broker's existing rule for `key` (everything else as ARM holds it)."""
    (rule,) = [
        r
        for r in network.security_rules.list(RG, nsg)
        if r.name.startswith("jit-") and rule_key(r.name) == key
    ]
    rule.source_address_prefixes = [*rule.source_address_prefixes, extra]
    network.security_rules.begin_create_or_update(RG, nsg, rule.name, rule).result()


def test_a_sweep_over_1500_open_grants_removes_the_orphans_and_nothing_else(
    parts_for, arm_admin, network
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    parts = parts_for("jitmany", lambda: now)
    seeded = seed_open(parts, now)

    assert sum(len(g) for state in seeded.expected.values() for g in state.values()) >= 1500
    assert set(seeded.expected) == set(NSGS)
    for name, state in seeded.expected.items():
        assert rule_state(arm_admin.nsg(name)) == state, name
    assert len(rule_state(arm_admin.nsg("app-subnet-nsg"))) == 3
    foreign = {name: others(arm_admin.nsg(name)) for name in NSGS}

    web = ("192.0.2.4", 22)
    db_postgres = ("192.0.2.21", 5432)
    win = ("192.0.2.20", 3389)
    win_source = sorted(seeded.expected["app-subnet-nsg"][win])[0]  # open, but in another NSG and key
    db_source = sorted(seeded.expected["db-01-nsg"][("192.0.2.21", 22)])[0]
    unknown = orphan_rule(network, "web-01-nsg", ("192.0.2.9", 22), ["198.51.100.77/32"], priority=190)
    elsewhere = orphan_rule(network, "db-01-nsg", win, [win_source, "198.51.100.78/32"], priority=191)
    add_source(network, "web-01-nsg", web, db_source)
    add_source(network, "app-subnet-nsg", db_postgres, win_source)
    assert unknown in {r["name"] for r in broker_rules(arm_admin.nsg("web-01-nsg"))}
    assert db_source in rule_state(arm_admin.nsg("web-01-nsg"))[web]

    report = parts_for("jitmany", lambda: now + timedelta(seconds=1)).sweeper.run()

    assert report.errors == [] and not report.out_of_time
    assert (report.expired, report.undone) == (0, 0)
    assert report.orphans_removed == 2  # the unknown rule and the one for win-01's key in db-01's NSG
    assert report.orphans_trimmed == 2  # the two extra sources
    for name, state in seeded.expected.items():
        assert rule_state(arm_admin.nsg(name)) == state, name  # not one open grant's source lost or gained
        assert others(arm_admin.nsg(name)) == foreign[name]
    names = {r["name"] for n in NSGS for r in broker_rules(arm_admin.nsg(n))}
    assert unknown not in names and elsewhere not in names
    untouched = [n["name"] for n in arm_admin.nsgs() if n["name"] not in NSGS]
    assert untouched and all(broker_rules(arm_admin.nsg(n)) == [] for n in untouched)
    for name, state in seeded.expected.items():
        assert len(parts.store.openings(nsg_id(name))) == sum(len(s) for s in state.values())


# ---------------------------------------------------------------- the sweep's table reads against history


class CountingTransport(RequestsTransport):  # type: ignore[misc]  # azure-core's transport is untyped
    """azure-core's requests transport, counting table requests and the entities they return while on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on = False
        self.requests = 0
        self.entities = 0
        self._lock = threading.Lock()

    def send(self, request: Any, **kwargs: Any) -> Any:
        response = super().send(request, **kwargs)
        if self.on:
            found = _entities(response)
            with self._lock:
                self.requests += 1
                self.entities += found
        return response

    def count(self, run: Callable[[], Any]) -> tuple[Any, int, int]:
        self.requests = self.entities = 0
        self.on = True
        try:
            result = run()
        finally:
            self.on = False
        return result, self.requests, self.entities


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


def seed_history(parts: Any, vm_name: str, start: int, count: int, before: datetime) -> None:
    """Closed grants of the past month on one VM, recorded as the broker leaves them (no index but the
    principal's)."""
    vm = parts.topology.resolve(vm_id(vm_name))

    def one(n: int) -> None:
        created = before - timedelta(days=30) + timedelta(minutes=n)
        parts.store.create(
            Grant(
                id=f"g-past{n:07d}",
                principal=f"00000000-0000-4000-a000-{n % 97:012d}",
                principal_name=f"user{n % 97}@contoso.test",
                vm_id=vm.vm_id,
                vm_name=vm.name,
                port=22,
                protocol="ssh",
                source=source(n),
                status=GrantStatus.EXPIRED if n % 3 else GrantStatus.REVOKED,
                created_at=created,
                expires_at=created + timedelta(hours=1),
                updated_at=created + timedelta(hours=1),
                connect=ConnectInfo(None, None, None, vm.addresses[0].private_ip, None, None),
                nsg_ids=vm.nsg_ids,
            )
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(start, start + count)))


def test_the_sweeps_table_reads_do_not_grow_with_history(
    parts_for, arm_admin, monkeypatch: pytest.MonkeyPatch, azurite: Any
) -> None:
    from azure.data.tables import TableServiceClient

    from jitbroker.clients import AzureClients

    transport = CountingTransport()
    tables = TableServiceClient.from_connection_string(azurite.connection_string, transport=transport)
    monkeypatch.setattr(AzureClients, "table_service", lambda self: tables)
    now = datetime.now(UTC).replace(microsecond=0)
    parts = parts_for("jithist", lambda: now)
    seed_open(parts, now, spread=(("web-01", 22, 20), ("db-01", 22, 20), ("win-01", 3389, 10)))
    sweeper = parts_for("jithist", lambda: now + timedelta(seconds=1)).sweeper

    seed_history(parts, "web-01", 0, 1_000, now)
    little, requests_little, entities_little = transport.count(sweeper.run)
    seed_history(parts, "db-01", 1_000, 2_000, now)
    seed_history(parts, "win-01", 3_000, 1_000, now)  # four times the history
    much, requests_much, entities_much = transport.count(sweeper.run)

    for report in (little, much):
        assert report.errors == [] and (report.expired, report.undone, report.orphans_removed) == (0, 0, 0)
    assert requests_little > 0 and entities_little >= 70  # it did read: each NSG's open grants (db-01 twice)
    assert (requests_much, entities_much) == (requests_little, entities_little)
