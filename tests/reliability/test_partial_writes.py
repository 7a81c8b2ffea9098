"""Half-done writes the fault matrix and the load test run into, each reproduced on its own, step by step.

- A broker dies between the `open` rows of a grant's NSGs: the grant is recorded and visible to one of its
  NSGs only. Asking again must finish it (DESIGN §4.4: the caller gets the existing grant, active).
- Another writer's NSG PUT that already carries a grant's source is accepted while that grant's own pass
  reads the NSG, and then its operation fails and ARM rolls it back (the `lro_failed` behaviour, or any
  operation ending Failed). The grant must not be answered active on the strength of a change that did not
  stay (DESIGN §4: active = rules written; §6: the NSG ends up equal to the store). A pass that finds the
  NSG still being updated reads it again; this keeps it so.
- A revoke whose NSG write outlasts the answer budget: the close stands and is answered, and since the
  write is still under way when the answer goes out, the answer must say so (`Closer.close`: "if the NSG
  write fails or runs long, the close stands and the answer's warnings say so").
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Callable

import httpx

from jitbroker.errors import UpstreamError
from jitbroker.model import GrantStatus
from jitbroker.store import escape_key
from lab.broker import BrokerProcess
from tests.broker.conftest import nsg_id
from tests.reliability.brokers import (
    NIC_NSG,
    SUBNET_NSG,
    BrokerLab,
    drive,
    sources_for,
    wait_for,
)
from tests.reliability.conftest import LabFactory
from tests.reliability.table_proxy import StoreRequest

IN_FLIGHT_LRO_MS = 1500  # the other writer's doomed operation: long enough for bob's whole pass
SLOW_LRO_MS = 4000  # an NSG write that outlasts a one-second answer budget
REAL_BACKOFF_S = 4.0  # this test's brokers wait out their backoff (the reconciler's own), as in Azure


def _open_row_for(lab: BrokerLab, nsg: str) -> Callable[[StoreRequest], bool]:
    """Matches the `open` row a broker writes for alice's grant in one NSG's partition."""
    partition = escape_key(nsg_id(nsg).lower())

    def match(request: StoreRequest) -> bool:
        body = request.json()
        return (
            request.method in ("PUT", "PATCH")
            and f"/{lab.prefix}open(" in request.path
            and body.get("PartitionKey") == partition
            and body.get("vm_name") == lab.alice.vm
        )

    return match


def test_a_grant_left_visible_to_one_of_its_nsgs_by_a_crash_is_finished_when_its_owner_asks_again(
    new_lab: LabFactory,
) -> None:
    lab: BrokerLab = new_lab("reject", 0)
    alice = lab.alice
    headers = {"X-Forwarded-For": alice.address, "Authorization": f"Bearer {lab.token_for(alice.name)}"}
    with (
        BrokerProcess(lab.settings_env, sweep_interval=None, log_dir=lab.log_dir) as broker,
        httpx.Client(base_url=broker.url, headers=headers, timeout=30) as client,
    ):
        # The subnet NSG's row is held; the broker dies there, and the row never reaches the store.
        lab.proxy.hold(_open_row_for(lab, SUBNET_NSG))
        caller = threading.Thread(
            target=_quietly(lambda: client.post("/api/v1/grants", json=alice.body)), daemon=True
        )
        caller.start()
        wait_for(lab.proxy.fired.is_set, "the broker to write the subnet NSG's row")
        broker.kill()
    lab.proxy.drop()
    caller.join(30)
    store = lab.direct_store()
    (first,) = store.list_for_principal(alice.principal.oid)
    assert first.status is GrantStatus.PENDING
    assert [o.grant_id for o in store.openings(nsg_id(NIC_NSG))] == [first.id]
    assert store.openings(nsg_id(SUBNET_NSG)) == []

    broker_a = lab.instance()
    again, created = broker_a.grants.request(alice.principal, ipaddress.ip_address(alice.address), alice.ask)
    again = drive(broker_a, alice, again)

    assert (again.id, created) == (first.id, False)
    assert again.status is GrantStatus.ACTIVE
    for nsg in alice.nsgs:
        assert alice.source in sources_for(lab.arm_admin.nsg(nsg), alice.private_ip, alice.port), nsg


def test_a_grant_is_not_answered_active_on_another_writers_operation_that_then_fails(
    new_lab: LabFactory,
) -> None:
    lab: BrokerLab = new_lab("reject", IN_FLIGHT_LRO_MS, nap_s=REAL_BACKOFF_S, base_delay=0.2)
    bob = lab.bob
    # A's pass over the subnet NSG carries bob's source (his rows are in the store); ARM accepts its write,
    # and the operation ends Failed and is rolled back.
    broker_a = lab.instance(attempts=1)
    lab.arm_admin.add_fault(
        method="PUT", match=f"networkSecurityGroups/{SUBNET_NSG}", count=1, lro_status="Failed"
    )

    def a_pass() -> None:
        with contextlib.suppress(UpstreamError):  # A gives up: its pass failed
            broker_a.reconciler.reconcile(nsg_id(SUBNET_NSG), timeout=30)

    a_thread = threading.Thread(target=a_pass, daemon=True)
    # Right before B's own PUT for bob: A's pass starts and ARM accepts A's write (its operation in flight,
    # bob's rule Updating); then B's PUT goes on, meets 412, reads the NSG again and decides.
    lab.race_next_put(SUBNET_NSG, lambda _nsg_id: _start_and_wait_accepted(lab, a_thread))
    broker_b = lab.instance()
    grant, _ = broker_b.grants.request(bob.principal, ipaddress.ip_address(bob.address), bob.ask)
    grant = drive(broker_b, bob, grant)
    answered = time.monotonic()
    a_thread.join(30)

    assert lab.raced and not lab.arm_admin.faults(), "A's write should have been in flight, then failed"
    assert grant.status is GrantStatus.ACTIVE
    for state in lab.history.states:
        if state.name == SUBNET_NSG and state.at > answered:
            assert bob.source in sources_for(state.nsg, bob.private_ip, bob.port), "rolled back under bob"
    assert bob.source in sources_for(lab.arm_admin.nsg(SUBNET_NSG), bob.private_ip, bob.port)


def test_a_revoke_answered_before_its_nsg_write_is_done_says_so(new_lab: LabFactory) -> None:
    lab: BrokerLab = new_lab("reject", SLOW_LRO_MS, answer_budget="1")
    alice = lab.alice
    broker = lab.instance()
    grant, _ = broker.grants.request(alice.principal, ipaddress.ip_address(alice.address), alice.ask)
    grant = drive(broker, alice, grant, within=3 * SLOW_LRO_MS / 1000)
    assert grant.status is GrantStatus.ACTIVE

    closed = broker.grants.revoke(alice.principal, grant.id)
    under_way = [nsg for nsg in alice.nsgs if _provisioning(lab, nsg) != "Succeeded"]

    assert closed.status is GrantStatus.REVOKED
    assert under_way, "the revoke's NSG write should still be under way when the answer comes"
    assert closed.warnings, f"answered revoked while {under_way} were still being written, and no warning"


def _provisioning(lab: BrokerLab, nsg: str) -> str:
    return str(lab.arm_admin.nsg(nsg)["properties"]["provisioningState"])


def _start_and_wait_accepted(lab: BrokerLab, a_thread: threading.Thread) -> None:
    before = _accepted_puts(lab)
    a_thread.start()
    wait_for(lambda: _accepted_puts(lab) > before, "ARM to accept A's write", within=20)
    time.sleep(0.05)


def _accepted_puts(lab: BrokerLab) -> int:
    return sum(
        1
        for r in lab.arm_admin.requests()
        if r["method"] == "PUT" and r["path"].lower().endswith(f"/{SUBNET_NSG}") and r["status"] in (200, 201)
    )


def _quietly(call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the broker died under it: that is the point
            call()

    return run
