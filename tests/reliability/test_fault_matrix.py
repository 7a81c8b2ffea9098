"""The reliability fault matrix: every step of the reconciler's request, revoke, expiry and approval paths x
every fault, under the ARM emulator's concurrency modes (`tests.reliability.matrix` says which cell runs
which).

Every cell has two brokers in this process, A and B, each with its own reconciler, locks and ARM clients
(two instances of one deployment), over the cell's own tables and a freshly reset ARM world whose NSG
operations take a while (`LRO_MS`), so writes on one NSG overlap and meet the cell's concurrency mode:

- request: alice asks A for SSH to `db-01` (its NIC NSG `db-01-nsg` and the subnet NSG `app-subnet-nsg`)
  while bob asks B for RDP to `win-01` (behind the same subnet NSG);
- revoke:  alice revokes through A while bob extends through B (his rule is renamed: one more PUT);
- then, faults cleared, one sweep at the current time, and the probe: whoever holds an open grant asks again
  (through A), whoever holds a closed one revokes it again;
- expiry:  two sweepers (A's and B's) at once, an hour later;
- then one healthy sweep an hour later.

Approval cells tag `db-01` `jit-approval: required` first, so alice's request (through A) waits for an
approver with no rule; then carol (`JIT.Approver`) approves it through A while bob asks B. The revoke phase
follows as above, and the sweep after it runs past the approval's use window (`JIT_APPROVAL_USE_WINDOW`, two
minutes in these cells, shorter than the grant), so a yes that never opened its door (its broker died) lapses
there. A request a failed yes left waiting stays so until the expiry phase ends it unanswered.

The fault strikes at its step (see `tests.reliability.matrix` for what "at" means per fault): request steps
are armed before the requests, revoke steps before the revokes, expiry steps before the expiry sweeps,
approval steps before carol's yes. Crash cells run alice's broker (for expiry steps, the sweeper; for approval
steps, the broker carol says yes through) as a subprocess and SIGKILL it while the step's own request is held;
B then does its part while the dead process's request lands. DESIGN §4's invariants, each checked in every
cell (none short-circuits another):

- held:       every state ARM published of a grant's NSGs, from the moment the grant was answered active until
              its revoke was sent (or the expiry phase began), holds the grant's source;
- orphans:    after the sweep that follows the lifecycle (at the current time; in approval cells, past the
              approval's use window), every broker source in every NSG belongs to an open grant recorded for
              that NSG, VM address and port; and no state ARM published before the approver's yes was sent
              holds alice's source (a rule only after a yes);
- idempotent: asking again for an open grant gets that grant (when its NSGs could see it), active, and no
              second rule; asking again while a request waits for an approver gets that request, still
              waiting; revoking a closed grant again is fine; then each open source is in each of its NSGs
              exactly once;
- priorities: no state ARM published ever had two rules on one priority and direction;
- rules:      no broker rule is left once every grant's time is up;
- stuck:      nothing lost: every grant a caller was answered with is recorded, and every grant ends revoked,
              expired, or failed with a reason; an approved grant is no longer pending once its approval's
              use window lapsed; a concurrent change of the record never makes an approval fail;
- audit:      every grant has `requested`, `approved` if an approver's yes is recorded on it, `granted` if it
              was ever active, the event of its final state, `revoked` if its owner was told so; every orphan
              the sweeps removed is audited;
- foreign:    every rule the broker did not write is byte-for-byte what it was (ignoring ARM's renewed etag).

Backoff sleeps are recorded and only napped (`tests.reliability.brokers.NAP_S`); the Retry-After check reads
the record. Requests still writing after the answer budget are answered pending and driven on by GETs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from azure.data.tables import TableServiceClient, UpdateMode

from jitbroker.model import Grant, GrantStatus
from jitbroker.nsgplan import canonical
from jitbroker.rules import is_broker_rule
from jitbroker.store import GrantStore, escape_key
from lab.arm.admin import ArmAdmin
from lab.broker import REPO_ROOT, BrokerProcess
from tests.broker.conftest import others, retag, security_rules
from tests.reliability.brokers import (
    Approver,
    BrokerLab,
    Instance,
    Person,
    Told,
    approve,
    ask,
    drive,
    extend,
    revoke,
    rule_key,
    rule_sources,
    sources_for,
    together,
    wait_for,
)
from tests.reliability.conftest import LabFactory
from tests.reliability.matrix import INVARIANTS, CellResult, Fault, Matrix, Path, Step, modes_for
from tests.reliability.table_proxy import StoreRequest

if TYPE_CHECKING:
    from lab.arm import ArmEmulator
    from lab.scenario import Scenario

SWEEP_AFTER = timedelta(hours=1)  # past every grant's expiry (extensions included) and the pending grace
USE_WINDOW = "PT2M"  # JIT_APPROVAL_USE_WINDOW of the cells: shorter than a grant, so a lapse is no expiry
LAPSE_MARGIN = timedelta(seconds=30)  # how far past an approval's use window the lapse sweep runs
ARM_ATTEMPTS = 8  # NsgReconciler's attempts per pass: a fault that fires this often outlasts them
TABLE_ATTEMPTS = 4  # azure-core's first try + 3 retries on a status
RETRY_AFTER_S = 1
HUNG_MS = 1200  # longer than the brokers' ARM read timeout, so they give up on the call
CRASH_HOLD_MS = 700  # how long the emulator holds the request a crash cell kills the process in
LRO_MS = 60  # how long each NSG write's operation runs: long enough for writes to overlap
WAIT_S = 90.0
CONFLICT_STATUSES = frozenset({409, 412, 429})


# Reported product bugs, each cell marked xfail (strict) until it is fixed; take its line out with the fix.
KNOWN_BUGS: dict[tuple[Step, Fault], str] = {}  # every reported bug is fixed; list one here with its report


def _cell(step: Step, fault: Fault, mode: str) -> Any:
    bug = KNOWN_BUGS.get((step, fault))
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(step, fault, mode, id=f"{step.name.lower()}-{fault.name.lower()}-{mode}", marks=marks)


CELLS = [_cell(step, fault, mode) for step in Step for fault in Fault for mode in modes_for(step, fault)]


# ---------------------------------------------------------------------------------------------- the cell


class CellLab(BrokerLab):
    """The broker lab of one (step x fault x mode) cell."""

    def __init__(self, *, step: Step, fault: Fault, mode: str, **lab: Any) -> None:
        super().__init__(**lab)
        self.step, self.fault, self.mode = step, fault, mode
        self.fired = False

    @property
    def expiry_moment(self) -> datetime:
        """When every grant of the cell has run out, and every request still waiting for an approver (one
        made as late as the probe) has waited its time."""
        return self.started + SWEEP_AFTER + self.settings.approval_wait

    def lapse_moment(self) -> datetime:
        """A moment past the use window of any approval given so far: a yes that has not opened its door by
        then lapses (the sweeper fails the grant), and no grant of the cell has expired yet."""
        return datetime.now(UTC) + self.settings.approval_use_window + LAPSE_MARGIN


@pytest.fixture
def cell_lab(
    request: pytest.FixtureRequest, new_lab: LabFactory, arm: ArmEmulator, scenario: Scenario
) -> Iterator[CellLab]:
    """A fresh cell: reset ARM world in the cell's concurrency mode, new tables, nothing armed; in approval
    cells, `db-01` wants an approver."""
    step, fault, mode = (request.node.callspec.params[k] for k in ("step", "fault", "mode"))
    settings = {"JIT_APPROVAL_USE_WINDOW": USE_WINDOW}
    lab: CellLab = new_lab(mode, LRO_MS, kind=CellLab, settings=settings, step=step, fault=fault, mode=mode)
    if step.path is Path.APPROVAL:
        want_approval(arm, scenario, lab.alice.vm)
    yield lab
    lab.cancel_race()


def want_approval(arm: ArmEmulator, scenario: Scenario, vm: str) -> None:
    """Tag `vm` `jit-approval: required` in the running emulator, keeping the tags that opt it in, as its
    owner would in the portal (the `arm_admin` fixture restores the scenario's world after the cell)."""
    tags = dict(scenario.azure.vm(vm).vm.tags)
    retag(arm, vm, {**tags, "jit-approval": "required"})


# ---------------------------------------------------------------------------------------------- arming


def _nsg_path(nsg: str) -> str:
    return f"networkSecurityGroups/{nsg}"


def _store_step(lab: CellLab) -> Callable[[StoreRequest], bool]:
    """Matches alice's store write of the cell's step: the record's insert or status change (for the
    approval, the move to `pending` that names who decided), or her first `open` row."""
    grants = f"/{lab.prefix}grants"
    open_rows = f"/{lab.prefix}open("
    step = lab.step
    status = step.record_status

    def match(request: StoreRequest) -> bool:
        path = request.path.split("?", 1)[0]
        body = request.json()
        if body.get("vm_name") != lab.alice.vm:
            return False
        if step is Step.OPEN_ROWS:
            return request.method in ("PUT", "PATCH") and open_rows in path
        if step.inserts:
            return request.method == "POST" and path.endswith(grants)
        changes = request.method == "PUT" and f"{grants}(" in path and body.get("status") == status
        return changes and (step.path is not Path.APPROVAL or _decided_by(body) is not None)

    return match


def _decided_by(record: dict[str, Any]) -> str | None:
    """Who answered the request, as a grant record's `approval` column says (None: nobody yet)."""
    try:
        approval = json.loads(str(record.get("approval") or "{}"))
    except ValueError:
        return None
    return approval.get("decided_by") if isinstance(approval, dict) else None


ARM_SPECS: dict[Fault, dict[str, Any]] = {
    Fault.ARM_500: {"status": 500, "code": "InternalServerError"},
    Fault.ARM_429: {"status": 429, "code": "SubscriptionRequestsThrottled", "retry_after": RETRY_AFTER_S},
    Fault.ARM_BUSY: {"status": 409, "code": "AnotherOperationInProgress"},
    Fault.LRO_FAILED: {"lro_status": "Failed", "code": "InternalServerError"},
    Fault.ARM_HUNG: {"hang_ms": HUNG_MS},
}


def _arm_count(fault: Fault) -> int:
    """Enough firings to outlast the reconciler's retries of one pass (a hang needs one)."""
    return 1 if fault is Fault.ARM_HUNG else ARM_ATTEMPTS


def _touch(lab: CellLab) -> Callable[[StoreRequest], None]:
    """A concurrent writer: changes alice's grant record, so the broker's etag for it goes stale."""
    service = TableServiceClient.from_connection_string(lab.azurite.connection_string)
    table = service.get_table_client(f"{lab.prefix}grants")

    def touch(request: StoreRequest) -> None:
        body = request.json()
        grant_id = str(body.get("grant_id") or body.get("id"))
        entity = {"PartitionKey": escape_key(grant_id), "RowKey": "grant", "touched": "elsewhere"}
        table.update_entity(entity, mode=UpdateMode.MERGE)

    return touch


def _holds(who: Person) -> Callable[[dict[str, Any]], bool]:
    return lambda nsg: who.source in sources_for(nsg, who.private_ip, who.port)


def _lacks(who: Person) -> Callable[[dict[str, Any]], bool]:
    return lambda nsg: who.source not in sources_for(nsg, who.private_ip, who.port)


def arm_the_fault(lab: CellLab) -> None:
    """Set the fault up so that it strikes at the cell's step (crashes are armed by the crash runners)."""
    step, fault = lab.step, lab.fault
    nsg = step.nsg
    if nsg is not None:  # an NSG PUT
        if fault is Fault.TABLE:
            changed = _holds(lab.alice) if step.opens else _lacks(lab.alice)
            lab.nsg_changes.arm(nsg, changed, lambda: lab.proxy.fail_next(TABLE_ATTEMPTS))
        elif fault is Fault.STALE_412:
            lab.race_next_put(nsg)
        else:
            lab.arm_admin.add_fault(
                method="PUT", match=_nsg_path(nsg), count=_arm_count(fault), **ARM_SPECS[fault]
            )
        return
    match = _store_step(lab)
    if fault is Fault.TABLE:
        lab.proxy.outage(match, TABLE_ATTEMPTS)
    elif fault is Fault.STALE_412:
        (lab.proxy.after if step.inserts else lab.proxy.before)(match, _touch(lab))
    else:
        spec = ARM_SPECS[fault]
        method = "PUT" if fault is Fault.LRO_FAILED else "*"

        def strike_arm(_: StoreRequest) -> None:
            lab.fault_admin.add_fault(
                method=method, match="networkSecurityGroups", count=_arm_count(fault), **spec
            )

        lab.proxy.before(match, strike_arm)


def settle_the_fault(lab: CellLab) -> None:
    """Note whether the fault struck, wait for a held or hung request to land, then clear every fault."""
    fault, step = lab.fault, lab.step
    if fault is Fault.CRASH:
        fired = True
    elif fault is Fault.TABLE or (fault is Fault.STALE_412 and step.nsg is None):
        fired = lab.proxy.fired.is_set()
    elif fault is Fault.STALE_412:
        fired = lab.raced
    else:
        untouched = any(f["count"] == _arm_count(fault) for f in lab.arm_admin.faults())
        fired = not untouched and (step.nsg is not None or lab.proxy.fired.is_set())
    lab.fired = lab.fired or fired
    if fired and (fault is Fault.ARM_HUNG or (fault is Fault.CRASH and step.nsg is not None)):
        hold = HUNG_MS if fault is Fault.ARM_HUNG else CRASH_HOLD_MS
        method = "PUT" if step.nsg is not None else None
        _wait_for_ghost(lab, method, _nsg_path(step.nsg) if step.nsg else "networkSecurityGroups", hold)
    lab.arm_admin.clear_faults()
    lab.proxy.reset()
    lab.nsg_changes.reset()
    lab.cancel_race()


def _wait_for_ghost(lab: CellLab, method: str | None, match: str, hang_ms: int) -> None:
    """Wait until the emulator finished a request it held (it lands after its caller gave up or died)."""

    def landed() -> bool:
        return any(
            (method is None or r["method"] == method)
            and match.lower() in r["path"].lower()
            and r["duration_ms"] >= hang_ms
            for r in lab.arm_admin.requests()
        )

    wait_for(landed, f"the held {method or 'request'} on {match} to land")


# ---------------------------------------------------------------------------------------------- running


def run_lifecycle(lab: CellLab, told: Told) -> Instance:
    """Requests (in approval cells: alice's request, then carol's yes while bob asks), then revokes and
    extensions (or the crash cell's version of them), with the fault armed at its step; returns broker A."""
    a, b = lab.instance(), lab.instance()
    step, fault = lab.step, lab.fault
    if step.path is Path.APPROVAL:
        run_approval(lab, told, a, b)
    elif step.path is Path.REQUEST and fault is Fault.CRASH:
        crash_in_request(lab, told, b)
    else:
        if step.path is Path.REQUEST:
            arm_the_fault(lab)
        together(ask(a, lab.alice, told), ask(b, lab.bob, told))
    if step.path is Path.REVOKE and fault is Fault.CRASH:
        crash_in_revoke(lab, told, b)
    elif step.path is not Path.EXPIRY:
        if step.path is Path.REVOKE:
            arm_the_fault(lab)
        together(revoke(a, lab.alice, told), extend(b, lab.bob, told))
    if step.path is not Path.EXPIRY:
        settle_the_fault(lab)
    return a


def run_approval(lab: CellLab, told: Told, a: Instance, b: Instance) -> None:
    """Alice's request waits for an approver (through A, nothing armed); then, with the fault armed, carol
    approves it through A while bob asks B (or the crash cell's version of that)."""
    ask(a, lab.alice, told)()
    if told.ids.get(lab.alice.name) is None:
        return  # refused before it was recorded: the cell's checks say whether that was right
    if lab.fault is Fault.CRASH:
        crash_in_approval(lab, told, b)
        return
    arm_the_fault(lab)
    together(approve(a, lab.carol, lab.alice, told), ask(b, lab.bob, told))


def run_expiry(lab: CellLab, told: Told) -> None:
    """The expiry phase: two sweepers at once an hour later, with the fault armed at its step."""
    told.final_at = time.monotonic()
    if lab.step.path is not Path.EXPIRY:
        return
    a, b = (lab.instance(lambda: lab.expiry_moment) for _ in range(2))
    if lab.fault is Fault.CRASH:
        crash_in_sweep(lab, told, b)
    else:
        arm_the_fault(lab)
        together(lambda: _sweep_quietly(lab, a), lambda: _sweep_quietly(lab, b))
    settle_the_fault(lab)


def _sweep_quietly(lab: CellLab, broker: Instance) -> None:
    with contextlib.suppress(Exception):  # a sweep that fails leaves its work to the next one
        lab.sweep(instance=broker)


# ---------------------------------------------------------------------------------------------- crashes


def _hold_step(lab: CellLab) -> Callable[[], bool]:
    """Arrange for the step's own request to be held; returns "is the process there now?"."""
    nsg = lab.step.nsg
    if nsg is not None:
        lab.arm_admin.add_fault(method="PUT", match=_nsg_path(nsg), count=1, hang_ms=CRASH_HOLD_MS)
        return lambda: not lab.arm_admin.faults()
    lab.proxy.hold(_store_step(lab))
    return lab.proxy.fired.is_set


def _http(lab: CellLab, broker: BrokerProcess, who: Person | Approver) -> httpx.Client:
    headers = {"X-Forwarded-For": who.address, "Authorization": f"Bearer {lab.token_for(who.name)}"}
    return httpx.Client(base_url=broker.url, headers=headers, timeout=WAIT_S)


def crash_in_request(lab: CellLab, told: Told, b: Instance) -> None:
    """Alice asks a broker process, which is killed at the step; then bob asks B while the dead broker's
    request lands."""
    with (
        BrokerProcess(lab.settings_env, sweep_interval=None, log_dir=lab.log_dir) as broker,
        _http(lab, broker, lab.alice) as client,
    ):
        at_step = _hold_step(lab)
        caller = threading.Thread(
            target=_quietly(lambda: client.post("/api/v1/grants", json=lab.alice.body)), daemon=True
        )
        caller.start()
        wait_for(at_step, f"the broker to reach {lab.step.value}")
        broker.kill()
    told.note(f"killed at {lab.step.value}")
    lab.proxy.release()
    ask(b, lab.bob, told)()
    caller.join(WAIT_S)


def crash_in_approval(lab: CellLab, told: Told, b: Instance) -> None:
    """Carol's yes to alice's waiting request goes to a broker process (`POST .../approve`), which is killed
    at the step; then bob asks B while the dead broker's request lands. Nobody polls alice's grant after
    that: the sweeper has to finish what the yes started."""
    grant_id = told.ids[lab.alice.name]
    with (
        BrokerProcess(lab.settings_env, sweep_interval=None, log_dir=lab.log_dir) as broker,
        _http(lab, broker, lab.carol) as client,
    ):
        at_step = _hold_step(lab)
        told.yes_at = time.monotonic()
        approving = f"/api/v1/grants/{grant_id}/approve"
        caller = threading.Thread(
            target=_quietly(lambda: client.post(approving, json={"reason": "fault matrix"})), daemon=True
        )
        caller.start()
        wait_for(at_step, f"the broker to reach {lab.step.value}")
        broker.kill()
    told.note(f"killed at {lab.step.value}")
    lab.proxy.release()
    ask(b, lab.bob, told)()
    caller.join(WAIT_S)


def crash_in_revoke(lab: CellLab, told: Told, b: Instance) -> None:
    """Alice (through a broker process) and bob (through B) are granted; alice's revoke is killed at the
    step; then bob extends through B while the dead broker's request lands."""
    with (
        BrokerProcess(lab.settings_env, sweep_interval=None, log_dir=lab.log_dir) as broker,
        _http(lab, broker, lab.alice) as client,
    ):
        together(lambda: _http_grant(client, lab.alice, told), ask(b, lab.bob, told))
        grant_id = told.ids.get(lab.alice.name)
        assert grant_id is not None and lab.alice.name in told.active_at, told.notes
        at_step = _hold_step(lab)
        told.closing_at[lab.alice.name] = time.monotonic()
        caller = threading.Thread(
            target=_quietly(lambda: client.delete(f"/api/v1/grants/{grant_id}")), daemon=True
        )
        caller.start()
        wait_for(at_step, f"the broker to reach {lab.step.value}")
        broker.kill()
    told.note(f"killed at {lab.step.value}")
    lab.proxy.release()
    extend(b, lab.bob, told)()
    caller.join(WAIT_S)


def crash_in_sweep(lab: CellLab, told: Told, b: Instance) -> None:
    """A sweeper process an hour later is killed at the step; then B's sweeper runs while its request
    lands."""
    at_step = _hold_step(lab)
    env = {**os.environ, **lab.settings_env, "PYTHONUNBUFFERED": "1"}
    with (lab.log_dir / "sweeper.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.sweep_once", lab.expiry_moment.isoformat()],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: at_step() or process.poll() is not None, f"the sweeper to reach {lab.step.value}")
        assert process.poll() is None, "the sweeper ended before it reached the step"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    told.note(f"sweeper killed at {lab.step.value}")
    lab.proxy.release()
    _sweep_quietly(lab, b)


def _http_grant(client: httpx.Client, who: Person, told: Told) -> None:
    answer = client.post("/api/v1/grants", json=who.body)
    assert answer.status_code in (200, 201, 202), answer.text
    body = answer.json()
    deadline = time.monotonic() + WAIT_S
    while body["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
        body = client.get(answer.headers.get("Location") or f"/api/v1/grants/{body['id']}").json()
    told.answered(who, body["id"], body["status"])
    told.note(f"{who.name} {body['status']}")


def _quietly(call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the broker died under it: that is the point
            call()

    return run


# ---------------------------------------------------------------------------------------------- the probe


def probe(lab: CellLab, a: Instance) -> str:
    """Idempotence (DESIGN §4.4, issue 13): whoever holds an open grant asks again through A, whoever has a
    request waiting for an approver asks again too, whoever holds a closed one revokes it again; then each
    open source is in each of its NSGs exactly once."""
    store = lab.direct_store()
    problems: list[str] = []
    for who in lab.people:
        mine = [g for g in store.list_for_principal(who.principal.oid) if g.vm_name == who.vm]
        first = next((g for g in mine if g.status.is_open), None)
        if first is not None:
            problems.extend(_ask_again_while_open(a, who, first, store))
        waiting = next((g for g in mine if g.status is GrantStatus.AWAITING_APPROVAL), None)
        if waiting is not None:
            problems.extend(_ask_again_while_waiting(a, who, waiting))
        for closed in (g for g in mine if not g.status.is_live):
            try:
                after = a.grants.revoke(who.principal, closed.id)
            except Exception as err:
                problems.append(f"{who.name} revoking {closed.id[:8]} again: {type(err).__name__}")
                continue
            if after.status is not closed.status:
                problems.append(f"{who.name} revoking again moved {closed.id[:8]} to {after.status}")
    nsgs = {nsg["name"].lower(): nsg for nsg in lab.arm_admin.nsgs()}
    for grant in store.list_all():
        if not grant.status.is_open:
            continue
        for nsg_id in grant.nsg_ids:
            name = nsg_id.rsplit("/", 1)[-1].lower()
            held = [
                source
                for rule in security_rules(nsgs[name])
                if is_broker_rule(rule) and rule_key(rule) == (grant.private_ip, grant.port)
                for source in rule_sources(rule)
                if source == canonical(grant.source)
            ]
            if len(held) != 1:
                problems.append(f"{grant.id[:8]} ({grant.status}) is {len(held)} times in {name}")
    return "; ".join(problems)


def _ask_again_while_open(a: Instance, who: Person, first: Grant, store: GrantStore) -> list[str]:
    """Asking again for an open grant its NSGs can see gets that grant, active. One they cannot see (its
    broker died before its rows) may give a new grant: active, or on a VM that wants approval, a new request
    waiting for an approver (an approval opens one door, once)."""
    visible = any(o.grant_id == first.id for nsg in first.nsg_ids for o in store.openings(nsg))
    try:
        again, created = a.grants.request(who.principal, ipaddress.ip_address(who.address), who.ask)
        again = drive(a, who, again)
    except Exception as err:
        return [f"{who.name} asking again: {type(err).__name__}: {err}"]
    problems: list[str] = []
    if visible and (created or again.id != first.id):
        problems.append(f"{who.name} asking again got {again.id[:8]}, not {first.id[:8]}")
    new_request = created and first.approval_required
    wanted = GrantStatus.AWAITING_APPROVAL if new_request else GrantStatus.ACTIVE
    if again.status is not wanted:
        problems.append(f"{who.name} asking again: {again.status}")
    return problems


def _ask_again_while_waiting(a: Instance, who: Person, waiting: Grant) -> list[str]:
    """Asking again while a request waits for an approver gets that request, still waiting (no duplicate)."""
    try:
        again, created = a.grants.request(who.principal, ipaddress.ip_address(who.address), who.ask)
    except Exception as err:
        return [f"{who.name} asking again while waiting: {type(err).__name__}: {err}"]
    if created or again.id != waiting.id:
        return [f"{who.name} asking again while {waiting.id[:8]} waits got {again.id[:8]}"]
    if again.status is not GrantStatus.AWAITING_APPROVAL:
        return [f"{who.name} asking again while waiting: {again.status}"]
    return []


# ---------------------------------------------------------------------------------------------- checks


def check_held(lab: CellLab, told: Told) -> str:
    """Every published state of a grant's NSGs holds its source while the grant is active."""
    problems: list[str] = []
    for who in lab.people:
        start = told.active_at.get(who.name)
        if start is None:
            continue
        end = told.closing_at.get(who.name, told.final_at)
        problems.extend(
            f"{who.name} missing from {state.name} {state.at - start:.2f}s after active"
            for state in lab.history.states
            if start < state.at < end
            and state.name in who.nsgs
            and who.source not in sources_for(state.nsg, who.private_ip, who.port)
        )
    return "; ".join(problems[:4])


def check_orphans(lab: CellLab) -> str:
    """After a sweep, every broker source in every NSG belongs to an open grant recorded for that NSG."""
    now = datetime.now(lab.started.tzinfo)
    held = {
        (nsg_id.rsplit("/", 1)[-1].lower(), g.private_ip, g.port, canonical(g.source))
        for g in lab.direct_store().list_all()
        if g.status.is_open and g.expires_at > now
        for nsg_id in g.nsg_ids
    }
    orphans = [
        f"{source} in {nsg['name']}/{rule['name']}"
        for nsg in lab.arm_admin.nsgs()
        for rule in security_rules(nsg)
        if is_broker_rule(rule)
        for source in rule_sources(rule)
        if (nsg["name"].lower(), *rule_key(rule), source) not in held
    ]
    return "; ".join(orphans)


def check_no_rule_before_yes(lab: CellLab, told: Told) -> str:
    """In approval cells, no state ARM published before carol's yes went out holds alice's source: a request
    that waits for an approver opens nothing."""
    if lab.step.path is not Path.APPROVAL:
        return ""
    alice = lab.alice
    early = [
        f"alice in {state.name} before the yes"
        for state in lab.history.states
        if state.at < told.yes_at
        and state.name in alice.nsgs
        and alice.source in sources_for(state.nsg, alice.private_ip, alice.port)
    ]
    return "; ".join(early[:2])


def check_lapsed(lab: CellLab, told: Told) -> str:
    """After the sweep past the approval's use window, alice's approved grant is no longer pending: it
    opened (active, or closed since), or the sweeper failed it (the approval lapsed)."""
    grant_id = told.ids.get(lab.alice.name)
    if grant_id is None:
        return ""
    grant = lab.direct_store().get(grant_id)
    if grant.status is GrantStatus.PENDING:
        return f"alice's approved {grant_id[:8]} still pending past its approval's use window"
    return ""


def check_approval_kept(lab: CellLab, told: Told) -> str:
    """A concurrent change of the waiting request's record (412 on its etag) must not fail the approval: the
    broker reads the request again and approves it."""
    if lab.step is not Step.APPROVAL_RECORDED or lab.fault is not Fault.STALE_412:
        return ""
    return "; ".join(f"the yes was refused: {why}" for why in told.approval_refusals)


def _join(*whys: str) -> str:
    return "; ".join(why for why in whys if why)


def check_priorities(lab: CellLab) -> str:
    """No published state had two rules on one (direction, priority)."""
    for state in lab.history.states:
        rules = security_rules(state.nsg)
        seen = Counter((r["properties"]["direction"], r["properties"]["priority"]) for r in rules)
        shared = [key for key, n in seen.items() if n > 1]
        if shared:
            return f"{state.name}: {shared}"
    return ""


def foreign_rules(admin: ArmAdmin) -> dict[str, list[dict[str, Any]]]:
    """Every rule the broker did not write, per NSG, without ARM's renewed etags."""
    return {nsg["id"].lower(): others(nsg) for nsg in admin.nsgs()}


def check_final(
    lab: CellLab, told: Told, before: dict[str, list[dict[str, Any]]], result: CellResult, *, lapsed: str
) -> None:
    """The invariants read once every grant's time is up and the last sweep ran (`lapsed`: what the lapse
    sweep of an approval cell left pending)."""
    nsgs = lab.arm_admin.nsgs()
    left = [f"{nsg['name']}/{r['name']}" for nsg in nsgs for r in security_rules(nsg) if is_broker_rule(r)]
    result.checks["rules"] = f"left: {', '.join(left)}" if left else ""

    store = lab.direct_store()
    grants = store.list_all()
    stuck = [
        f"{g.id[:8]} {g.status}"
        for g in grants
        if g.status.is_live or (g.status is GrantStatus.FAILED and not g.reason)
    ]
    recorded = {g.id for g in grants}
    stuck.extend(f"{who}'s {gid[:8]} lost" for who, gid in told.ids.items() if gid not in recorded)
    result.checks["stuck"] = _join(*stuck, lapsed, check_approval_kept(lab, told))

    told_active = {told.ids[who] for who in told.active_at if who in told.ids}
    missing: list[str] = []
    for grant in grants:
        kinds = {e.kind for e in store.audit_events(grant.id)}
        wanted = {"requested", str(grant.status)}
        if grant.decided_at is not None and grant.status is not GrantStatus.DENIED:
            wanted.add("approved")
        if grant.nsg_rules or grant.id in told_active:
            wanted.add("granted")
        if grant.id in told.revoked:
            wanted.add("revoked")
        wanted -= {"pending", "active"}
        missing.extend(f"{grant.id[:8]}: {kind}" for kind in sorted(wanted - kinds))
    orphans = sum(r.orphans_removed + r.orphans_trimmed for r in lab.reports)
    audited = sum(1 for e in store.audit_events(limit=10_000) if e.kind == "orphan_removed")
    if audited < orphans:
        missing.append(f"orphan_removed: {audited} of {orphans}")
    result.checks["audit"] = "; ".join(missing)

    after = foreign_rules(lab.arm_admin)
    changed = sorted(nsg for nsg in before if before[nsg] != after.get(nsg))
    result.checks["foreign"] = (
        f"changed in {', '.join(n.rsplit('/', 1)[-1] for n in changed)}" if changed else ""
    )
    result.checks["priorities"] = check_priorities(lab)
    result.checks["held"] = check_held(lab, told)
    result.conflicts = sum(
        1
        for r in lab.arm_admin.requests()
        if r["method"] == "PUT"
        and "networksecuritygroups/" in r["path"].lower()
        and r["status"] in CONFLICT_STATUSES
    )


# ---------------------------------------------------------------------------------------------- the cells


@pytest.mark.parametrize(("step", "fault", "mode"), CELLS)
def test_fault_at_step_loses_nothing_leaves_no_door_open_and_changes_no_foreign_rule(
    step: Step, fault: Fault, mode: str, cell_lab: CellLab, matrix: Matrix
) -> None:
    lab = cell_lab
    result = CellResult(step, fault, mode, known_bug=KNOWN_BUGS.get((step, fault), ""))
    before = foreign_rules(lab.arm_admin)
    told = Told()

    a = run_lifecycle(lab, told)
    lapsed = ""
    if step.path is Path.APPROVAL:
        lab.sweep(lab.lapse_moment())
        lapsed = check_lapsed(lab, told)
    else:
        lab.sweep(instance=a)
    result.checks["orphans"] = _join(check_orphans(lab), check_no_rule_before_yes(lab, told))
    result.checks["idempotent"] = probe(lab, a)
    run_expiry(lab, told)
    lab.sweep(lab.expiry_moment)

    result.fired = lab.fired
    result.outcome = ", ".join(told.notes)
    check_final(lab, told, before, result, lapsed=lapsed)
    matrix.add(result)

    failures = {name: why for name, why in result.checks.items() if why}
    assert set(result.checks) == set(INVARIANTS)
    assert not failures, f"{step.value} x {fault.value} x {mode}: {failures}"
    assert lab.fired, f"{step.value} x {fault.value} x {mode}: the fault never struck"
    if fault is Fault.ARM_429:
        assert max(lab.sleeps, default=0) >= RETRY_AFTER_S, "the broker did not honour Retry-After"
