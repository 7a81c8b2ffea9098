"""VNets share address ranges: a rule is about a VM's private IP, so the broker keys everything by NSG and VM.

The overlap world (lab/scenarios/overlap.json): vm-a and vm-b sit at 198.51.100.4 in two VNets with the same
range, each behind its own subnet NSG; vm-c and vm-d sit at 198.51.100.4 in two more VNets whose subnets share
one NSG, which a rule cannot tell apart. Alice works on vm-a (and vm-c), Bob on vm-b (and vm-d). After every
step each NSG must hold only the sources of grants recorded for VMs behind it.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from jitbroker.closing import Closer
from jitbroker.errors import AddressAmbiguous
from jitbroker.grants import GrantRequest, GrantService
from jitbroker.identity import Principal
from jitbroker.model import GrantStatus
from jitbroker.rules import describe, rule_name
from tests.broker.conftest import broker_rules, others, sources

pytestmark = pytest.mark.usefixtures("clean_overlap")

SUB = "00000000-0000-4000-8000-0000000000a1"
RG = "rg-jit-overlap"
TWIN_IP = "198.51.100.4"
ALICE, BOB, CAROL = "203.0.113.10/32", "203.0.113.11/32", "203.0.113.20/32"
NSG_A, NSG_B, SHARED = "subnet-a-nsg", "subnet-b-nsg", "shared-nsg"


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def held(admin: Any, nsg: str) -> set[str]:
    """Every source the broker's rules in `nsg` let in (each of those rules is about the twin address)."""
    rules = broker_rules(admin.nsg(nsg))
    for rule in rules:
        assert rule["properties"]["destinationAddressPrefix"] == TWIN_IP, rule
        assert rule["properties"]["destinationPortRange"] == "22", rule
    return set().union(*(sources(r) for r in rules)) if rules else set()


def assert_apart(admin: Any, on_a: set[str], on_b: set[str]) -> None:
    """vm-a's NSG holds exactly vm-a's grantees and vm-b's exactly vm-b's."""
    assert (held(admin, NSG_A), held(admin, NSG_B)) == (on_a, on_b)
    assert held(admin, SHARED) == set()


def grant(client: httpx.Client, vm: str, duration: str = "PT30M") -> dict[str, Any]:
    response = client.post("/api/v1/grants", json={"vm": vm, "duration": duration})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "active", body
    assert body["connect"]["private_ip"] == TWIN_IP
    return body


def rule_nsgs(body: dict[str, Any]) -> list[str]:
    return [ref["nsg_id"].rsplit("/", 1)[-1] for ref in body["nsg_rules"]]


@pytest.fixture
def network(overlap_arm: Any, identity_env: dict[str, str]) -> Iterator[Any]:
    """The overlap world's Network SDK client, as the broker's managed identity (for hand-made rules)."""
    from jitbroker.clients import AzureClients

    clients = AzureClients(
        arm_endpoint=overlap_arm.url,
        managed_identity_client_id=identity_env["AZURE_CLIENT_ID"],
        poll_interval=0.05,
    )
    yield clients.network_client(SUB)
    clients.close()


def plant(network: Any, nsg: str, *, sources: list[str], expires: datetime, priority: int, vm: str) -> str:
    """Write a broker-style rule for the twin address straight into `nsg` (as a crashed or older broker
    would have left it); returns its name."""
    from azure.mgmt.network.models import SecurityRule

    name = rule_name(TWIN_IP, 22, expires)
    fields: dict[str, Any] = {
        "description": describe(vm_name=vm, expires_at=expires, sources=sources),
        "protocol": "Tcp",
        "source_port_range": "*",
        "destination_port_range": "22",
        "source_address_prefixes": sources,
        "destination_address_prefix": TWIN_IP,
        "access": "Allow",
        "priority": priority,
        "direction": "Inbound",
    }
    rule = SecurityRule(**fields)
    network.security_rules.begin_create_or_update(RG, nsg, name, rule).result()
    return name


def principal_of(scenario: Any, name: str) -> Principal:
    user = scenario.user(name)
    return Principal(
        oid=user.oid, name=user.display_name, upn=user.upn, tenant_id="t", roles=frozenset(user.roles)
    )


# ---------------------------------------------------------------- two VMs, two NSGs, one address


def test_grants_extends_and_revokes_on_twin_addresses_stay_behind_each_vms_own_nsg(
    overlap_as_user, clean_overlap, overlap_sweep_at
) -> None:
    admin = clean_overlap
    foreign = {n: others(admin.nsg(n)) for n in (NSG_A, NSG_B, SHARED)}
    alice, bob, carol = overlap_as_user("alice"), overlap_as_user("bob"), overlap_as_user("carol")

    on_a = grant(alice, "vm-a")
    assert rule_nsgs(on_a) == [NSG_A]
    assert_apart(admin, {ALICE}, set())

    on_b = grant(bob, "vm-b")
    assert rule_nsgs(on_b) == [NSG_B]
    assert_apart(admin, {ALICE}, {BOB})

    carol_on_a = grant(carol, "vm-a", "PT20M")
    assert_apart(admin, {ALICE, CAROL}, {BOB})

    extended = alice.post(f"/api/v1/grants/{on_a['id']}/extend", json={"duration": "PT2H"})
    assert extended.status_code == 200, extended.text
    assert_apart(admin, {ALICE, CAROL}, {BOB})
    (rule_a,) = broker_rules(admin.nsg(NSG_A))
    assert rule_a["name"] == rule_name(TWIN_IP, 22, parse(extended.json()["expires_at"]))
    (rule_b,) = broker_rules(admin.nsg(NSG_B))
    assert rule_b["name"] == rule_name(TWIN_IP, 22, parse(on_b["expires_at"]))  # vm-b's rule untouched

    extended_b = bob.post(f"/api/v1/grants/{on_b['id']}/extend", json={"duration": "PT1H"})
    assert extended_b.status_code == 200, extended_b.text
    assert_apart(admin, {ALICE, CAROL}, {BOB})

    assert bob.delete(f"/api/v1/grants/{on_b['id']}").json()["status"] == "revoked"
    assert_apart(admin, {ALICE, CAROL}, set())

    again_b = grant(bob, "vm-b", "PT15M")
    assert_apart(admin, {ALICE, CAROL}, {BOB})

    assert alice.delete(f"/api/v1/grants/{on_a['id']}").json()["status"] == "revoked"
    assert_apart(admin, {CAROL}, {BOB})

    now = overlap_sweep_at(datetime.now(UTC))
    assert (now.expired, now.orphans_removed, now.orphans_trimmed, now.errors) == (0, 0, 0, [])
    assert_apart(admin, {CAROL}, {BOB})

    bob_ends = overlap_sweep_at(parse(again_b["expires_at"]) + timedelta(seconds=1))
    assert bob_ends.expired == 1 and bob_ends.errors == []
    assert_apart(admin, {CAROL}, set())

    carol_ends = overlap_sweep_at(parse(carol_on_a["expires_at"]) + timedelta(seconds=1))
    assert carol_ends.expired == 1 and carol_ends.errors == []
    assert_apart(admin, set(), set())
    assert {n: others(admin.nsg(n)) for n in foreign} == foreign  # no foreign rule touched on the way


def test_an_expiry_sweep_never_moves_the_other_vms_grantee_in(
    overlap_as_user, clean_overlap, overlap_sweep_at
) -> None:
    admin = clean_overlap
    short = grant(overlap_as_user("alice"), "vm-a", "PT10M")
    grant(overlap_as_user("bob"), "vm-b", "PT1H")
    assert_apart(admin, {ALICE}, {BOB})

    report = overlap_sweep_at(parse(short["expires_at"]) + timedelta(seconds=1))

    assert report.expired == 1 and report.errors == []
    assert broker_rules(admin.nsg(NSG_A)) == []  # vm-a's rule went with alice's grant; bob never came in
    assert_apart(admin, set(), {BOB})


def test_the_orphan_pass_over_superseded_and_expired_twin_rules_only_removes(
    overlap_as_user, clean_overlap, overlap_sweep_at, network
) -> None:
    """Hand-left broker rules for the twin address (a superseded one, an expired one, one holding both
    people) are cut down to what vm-a's own grants hold: the orphan pass keys by NSG, not by (IP, port)."""
    admin = clean_overlap
    on_a = grant(overlap_as_user("alice"), "vm-a", "PT1H")
    on_b = grant(overlap_as_user("bob"), "vm-b", "PT1H")
    now = datetime.now(UTC).replace(microsecond=0)
    superseded = plant(
        network, NSG_A, sources=[ALICE], expires=now + timedelta(minutes=5), priority=150, vm="vm-a"
    )
    expired = plant(
        network, NSG_A, sources=[ALICE], expires=now - timedelta(minutes=5), priority=151, vm="vm-a"
    )
    both = plant(
        network, NSG_A, sources=[ALICE, BOB], expires=now + timedelta(minutes=20), priority=152, vm="vm-a"
    )
    stray_b = plant(
        network, NSG_B, sources=[ALICE], expires=now + timedelta(minutes=30), priority=153, vm="vm-b"
    )

    report = overlap_sweep_at(now + timedelta(seconds=1))

    assert report.errors == [] and report.expired == 0
    names_a = {r["name"] for r in broker_rules(admin.nsg(NSG_A))}
    assert expired not in names_a
    assert stray_b not in {r["name"] for r in broker_rules(admin.nsg(NSG_B))}  # nobody's on vm-b's path
    assert {superseded, both} <= names_a
    assert_apart(admin, {ALICE}, {BOB})  # bob left vm-a's NSG, alice never entered vm-b's
    assert report.orphans_removed == 2 and report.orphans_trimmed == 1

    later = overlap_sweep_at(now + timedelta(minutes=10))  # the superseded rule's own name says it ended
    assert later.errors == [] and later.orphans_removed == 1
    assert superseded not in {r["name"] for r in broker_rules(admin.nsg(NSG_A))}
    assert_apart(admin, {ALICE}, {BOB})

    ended = overlap_sweep_at(max(parse(on_a["expires_at"]), parse(on_b["expires_at"])) + timedelta(seconds=1))
    assert ended.expired == 2 and ended.errors == []
    assert_apart(admin, set(), set())


# ---------------------------------------------------------------- two VMs, one NSG, one address


def test_a_second_vm_at_the_same_address_behind_the_same_nsg_is_refused_until_the_first_grant_ends(
    overlap_as_user, clean_overlap, overlap_store
) -> None:
    admin = clean_overlap
    alice, bob = overlap_as_user("alice"), overlap_as_user("bob")
    first = grant(alice, "vm-c")
    assert rule_nsgs(first) == [SHARED]
    assert held(admin, SHARED) == {ALICE}

    for _ in range(2):
        refused = bob.post("/api/v1/grants", json={"vm": "vm-d"})
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "address_ambiguous"
        assert "vm-c" in error["message"] and TWIN_IP in error["message"]
        assert "cannot tell" in error["message"]
        assert held(admin, SHARED) == {ALICE}  # bob's source never entered
    assert bob.get("/api/v1/grants", params={"vm": "vm-d"}).json()["grants"] == []  # nothing recorded
    assert [o.vm_name for o in overlap_store.openings(first["nsg_rules"][0]["nsg_id"])] == ["vm-c"]
    assert (held(admin, NSG_A), held(admin, NSG_B)) == (set(), set())  # the twins' NSGs saw none of it

    assert alice.delete(f"/api/v1/grants/{first['id']}").json()["status"] == "revoked"
    assert held(admin, SHARED) == set()

    second = grant(bob, "vm-d")
    (rule,) = broker_rules(admin.nsg(SHARED))
    assert sources(rule) == {BOB}
    assert "vm vm-d" in rule["properties"]["description"]

    reverse = alice.post("/api/v1/grants", json={"vm": "vm-c"})
    assert reverse.status_code == 409 and reverse.json()["error"]["code"] == "address_ambiguous"
    assert "vm-d" in reverse.json()["error"]["message"]
    assert held(admin, SHARED) == {BOB}
    assert bob.delete(f"/api/v1/grants/{second['id']}").status_code == 200


def test_a_grant_past_its_expiry_but_not_yet_swept_no_longer_holds_the_shared_address(
    overlap_as_user, clean_overlap, overlap_in_process_broker, overlap_scenario
) -> None:
    admin = clean_overlap
    first = grant(overlap_as_user("alice"), "vm-c", "PT10M")
    after = parse(first["expires_at"]) + timedelta(seconds=1)
    parts = overlap_in_process_broker(lambda: after)

    opened, created = parts.services.grants.request(
        principal_of(overlap_scenario, "bob"), ipaddress.ip_address("203.0.113.11"), GrantRequest(vm="vm-d")
    )

    assert created and opened.status is GrantStatus.ACTIVE
    assert held(admin, SHARED) == {BOB}  # alice's ended grant left with the rewrite; bob's in
    report = parts.sweeper.run()
    assert report.expired == 1 and report.errors == []
    assert held(admin, SHARED) == {BOB}


def test_concurrent_requests_for_both_vms_behind_one_nsg_open_exactly_one(
    overlap_as_user, clean_overlap, overlap_store, overlap_sweep_at
) -> None:
    admin = clean_overlap
    clients = {"vm-c": overlap_as_user("alice"), "vm-d": overlap_as_user("bob")}
    answers: dict[str, httpx.Response] = {}
    start = threading.Barrier(len(clients))

    def ask(vm: str) -> None:
        start.wait()
        answers[vm] = clients[vm].post("/api/v1/grants", json={"vm": vm})

    threads = [threading.Thread(target=ask, args=(vm,)) for vm in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = sorted(a.status_code for a in answers.values())
    assert statuses == [201, 409], {vm: a.text for vm, a in answers.items()}
    (winner,) = [vm for vm, a in answers.items() if a.status_code == 201]
    (loser,) = [a for a in answers.values() if a.status_code == 409]
    assert loser.json()["error"]["code"] == "address_ambiguous"
    expected = ALICE if winner == "vm-c" else BOB
    assert held(admin, SHARED) == {expected}
    open_now = overlap_store.list_all(status=GrantStatus.ACTIVE) + overlap_store.list_all(
        status=GrantStatus.PENDING
    )
    assert [g.vm_name for g in open_now] == [winner]

    report = overlap_sweep_at(datetime.now(UTC))
    assert report.errors == [] and report.orphans_removed == 0
    assert held(admin, SHARED) == {expected}


def test_an_active_grant_keeps_the_shared_address_against_a_request_that_raced_its_check(
    overlap_in_process_broker, overlap_scenario, clean_overlap, overlap_store
) -> None:
    """Bob asks for vm-d and passes the address check (no open grant behind the shared NSG yet); while his
    request is still recording, Alice's grant on vm-c is recorded, written and answered active. When Bob's
    grant reaches the NSG, Alice's door must stay open and Bob be refused, not the other way round."""
    admin = clean_overlap
    asked = datetime.now(UTC).replace(microsecond=0)
    parts = overlap_in_process_broker(lambda: asked + timedelta(seconds=5))

    def service(store: Any, moment: datetime) -> GrantService:
        return GrantService(
            settings=parts.services.settings,
            store=store,
            topology=parts.topology,
            reconciler=parts.reconciler,
            closer=Closer(store=parts.store, reconciler=parts.reconciler, clock=lambda: moment),
            clock=lambda: moment,
        )

    alice = principal_of(overlap_scenario, "alice")
    bob = principal_of(overlap_scenario, "bob")
    answered: list[Any] = []

    class SlowToIndex:
        """The store as Bob's request meets it: indexing his grant takes long enough for Alice's to finish."""

        def __getattr__(self, name: str) -> Any:
            return getattr(overlap_store, name)

        def open_rows(self, grant: Any) -> None:
            first, _ = service(overlap_store, asked + timedelta(seconds=5)).request(
                alice, ipaddress.ip_address("203.0.113.10"), GrantRequest(vm="vm-c")
            )
            answered.append(first)
            assert first.status is GrantStatus.ACTIVE and held(admin, SHARED) == {ALICE}
            overlap_store.open_rows(grant)

    with pytest.raises(AddressAmbiguous):
        service(SlowToIndex(), asked).request(
            bob, ipaddress.ip_address("203.0.113.11"), GrantRequest(vm="vm-d")
        )

    (first,) = answered
    assert held(admin, SHARED) == {ALICE}  # alice was told "active": her door stays, bob never comes in
    assert overlap_store.get(first.id).status is GrantStatus.ACTIVE
