"""NsgReconciler against the ARM emulator through the real SDK: one conditional whole-NSG write per pass.

The store is a dict the test controls (`Store`, the reconciler's `openings`); the clock is fixed an hour
before the grants expire. "Byte for byte" means the rule's JSON as the emulator serves it (key order
included), less the two parts ARM re-stamps on every write of the NSG: `etag` and `provisioningState`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from azure.mgmt.network.models import SecurityRule

from jitbroker import nsgplan
from jitbroker.clients import AzureClients
from jitbroker.errors import AddressAmbiguous, NotFound, NsgLocked, UpstreamError, UpstreamThrottled
from jitbroker.model import Opening
from jitbroker.reconciler import NsgReconciler, PassResult, StillWorking
from jitbroker.rules import is_broker_rule, rule_key, rule_name
from lab.arm.admin import ArmAdmin
from lab.arm.knobs import CONCURRENCY_MODES
from tests.broker_adapters.conftest import SUBSCRIPTION, nsg_id, vm_id

T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)  # when the grants expire unless told otherwise
NOW = T0 - timedelta(hours=1)  # the reconciler's clock
RG_NAME = "rg-jit-demo"
WEB = "web-01-nsg"
WEB_NSG = nsg_id(WEB)
WEB_IP = "192.0.2.4"
NSG_WRITE = "Microsoft.Network/networkSecurityGroups/write"
NSG_READ = "Microsoft.Network/networkSecurityGroups/read"
RULE_WRITE = "Microsoft.Network/networkSecurityGroups/securityRules/write"
ALICE, BOB, CAROL = "203.0.113.10/32", "203.0.113.11/32", "198.51.100.7/32"

_created = iter(range(1_000_000))


# ---------------------------------------------------------------- the store, the clock, the reconciler


def grant(
    grant_id: str,
    *,
    vm: str = "web-01",
    ip: str = WEB_IP,
    port: int = 22,
    source: str = ALICE,
    expires: datetime = T0,
    created: datetime | None = None,
) -> Opening:
    """An open grant; without `created`, each is created a second after the one built before it."""
    if created is None:
        created = NOW - timedelta(days=1) + timedelta(seconds=next(_created))
    return Opening(grant_id, "alice", vm_id(vm), vm, ip, port, source, expires, created)


class Store:
    """The open grants per NSG, as the broker's store would answer `openings(nsg_id)`; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_nsg: dict[str, dict[str, Opening]] = {}

    def __call__(self, nsg: str) -> list[Opening]:
        with self._lock:
            return list(self._by_nsg.get(nsg.lower(), {}).values())

    def open(self, *openings: Opening, nsg: str = WEB_NSG) -> None:
        with self._lock:
            held = self._by_nsg.setdefault(nsg.lower(), {})
            for o in openings:
                held[o.grant_id] = o

    def close(self, *grant_ids: str, nsg: str = WEB_NSG) -> None:
        with self._lock:
            held = self._by_nsg.setdefault(nsg.lower(), {})
            for gid in grant_ids:
                held.pop(gid, None)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def napper(sleeps: list[float], cap: float = 0.05) -> Callable[[float], None]:
    """The reconciler's `sleep`: records every pause, and really waits a little (at most `cap`)."""

    def nap(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(min(seconds, cap))

    return nap


Make = Callable[..., NsgReconciler]


@pytest.fixture
def make(clients, store, sleeps) -> Make:
    """`make(**overrides)`: a reconciler on the lab's clients, the test's store and a fixed clock."""

    def build(**overrides: Any) -> NsgReconciler:
        options: dict[str, Any] = {
            "openings": store,
            "clock": lambda: NOW,
            "base_delay": 0.01,
            "max_delay": 0.05,
            "lro_timeout": 5.0,
            "poll_interval": 0.02,
            "settle_timeout": 10.0,
            "sleep": napper(sleeps),
        }
        options.update(overrides)
        made_with = options.pop("clients", clients)
        return NsgReconciler(made_with, **options)

    return build


@pytest.fixture
def rec(make: Make) -> NsgReconciler:
    return make()


@pytest.fixture
def network(clients) -> Any:
    """An SDK client for changes someone else makes to the NSG (the portal, Terraform, another team)."""
    return clients.network_client(SUBSCRIPTION)


@pytest.fixture
def process_clients(arm, arm_admin, identity_env) -> Iterator[Callable[[], AzureClients]]:
    """`process_clients()`: another broker process's own SDK clients (same identity, own HTTP sessions)."""
    made: list[AzureClients] = []

    def build() -> AzureClients:
        made.append(
            AzureClients(
                arm_endpoint=arm.url,
                managed_identity_client_id=identity_env["AZURE_CLIENT_ID"],
                poll_interval=0.05,
                read_timeout=2.0,
            )
        )
        return made[-1]

    yield build
    for clients in made:
        clients.close()


@pytest.fixture
def other_clients(process_clients) -> AzureClients:
    """A second broker process's clients."""
    clients: AzureClients = process_clients()
    return clients


# ---------------------------------------------------------------- reading the NSG back


def nsg_of(arm_admin: ArmAdmin, name: str = WEB) -> dict[str, Any]:
    return arm_admin.nsg(name)


def rules_of(arm_admin, name: str = WEB) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in nsg_of(arm_admin, name)["properties"]["securityRules"]}


def ours(arm_admin, name: str = WEB) -> dict[str, dict[str, Any]]:
    """The broker's rules in the NSG, by name."""
    return {n: r for n, r in rules_of(arm_admin, name).items() if is_broker_rule(r)}


def as_written(rule: dict[str, Any]) -> str:
    """A rule's JSON as served, less what ARM re-stamps on any write of its NSG (etag, provisioningState)."""
    kept = {k: v for k, v in rule.items() if k != "etag"}
    if isinstance(rule.get("properties"), dict):
        kept["properties"] = {k: v for k, v in rule["properties"].items() if k != "provisioningState"}
    return json.dumps(kept)


def foreign_bytes(arm_admin, name: str = WEB) -> dict[str, str]:
    """Every rule the broker did not write, as bytes to compare before and after."""
    return {n: as_written(r) for n, r in rules_of(arm_admin, name).items() if not is_broker_rule(r)}


def shell_bytes(arm_admin, name: str = WEB) -> str:
    """The NSG without its security rules (location, tags, flushConnection, default rules, associations)."""
    nsg = nsg_of(arm_admin, name)
    body = {k: v for k, v in nsg.items() if k != "etag"}
    props = {k: v for k, v in nsg["properties"].items() if k not in ("provisioningState", "securityRules")}
    props["defaultSecurityRules"] = [as_written(r) for r in props.get("defaultSecurityRules", [])]
    body["properties"] = props
    return json.dumps(body)


def nsg_puts(arm_admin, name: str = WEB) -> list[dict[str, Any]]:
    """Whole-NSG PUTs in the request log, whatever their answer."""
    return [
        r
        for r in arm_admin.requests()
        if r["op"] == NSG_WRITE and r["method"] == "PUT" and r["path"].lower().endswith(f"/{name.lower()}")
    ]


def sources(rule: dict[str, Any]) -> list[str]:
    """A rule's source prefixes, sorted, however ARM spelt them (one, or a list)."""
    props = rule["properties"]
    one = [props["sourceAddressPrefix"]] if props.get("sourceAddressPrefix") else []
    return sorted([*one, *(props.get("sourceAddressPrefixes") or [])])


def settled(
    arm_admin, name: str = WEB, timeout: float = 5.0, until: Callable[[dict[str, Any]], bool] = lambda _: True
) -> dict[str, Any]:
    """The NSG once every operation on it has ended (no rule `Updating`) and `until` holds."""
    deadline = time.monotonic() + timeout
    while True:
        nsg = nsg_of(arm_admin, name)
        states = {r["properties"].get("provisioningState") for r in nsg["properties"]["securityRules"]}
        done = states <= {"Succeeded"} and nsg["properties"].get("provisioningState") == "Succeeded"
        if done and until(nsg):
            return nsg
        assert time.monotonic() < deadline, f"{name} did not settle: {states}"
        time.sleep(0.02)


def partner_rule(priority: int = 300) -> SecurityRule:
    """A rule another team adds by hand while the broker works."""
    return SecurityRule(
        {
            "properties": {
                "protocol": "Tcp",
                "sourceAddressPrefix": "198.51.100.0/24",
                "sourcePortRange": "*",
                "destinationAddressPrefix": WEB_IP,
                "destinationPortRange": "8443",
                "access": "Allow",
                "priority": priority,
                "direction": "Inbound",
                "description": "partner VPN, ticket 4711",
            }
        }
    )


def run_threads(targets: list[Callable[[], None]], timeout: float = 30.0) -> list[BaseException]:
    """Run each target in its own thread; the exceptions they raised."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as err:
                errors.append(err)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread did not finish"
    return errors


def void(_result: object) -> None:
    """Discard a result (thread targets return nothing)."""


# ---------------------------------------------------------------- one NSG, one pass


def test_a_first_grant_writes_one_inbound_allow_rule_and_every_other_rule_comes_back_byte_for_byte(
    rec, store, arm_admin
):
    foreign_before, shell_before = foreign_bytes(arm_admin), shell_bytes(arm_admin)
    store.open(grant("g1"))
    arm_admin.clear_requests()

    result = rec.reconcile(WEB_NSG)

    name = rule_name(WEB_IP, 22, T0)
    assert name == "jit-192.0.2.4-p22-x20300501T120000Z"
    assert list(ours(arm_admin)) == [name]
    props = ours(arm_admin)[name]["properties"]
    assert props["access"] == "Allow" and props["direction"] == "Inbound" and props["protocol"] == "Tcp"
    assert props["destinationPortRange"] == "22" and props["destinationAddressPrefix"] == WEB_IP
    assert sources(ours(arm_admin)[name]) == [ALICE]
    assert props["priority"] == 100
    assert foreign_bytes(arm_admin) == foreign_before
    assert shell_bytes(arm_admin) == shell_before
    assert result.wrote and rec.writes == 1
    placed = result.plan.rule_for("g1")
    assert placed is not None and (placed.name, placed.priority) == (name, 100)
    assert [r["status"] for r in nsg_puts(arm_admin)] in ([200], [201])
    assert arm_admin.count(RULE_WRITE) == 0
    assert arm_admin.count(NSG_READ) == 1  # one GET of the NSG; no final GET after the PUT


def test_no_change_means_no_put(rec, store, arm_admin):
    store.open(grant("g1"))
    rec.reconcile(WEB_NSG)
    arm_admin.clear_requests()

    again = rec.reconcile(WEB_NSG)

    assert not again.wrote and rec.writes == 1
    assert nsg_puts(arm_admin) == [] and arm_admin.count(method="PUT") == 0
    assert arm_admin.count(NSG_READ) == 1
    assert again.plan.rule_for("g1") is not None  # the caller still learns where its grant is


def test_a_second_source_updates_the_same_rule_in_place(rec, store, arm_admin):
    store.open(grant("g1"))
    first = rec.reconcile(WEB_NSG).plan.rule_for("g1")
    store.open(grant("g2", source=BOB))
    arm_admin.clear_requests()

    second = rec.reconcile(WEB_NSG).plan.rule_for("g2")

    assert first is not None and second is not None
    assert (second.name, second.priority) == (first.name, first.priority)
    (rule,) = ours(arm_admin).values()
    assert rule["name"] == first.name and rule["properties"]["priority"] == first.priority
    assert sources(rule) == sorted([ALICE, BOB])
    assert len(nsg_puts(arm_admin)) == 1 and rec.writes == 2


def test_a_later_expiry_renames_the_rule_in_one_write_and_leaves_no_old_rule(rec, store, arm_admin):
    store.open(grant("g1"))
    old = rec.reconcile(WEB_NSG).plan.rule_for("g1")
    store.open(grant("g2", source=BOB, expires=T0 + timedelta(hours=1)))
    arm_admin.clear_requests()

    new = rec.reconcile(WEB_NSG).plan.rule_for("g2")

    assert old is not None and new is not None
    assert new.name == rule_name(WEB_IP, 22, T0 + timedelta(hours=1)) != old.name
    assert new.priority == old.priority
    assert list(ours(arm_admin)) == [new.name]
    assert sources(ours(arm_admin)[new.name]) == sorted([ALICE, BOB])
    assert len(nsg_puts(arm_admin)) == 1


def test_no_openings_remove_the_broker_rules_and_only_them(rec, store, arm_admin):
    foreign_before = foreign_bytes(arm_admin)
    store.open(grant("g1"), grant("g2", port=3389, source=BOB))
    rec.reconcile(WEB_NSG)
    assert len(ours(arm_admin)) == 2
    store.close("g1", "g2")
    arm_admin.clear_requests()

    result = rec.reconcile(WEB_NSG)

    assert ours(arm_admin) == {}
    assert sorted(result.plan.removed) == sorted([rule_name(WEB_IP, 22, T0), rule_name(WEB_IP, 3389, T0)])
    assert foreign_bytes(arm_admin) == foreign_before
    assert len(nsg_puts(arm_admin)) == 1
    arm_admin.clear_requests()
    assert not rec.reconcile(WEB_NSG).wrote and nsg_puts(arm_admin) == []


def test_several_nsgs_are_reconciled_together(rec, store, arm_admin):
    subnet_nsg = nsg_id("app-subnet-nsg")
    store.open(grant("g1", vm="app-01", ip="192.0.2.20"), nsg=subnet_nsg)
    store.open(grant("g1"))

    results = rec.reconcile_all([WEB_NSG, subnet_nsg, WEB_NSG], timeout=10)

    assert set(results) == {WEB_NSG, subnet_nsg}
    assert list(ours(arm_admin)) == [rule_name(WEB_IP, 22, T0)]
    assert list(ours(arm_admin, "app-subnet-nsg")) == [rule_name("192.0.2.20", 22, T0)]
    assert rec.writes == 2


def test_the_nsgs_own_settings_and_tags_come_back_as_they_were(rec, store, network, arm_admin):
    """db-01-nsg flushes connections; someone tagged it: the whole-NSG PUT keeps both."""
    current = network.network_security_groups.get(RG_NAME, "db-01-nsg")
    current.tags = {"owner": "dba-team", "cost-center": "4711"}
    network.network_security_groups.begin_create_or_update(RG_NAME, "db-01-nsg", current).result()
    shell_before, foreign_before = shell_bytes(arm_admin, "db-01-nsg"), foreign_bytes(arm_admin, "db-01-nsg")
    db = nsg_id("db-01-nsg")
    store.open(grant("g1", vm="db-01", ip="192.0.2.21", port=5432), nsg=db)

    assert rec.reconcile(db).wrote

    after = nsg_of(arm_admin, "db-01-nsg")
    assert after["tags"] == {"owner": "dba-team", "cost-center": "4711"}
    assert after["properties"]["flushConnection"] is True
    assert shell_bytes(arm_admin, "db-01-nsg") == shell_before
    assert foreign_bytes(arm_admin, "db-01-nsg") == foreign_before
    assert list(ours(arm_admin, "db-01-nsg")) == [rule_name("192.0.2.21", 5432, T0)]


def test_an_ipv6_grant_opens_the_vms_ipv6_address(rec, store, arm_admin):
    v6 = nsg_id("v6-01-nsg")
    store.open(grant("g1", vm="v6-01", ip="2001:db8:0:1::4", source="2001:db8:ffff::10/128"), nsg=v6)

    rec.reconcile(v6)

    (rule,) = ours(arm_admin, "v6-01-nsg").values()
    assert rule["name"] == rule_name("2001:db8:0:1::4", 22, T0)
    assert rule["properties"]["destinationAddressPrefix"] == "2001:db8:0:1::4"
    assert sources(rule) == ["2001:db8:ffff::10/128"]


def test_a_foreign_rule_in_the_band_keeps_its_priority_and_the_broker_takes_the_next(
    rec, store, network, arm_admin
):
    network.security_rules.begin_create_or_update(
        RG_NAME, WEB, "allow-partner-8443", partner_rule(100)
    ).result()
    foreign_before = foreign_bytes(arm_admin)
    store.open(grant("g1"))

    placed = rec.reconcile(WEB_NSG).plan.rule_for("g1")

    assert placed is not None and placed.priority == 101
    assert ours(arm_admin)[placed.name]["properties"]["priority"] == 101
    assert foreign_bytes(arm_admin) == foreign_before


def test_a_reconcile_all_that_fails_on_one_nsg_leaves_no_caller_waiting_on_the_others(rec, store):
    """White-box: reads the single-flight state, because the leak has no other outward sign."""
    gone = nsg_id("gone-nsg")
    store.open(grant("g1"), nsg=gone)
    store.open(grant("g1"))
    with pytest.raises(NotFound):
        rec.reconcile_all([gone, WEB_NSG], timeout=10)
    for i in range(3):
        store.open(grant(f"later-{i}", source=f"198.51.100.{i}/32"))
        rec.reconcile(WEB_NSG, timeout=10)

    flight = rec._flights[WEB_NSG.lower()]
    assert flight.waiting == 0
    assert len(flight.outcomes) <= 1


# ---------------------------------------------------------------- If-Match and foreign rules


class HeaderSpy:
    """Stands in for AzureClients: its network clients record each request's method, URL and If-Match."""

    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients
        self._made: dict[str, Any] = {}
        self.seen: list[tuple[str, str, str | None]] = []

    def network_client(self, subscription: str) -> Any:
        from azure.mgmt.network import NetworkManagementClient

        if subscription not in self._made:
            self._made[subscription] = NetworkManagementClient(
                self._clients.credential,
                subscription,
                base_url=self._clients.arm_endpoint,
                credential_scopes=[self._clients.arm_scope],
                polling_interval=0.02,
                retry_total=0,
                raw_request_hook=self._record,
            )
        return self._made[subscription]

    def _record(self, request: Any) -> None:
        http = request.http_request
        self.seen.append((http.method, http.url, http.headers.get("If-Match")))

    def close(self) -> None:
        for client in self._made.values():
            client.close()


def test_every_nsg_put_carries_if_match_with_the_etag_just_read(make, store, clients, arm_admin):
    spy = HeaderSpy(clients)
    read: list[str] = []
    rec = make(clients=cast(AzureClients, spy), on_nsg_read=lambda _id, nsg: read.append(nsg["etag"]))
    try:
        store.open(grant("g1"))
        rec.reconcile(WEB_NSG)
        store.open(grant("g2", source=BOB, expires=T0 + timedelta(hours=1)))
        rec.reconcile(WEB_NSG)
        store.close("g1", "g2")
        rec.reconcile(WEB_NSG)
    finally:
        spy.close()

    puts = [(url, if_match) for method, url, if_match in spy.seen if method == "PUT"]
    assert len(puts) == 3 and len(read) == 3
    assert all(f"/networkSecurityGroups/{WEB}?" in url for url, _ in puts)
    assert [if_match for _, if_match in puts] == read  # each write is conditional on the read before it
    assert all(etag for etag in read)


def test_a_stale_etag_gets_412_and_the_pass_reads_and_plans_again(make, store, network, arm_admin):
    """Someone adds a rule between the reconciler's GET and its PUT: without If-Match, the PUT drops it."""
    added: dict[str, str] = {}

    def meddle(_nsg_id: str) -> None:
        if added:
            return
        network.security_rules.begin_create_or_update(
            RG_NAME, WEB, "allow-partner-8443", partner_rule()
        ).result()
        added["allow-partner-8443"] = as_written(rules_of(arm_admin)["allow-partner-8443"])

    rec = make(before_write=meddle)
    seed_before = foreign_bytes(arm_admin)
    store.open(grant("g1"))
    arm_admin.clear_requests()

    result = rec.reconcile(WEB_NSG)

    statuses = [r["status"] for r in nsg_puts(arm_admin)]
    assert statuses in ([412, 200], [412, 201])
    assert arm_admin.count(NSG_READ) == 2  # read, 412, read again
    assert result.wrote and rec.writes == 1
    after = foreign_bytes(arm_admin)
    assert after["allow-partner-8443"] == added["allow-partner-8443"]
    assert {k: v for k, v in after.items() if k != "allow-partner-8443"} == seed_before
    assert list(ours(arm_admin)) == [rule_name(WEB_IP, 22, T0)]
    assert sources(ours(arm_admin)[rule_name(WEB_IP, 22, T0)]) == [ALICE]


def test_a_foreign_rule_added_while_the_broker_rule_exists_survives_its_update(
    rec, store, network, arm_admin
):
    store.open(grant("g1"))
    rec.reconcile(WEB_NSG)
    network.security_rules.begin_create_or_update(RG_NAME, WEB, "allow-partner-8443", partner_rule()).result()
    foreign_before = foreign_bytes(arm_admin)
    store.open(grant("g2", source=BOB))

    rec.reconcile(WEB_NSG)

    assert foreign_bytes(arm_admin) == foreign_before
    assert sources(ours(arm_admin)[rule_name(WEB_IP, 22, T0)]) == sorted([ALICE, BOB])


def test_a_broker_rule_widened_by_hand_is_written_back_to_what_the_store_says(rec, store, network, arm_admin):
    store.open(grant("g1"))
    placed = rec.reconcile(WEB_NSG).plan.rule_for("g1")
    assert placed is not None
    widened = dict(ours(arm_admin)[placed.name]["properties"])
    widened.pop("provisioningState")
    widened["sourceAddressPrefixes"] = [ALICE, "0.0.0.0/0"]
    network.security_rules.begin_create_or_update(
        RG_NAME, WEB, placed.name, SecurityRule({"properties": widened})
    ).result()
    assert "0.0.0.0/0" in sources(ours(arm_admin)[placed.name])

    assert rec.reconcile(WEB_NSG).wrote

    assert sources(ours(arm_admin)[placed.name]) == [ALICE]


# ---------------------------------------------------------------- concurrency


def test_fifty_concurrent_grants_on_one_nsg_cost_at_most_three_puts_and_every_caller_sees_its_grant_placed(
    rec, store, arm_admin
):
    arm_admin.set_knobs(latency_ms={"read": 5, "write": 20}, lro_ms=30)
    foreign_before = foreign_bytes(arm_admin)
    openings = [
        grant(f"g{i:02d}", vm=f"vm-{i:02d}", ip=f"192.0.2.{100 + i}", source=f"198.51.100.{i}/32")
        for i in range(50)
    ]
    start = threading.Barrier(len(openings))
    results: dict[str, PassResult] = {}
    arm_admin.clear_requests()

    def caller(opening: Opening) -> Callable[[], None]:
        def run() -> None:
            start.wait()
            store.open(opening)
            results[opening.grant_id] = rec.reconcile(WEB_NSG, timeout=20)

        return run

    assert run_threads([caller(o) for o in openings]) == []

    assert 1 <= len(nsg_puts(arm_admin)) <= 3
    assert rec.writes == len(nsg_puts(arm_admin))
    for o in openings:
        placed = results[o.grant_id].plan.rule_for(o.grant_id)
        assert placed is not None and (placed.private_ip, placed.port) == (o.private_ip, 22)
    broker = ours(arm_admin)
    assert len(broker) == 50
    assert len({r["properties"]["priority"] for r in broker.values()}) == 50
    by_ip = {r["properties"]["destinationAddressPrefix"]: sources(r) for r in broker.values()}
    assert by_ip == {o.private_ip: [o.source] for o in openings}
    assert foreign_bytes(arm_admin) == foreign_before


def test_two_processes_with_the_same_openings_racing_on_one_nsg_write_once_with_distinct_priorities(
    make, store, other_clients, arm_admin
):
    store.open(grant("g1"), grant("g2", vm="web-02", ip="192.0.2.5", source=BOB))
    both_read = threading.Barrier(2, timeout=10)

    def once() -> Callable[[str], None]:
        done: list[bool] = []

        def wait_for_the_other(_nsg_id: str) -> None:
            if not done:
                done.append(True)
                both_read.wait()

        return wait_for_the_other

    first = make(before_write=once())
    second = make(clients=other_clients, before_write=once())
    arm_admin.clear_requests()

    assert (
        run_threads([lambda: void(first.reconcile(WEB_NSG)), lambda: void(second.reconcile(WEB_NSG))]) == []
    )

    statuses = sorted(r["status"] for r in nsg_puts(arm_admin))
    assert statuses in ([200, 412], [201, 412])  # both planned on one etag: one lands, one rereads
    assert first.writes + second.writes == 1
    broker = ours(arm_admin)
    assert len(broker) == 2
    assert len({r["properties"]["priority"] for r in broker.values()}) == 2
    by_ip = {r["properties"]["destinationAddressPrefix"]: sources(r) for r in broker.values()}
    assert by_ip == {WEB_IP: [ALICE], "192.0.2.5": [BOB]}


def test_a_process_that_planned_on_an_older_store_loses_the_race_and_no_source_is_lost(
    make, store, other_clients, arm_admin
):
    """A reads the store, B records bob's grant and writes it, then A's write (without bob) meets 412."""
    at_write, go = threading.Event(), threading.Event()

    def hold(_nsg_id: str) -> None:
        if not at_write.is_set():
            at_write.set()
            assert go.wait(10)

    slow = make(before_write=hold)
    fast = make(clients=other_clients)
    store.open(grant("g1"))
    arm_admin.clear_requests()
    outcome: list[PassResult] = []
    a = threading.Thread(target=lambda: outcome.append(slow.reconcile(WEB_NSG, timeout=20)))
    a.start()
    try:
        assert at_write.wait(10)
        store.open(grant("g2", source=BOB))
        assert fast.reconcile(WEB_NSG).wrote
    finally:
        go.set()
        a.join(20)

    assert outcome and outcome[0].plan.rule_for("g1") is not None
    assert [r["status"] for r in nsg_puts(arm_admin)][1] == 412
    (rule,) = ours(arm_admin).values()
    assert sources(rule) == sorted([ALICE, BOB])
    assert fast.writes == 1 and slow.writes == 0  # A's reread found bob's write already had its grant


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.mark.parametrize("mode", CONCURRENCY_MODES)
def test_a_write_that_meets_another_process_operation_in_progress_ends_with_both_grants(
    mode, make, store, other_clients, arm_admin
):
    """Process A's write is still running when process B reads the NSG (its etag already A's) and writes."""
    arm_admin.set_knobs(lro_ms=500, concurrency=mode)
    sleeps: list[float] = []
    # Enough tries at short pauses to outlast A's 500 ms operation (ARM's own waits are seconds long).
    first = make(sleep=napper(sleeps), attempts=40)
    second = make(clients=other_clients, sleep=napper(sleeps), attempts=40)
    second.read(WEB_NSG)  # B has its token and connection: its GET and PUT land inside A's operation
    store.open(grant("g1"))
    arm_admin.clear_requests()
    done: list[PassResult] = []
    a = threading.Thread(target=lambda: done.append(first.reconcile(WEB_NSG, timeout=10)))
    a.start()
    try:
        wait_for(lambda: bool(ours(arm_admin)))  # A's write accepted, its operation running
        store.open(grant("g2", vm="web-02", ip="192.0.2.5", source=BOB))
        result = second.reconcile(WEB_NSG, timeout=10)
    finally:
        a.join(10)

    assert done and done[0].plan.rule_for("g1") is not None and result.plan.rule_for("g2") is not None
    statuses = [r["status"] for r in nsg_puts(arm_admin)]
    if mode == "reject":
        assert 409 in statuses
    if mode == "throttle":
        assert 429 in statuses and 1.0 in sleeps  # ARM's Retry-After, waited through the injected sleep
    if mode == "lro_failed":
        # its write either met A's operation (accepted, failed, rolled back, written again) or A's settling
        # etag (412, read again): both end below with both grants
        assert second.writes >= 1
    broker = {r["name"]: r for r in settled(arm_admin)["properties"]["securityRules"] if is_broker_rule(r)}
    by_ip = {r["properties"]["destinationAddressPrefix"]: sources(r) for r in broker.values()}
    assert by_ip == {WEB_IP: [ALICE], "192.0.2.5": [BOB]}
    assert len({r["properties"]["priority"] for r in broker.values()}) == 2


@pytest.mark.parametrize("mode", CONCURRENCY_MODES)
def test_three_processes_whose_openings_change_concurrently_end_with_the_nsg_equal_to_the_store(
    mode, make, store, process_clients, arm_admin
):
    arm_admin.set_knobs(latency_ms={"read": 2, "write": 5, "poll": 2}, lro_ms=150, concurrency=mode)
    foreign_before = foreign_bytes(arm_admin)
    tuned = {"attempts": 12, "base_delay": 0.02, "max_delay": 0.2, "sleep": napper([], cap=0.2)}
    reconcilers = [make(clients=process_clients(), **tuned) for _ in range(3)]

    def worker(w: int) -> Callable[[], None]:
        me = reconcilers[w]
        vm, ip = f"vm-{w}", f"192.0.2.{40 + w}"

        def run() -> None:
            # every process adds a source to web-01:22, and opens, changes and closes doors on its own VM
            store.open(grant(f"w{w}-shared", source=f"198.51.100.{10 + w}/32"))
            store.open(grant(f"w{w}-a", vm=vm, ip=ip, source=ALICE))
            me.reconcile(WEB_NSG, timeout=20)
            store.open(grant(f"w{w}-b", vm=vm, ip=ip, source=BOB, expires=T0 + timedelta(minutes=w)))
            store.close(f"w{w}-a")
            me.reconcile(WEB_NSG, timeout=20)
            store.open(grant(f"w{w}-c", vm=vm, ip=ip, port=3389, source=CAROL))
            if w == 0:
                store.close("w0-b")  # vm-0's port 22 rule goes
            me.reconcile(WEB_NSG, timeout=20)

        return run

    assert run_threads([worker(w) for w in range(3)], timeout=60) == []

    nsg = settled(arm_admin)
    broker = {r["name"]: r for r in nsg["properties"]["securityRules"] if is_broker_rule(r)}
    desired = nsgplan.desired_state(store(WEB_NSG), NOW)
    want = {rule_name(ip, port, r.expires_at): sorted(r.sources) for (ip, port), r in desired.rules.items()}
    assert {name: sources(rule) for name, rule in broker.items()} == want
    assert sorted(want[rule_name(WEB_IP, 22, T0)]) == sorted(f"198.51.100.{10 + w}/32" for w in range(3))
    assert len({r["properties"]["priority"] for r in broker.values()}) == len(broker)
    assert rule_key(rule_name("192.0.2.40", 22, T0)) not in {rule_key(n) for n in broker}
    assert foreign_bytes(arm_admin) == foreign_before
    arm_admin.clear_requests()
    assert not make().reconcile(WEB_NSG).wrote  # a fresh process finds nothing to do


# ---------------------------------------------------------------- trim: the sweeper's remove-only pass


def test_trim_removes_sources_nobody_holds_and_never_adds(rec, store, arm_admin):
    store.open(grant("g1"), grant("g2", source=BOB))
    rec.reconcile(WEB_NSG)
    name = rule_name(WEB_IP, 22, T0)
    priority = ours(arm_admin)[name]["properties"]["priority"]
    store.close("g2")
    store.open(grant("g3", source=CAROL))  # a desired source the rule lacks
    store.open(grant("g4", port=3389, source=BOB))  # a desired key without a rule
    arm_admin.clear_requests()

    result = rec.trim(WEB_NSG)

    assert result.wrote and result.plan.trimmed == (name,)
    assert list(ours(arm_admin)) == [name]
    assert sources(ours(arm_admin)[name]) == [ALICE]
    assert ours(arm_admin)[name]["properties"]["priority"] == priority
    assert CAROL not in json.dumps(nsg_of(arm_admin)) and rule_name(WEB_IP, 3389, T0) not in json.dumps(
        nsg_of(arm_admin)
    )
    assert len(nsg_puts(arm_admin)) == 1


def test_trim_deletes_a_rule_expired_by_name_even_when_the_store_holds_a_later_expiry(make, store, arm_admin):
    store.open(grant("g1"))
    make().reconcile(WEB_NSG)
    store.open(grant("g1", expires=T0 + timedelta(hours=1)))  # extended, not yet written
    sweeper = make(clock=lambda: T0 + timedelta(seconds=1))
    arm_admin.clear_requests()

    result = sweeper.trim(WEB_NSG)

    assert result.plan.removed == (rule_name(WEB_IP, 22, T0),)
    assert ours(arm_admin) == {}  # never a later expiry from the sweeper: the grant's own pass writes it
    assert len(nsg_puts(arm_admin)) == 1


def test_trim_deletes_a_rule_no_open_grant_holds_and_then_has_nothing_to_do(rec, store, arm_admin):
    foreign_before = foreign_bytes(arm_admin)
    store.open(grant("g1"))
    rec.reconcile(WEB_NSG)
    store.close("g1")

    assert rec.trim(WEB_NSG).wrote
    assert ours(arm_admin) == {}
    assert foreign_bytes(arm_admin) == foreign_before
    arm_admin.clear_requests()
    assert not rec.trim(WEB_NSG).wrote and nsg_puts(arm_admin) == []


# ---------------------------------------------------------------- ARM failures


def test_a_missing_nsg_is_nothing_to_do_when_nothing_is_open(rec, arm_admin):
    gone = nsg_id("gone-nsg")
    result = rec.reconcile(gone)
    assert not result.wrote and result.plan.security_rules == ()
    assert not rec.trim(gone).wrote
    assert arm_admin.count(method="PUT") == 0


def test_a_missing_nsg_is_not_found_when_something_is_open(rec, store, arm_admin):
    gone = nsg_id("gone-nsg")
    store.open(grant("g1"), nsg=gone)
    with pytest.raises(NotFound, match="gone-nsg"):
        rec.reconcile(gone)
    assert not rec.trim(gone).wrote  # the sweeper only removes: a missing NSG has nothing to remove
    assert arm_admin.count(method="PUT") == 0


@pytest.mark.parametrize(
    "fault",
    [
        {"lro_status": "Failed", "code": "InternalServerError"},
        {"lro_status": "Failed", "code": "AnotherOperationInProgress"},
        {"lro_status": "Canceled", "code": "CanceledAndSupersededDueToAnotherOperation"},
        {"status": 409, "code": "AnotherOperationInProgress"},
        {"status": 429, "code": "RetryableErrorDueToAnotherOperation", "retry_after": 2},
        {"status": 503, "code": "ServiceUnavailable"},
    ],
    ids=["lro-failed", "lro-failed-another-op", "lro-superseded", "another-op", "throttled-by-op", "5xx"],
)
def test_a_refused_or_failed_write_is_retried_by_reading_and_planning_again(
    rec, store, arm_admin, sleeps, fault
):
    arm_admin.add_fault(method="PUT", match=f"networkSecurityGroups/{WEB}", count=1, **fault)
    store.open(grant("g1"))
    arm_admin.clear_requests()

    result = rec.reconcile(WEB_NSG)

    assert result.wrote and result.plan.rule_for("g1") is not None
    assert len(nsg_puts(arm_admin)) == 2
    assert arm_admin.count(NSG_READ) == 2
    nsg = settled(arm_admin)
    assert [r["name"] for r in nsg["properties"]["securityRules"] if is_broker_rule(r)] == [
        rule_name(WEB_IP, 22, T0)
    ]
    assert len(sleeps) == 1
    if "retry_after" in fault:
        assert sleeps[0] >= fault["retry_after"]


@pytest.mark.parametrize(
    "fault",
    [{"lro_status": "Failed"}, {"status": 409, "code": "AnotherOperationInProgress"}],
    ids=["lro-failed", "another-op"],
)
def test_arm_that_keeps_refusing_ends_in_upstream_error(make, store, arm_admin, fault):
    foreign_before = foreign_bytes(arm_admin)
    rec = make(attempts=3)
    arm_admin.add_fault(method="PUT", match=f"networkSecurityGroups/{WEB}", count=10, **fault)
    store.open(grant("g1"))
    arm_admin.clear_requests()

    with pytest.raises(UpstreamError, match=r"updating NSG web-01-nsg"):
        rec.reconcile(WEB_NSG)

    assert len(nsg_puts(arm_admin)) == 3
    settled(arm_admin)
    assert ours(arm_admin) == {}
    assert foreign_bytes(arm_admin) == foreign_before


def test_a_store_failure_reaches_every_caller_and_nothing_is_written(make, arm_admin):
    def broken(_nsg_id: str) -> list[Opening]:
        raise ConnectionError("table storage is unreachable")

    rec = make(openings=broken)
    arm_admin.clear_requests()
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            rec.reconcile(WEB_NSG, timeout=10)
        except ConnectionError as err:
            errors.append(err)

    assert run_threads([caller] * 5) == []
    assert len(errors) == 5
    assert nsg_puts(arm_admin) == [] and rec.writes == 0


def test_arm_that_keeps_throttling_ends_in_upstream_throttled(make, store, arm_admin):
    rec = make(attempts=2)
    arm_admin.add_fault(
        method="PUT", match=f"networkSecurityGroups/{WEB}", count=10, status=429, code="TooManyRequests"
    )
    store.open(grant("g1"))
    with pytest.raises(UpstreamThrottled):
        rec.reconcile(WEB_NSG)


def test_a_read_only_lock_is_nsg_locked_with_a_clear_message_and_no_retry(rec, store, arm_admin):
    foreign_before = foreign_bytes(arm_admin)
    arm_admin.add_fault(
        method="PUT",
        match=f"networkSecurityGroups/{WEB}",
        count=10,
        status=409,
        code="ScopeLocked",
        message=f"The scope '{WEB_NSG}' cannot perform write operation because following scope(s) are "
        f"locked: '{WEB_NSG}'. Please remove the lock and try again.",
    )
    store.open(grant("g1"))
    arm_admin.clear_requests()

    with pytest.raises(NsgLocked) as caught:
        rec.reconcile(WEB_NSG)

    assert caught.value.status == 409 and caught.value.code == "nsg_locked"
    assert "ReadOnly lock" in caught.value.message and "web-01-nsg" in caught.value.message
    assert len(nsg_puts(arm_admin)) == 1
    assert ours(arm_admin) == {} and foreign_bytes(arm_admin) == foreign_before


def test_a_pass_longer_than_the_timeout_is_still_working_and_completes_in_the_background(
    rec, store, arm_admin
):
    arm_admin.set_knobs(lro_ms=400)
    store.open(grant("g1"))
    arm_admin.clear_requests()

    started = time.monotonic()
    with pytest.raises(StillWorking, match="web-01-nsg"):
        rec.reconcile(WEB_NSG, timeout=0.05)
    assert time.monotonic() - started < 0.3

    def has_rule(nsg: dict[str, Any]) -> bool:
        return any(is_broker_rule(r) for r in nsg["properties"]["securityRules"])

    nsg = settled(arm_admin, until=has_rule)  # the pass went on and ARM finished it
    assert [r["name"] for r in nsg["properties"]["securityRules"] if is_broker_rule(r)] == [
        rule_name(WEB_IP, 22, T0)
    ]
    later = rec.reconcile(WEB_NSG, timeout=5)  # waits for the background pass, then finds nothing to do
    assert not later.wrote and later.plan.rule_for("g1") is not None
    assert rec.writes == 1 and len(nsg_puts(arm_admin)) == 1


def test_a_write_that_outlasts_the_lro_timeout_and_then_fails_is_not_reported_as_placed(
    make, store, arm_admin
):
    arm_admin.set_knobs(lro_ms=700)
    arm_admin.add_fault(method="PUT", match=f"networkSecurityGroups/{WEB}", count=1, lro_status="Failed")
    rec = make(lro_timeout=0.1, attempts=40, max_delay=0.1)
    store.open(grant("g1"))

    result = rec.reconcile(WEB_NSG, timeout=10)

    assert result.plan.rule_for("g1") is not None
    time.sleep(0.8)  # the slow operation has failed and been rolled back by now
    settled(arm_admin)
    assert list(ours(arm_admin)) == [rule_name(WEB_IP, 22, T0)]


def test_a_pass_that_reads_another_process_running_write_does_not_take_it_for_done(
    make, store, other_clients, arm_admin
):
    """Process A gives up on its write (its operation is slow, then fails); process B, asked for the same
    grant (the API caller's retry), finds A's rules in the NSG while A's operation is still running."""
    arm_admin.set_knobs(lro_ms=700)
    arm_admin.add_fault(method="PUT", match=f"networkSecurityGroups/{WEB}", count=1, lro_status="Failed")
    gives_up = make(lro_timeout=0.1, attempts=1)
    second = make(clients=other_clients, attempts=40, max_delay=0.1)
    store.open(grant("g1"))
    with pytest.raises(UpstreamError):
        gives_up.reconcile(WEB_NSG, timeout=10)
    assert ours(arm_admin)  # A's change is in the NSG, Updating

    result = second.reconcile(WEB_NSG, timeout=10)

    assert result.plan.rule_for("g1") is not None
    time.sleep(0.8)  # A's operation has failed and been rolled back by now
    settled(arm_admin)
    assert list(ours(arm_admin)) == [rule_name(WEB_IP, 22, T0)]


# ---------------------------------------------------------------- address ambiguity


def test_two_vms_sharing_a_private_ip_behind_one_nsg_refuse_the_later_grant(rec, store, arm_admin):
    store.open(grant("g1"))
    rec.reconcile(WEB_NSG)
    store.open(grant("g2", vm="twin-01", ip=WEB_IP, source=BOB))  # another VNet's VM, same address
    arm_admin.clear_requests()

    result = rec.reconcile(WEB_NSG)

    assert isinstance(result.plan.refused.get("g2"), AddressAmbiguous)
    assert result.plan.rule_for("g2") is None and result.plan.rule_for("g1") is not None
    assert not result.wrote and nsg_puts(arm_admin) == []
    assert BOB not in json.dumps(nsg_of(arm_admin))


def test_two_vms_sharing_a_private_ip_arriving_together_open_only_the_first(rec, store, arm_admin):
    store.open(grant("g1", source=ALICE), grant("g2", vm="twin-01", ip=WEB_IP, source=BOB))

    result = rec.reconcile(WEB_NSG)

    assert set(result.plan.refused) == {"g2"}
    assert isinstance(result.plan.refused["g2"], AddressAmbiguous)
    assert [sources(r) for r in ours(arm_admin).values()] == [[ALICE]]
    assert BOB not in json.dumps(nsg_of(arm_admin))
