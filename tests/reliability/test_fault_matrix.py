"""The reliability fault matrix (issue 7): every step boundary of the grant and revoke paths x every fault.

Each cell asks alice for SSH to `db-01` (a NIC NSG and a subnet NSG, so two NSG writes each way) for ten
minutes, revokes the grant if it became active, lets the fault strike at its boundary (see
`tests.reliability.matrix` for what "at" means per fault), then runs the sweeper fifteen minutes later with
ARM and Table Storage healthy, and checks DESIGN §4's invariants:

- rules:   no broker rule is left in any NSG (every grant's time is up);
- stuck:   every grant is revoked, expired, or failed with a reason;
- audit:   every grant has `requested`, `granted` if it ever became active, the event of its final state,
           `revoked` if its owner was told it was revoked; every orphan the sweep removed is audited;
- foreign: every rule the broker did not write is byte-for-byte what it was (ignoring ARM's renewed etag).

Non-crash cells drive the real lifecycle service in this process against the ARM emulator and, through a
fault-injecting proxy, Azurite; their backoff sleeps are recorded instead of slept (the Retry-After check
reads them). Crash cells run the broker as a uvicorn subprocess and SIGKILL it mid-step. Each cell has its own
tables and a freshly reset ARM world. The matrix and its counts are printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.data.tables import TableServiceClient, UpdateMode

from jitbroker.clients import AzureClients
from jitbroker.config import Settings
from jitbroker.grants import GrantRequest, GrantService
from jitbroker.identity import Principal
from jitbroker.model import Grant, GrantStatus
from jitbroker.network import NsgWriter
from jitbroker.runtime import build
from jitbroker.store import GrantStore
from jitbroker.sweeper import Sweeper, SweepReport
from lab.arm.admin import ArmAdmin
from lab.azurite import Azurite
from lab.broker import BrokerProcess
from lab.scenario import Scenario
from tests.broker.conftest import RG, SUB, broker_rules, others
from tests.reliability.conftest import NsgChangeTrigger
from tests.reliability.matrix import INVARIANTS, Boundary, CellResult, Fault, Matrix
from tests.reliability.table_proxy import StoreRequest, TableProxy

VM = "db-01"
WHERE = {"resource_group": RG, "subscription": SUB}  # names the VM's scope: no listing of every VM
PORT = 22
DURATION = timedelta(minutes=10)
SWEEP_AFTER = timedelta(minutes=15)  # past the grant's expiry and the pending grace (2 min)
ARM_ATTEMPTS = 6  # NsgWriter's attempts per ARM operation: a fault that fires this often outlasts them
TABLE_ATTEMPTS = 4  # azure-core's first try + 3 retries on a status
RETRY_AFTER_S = 1
HUNG_MS = 2000  # longer than the cells' ARM read timeout, so the broker gives up on the call
READ_TIMEOUT_S = 1.0
CRASH_HOLD_MS = 3000  # how long the emulator holds the request a crash cell kills the broker in
WAIT_S = 90.0  # generous bound on waits that poll for a condition

CELLS = [pytest.param(b, f, id=f"{b.name.lower()}-{f.name.lower()}") for b in Boundary for f in Fault]


# ---------------------------------------------------------------------------------------------- the lab


@dataclass
class CellLab:
    """Everything one cell touches: its own tables, the reset ARM world, the proxy and the NSG trigger."""

    prefix: str
    settings_env: dict[str, str]
    arm_admin: ArmAdmin
    fault_admin: ArmAdmin  # a second client, used from the proxy's and emulator's threads
    proxy: TableProxy
    nsg_changes: NsgChangeTrigger
    azurite: Azurite
    scenario: Scenario
    log_dir: Path
    token: str
    sleeps: list[float] = field(default_factory=list)
    reports: list[SweepReport] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        """The broker's settings for this cell (tables behind the proxy)."""
        return Settings.from_env(self.settings_env)

    def direct_store(self) -> GrantStore:
        """The cell's store straight on Azurite, for the checks (never through the proxy)."""
        service = TableServiceClient.from_connection_string(self.azurite.connection_string)
        return GrantStore(service, prefix=self.prefix, clock=lambda: datetime.now(UTC))

    def lifecycle(self, clock: Callable[[], datetime]) -> tuple[GrantService, Sweeper]:
        """The broker's lifecycle service and sweeper in this process: the real parts from `build`, with a
        writer whose ARM read timeout is short (hung calls) and whose backoff sleeps are only recorded."""
        settings = self.settings
        parts = build(settings, clock=clock)
        clients = AzureClients.from_settings(settings, read_timeout=READ_TIMEOUT_S)
        writer = NsgWriter(
            clients,
            clock=clock,
            priority_band=(settings.priority_min, settings.priority_max),
            lro_timeout=settings.arm_timeout_seconds,
            poll_interval=settings.arm_poll_seconds,
            sleep=self.sleeps.append,
            topology=parts.topology,
        )
        grants = GrantService(
            settings=settings, store=parts.store, topology=parts.topology, writer=writer, clock=clock
        )
        sweeper = Sweeper(
            grants=grants,
            store=parts.store,
            writer=writer,
            clock=clock,
            batch=settings.sweep_batch,
            pending_grace=settings.pending_grace,
        )
        return grants, sweeper


@pytest.fixture
def cell_lab(
    *,
    api_broker_env: dict[str, str],
    identity_env: dict[str, str],
    arm_admin: ArmAdmin,
    lab_ca: Any,
    table_proxy: TableProxy,
    nsg_changes: NsgChangeTrigger,
    azurite: Azurite,
    scenario: Scenario,
    token_for: Callable[..., str],
    tmp_path: Path,
) -> Iterator[CellLab]:
    """A fresh cell: reset ARM world, new tables, no trigger armed."""
    prefix = f"rel{uuid.uuid4().hex[:10]}"
    env = {
        **api_broker_env,
        "JIT_TABLE_PREFIX": prefix,
        "JIT_TABLE_CONNECTION_STRING": table_proxy.connection_string,
        "JIT_TOPOLOGY_CACHE_SECONDS": "0",
    }
    table_proxy.reset()
    nsg_changes.reset()
    lab = CellLab(
        prefix=prefix,
        settings_env=env,
        arm_admin=arm_admin,
        fault_admin=ArmAdmin(arm_admin.url, verify=arm_admin.verify),
        proxy=table_proxy,
        nsg_changes=nsg_changes,
        azurite=azurite,
        scenario=scenario,
        log_dir=tmp_path,
        token=token_for("alice"),
    )
    yield lab
    table_proxy.reset()
    nsg_changes.reset()
    arm_admin.clear_faults()


# ---------------------------------------------------------------------------------------------- arming


def _rule_path(nsg: str) -> str:
    return f"networkSecurityGroups/{nsg}/securityRules/"


def _store_step(lab: CellLab, status: str) -> Callable[[StoreRequest], bool]:
    """Matches the grant-record write that moves a grant to `status` (insert for pending, replace after)."""
    table = f"/{lab.prefix}grants"

    def match(request: StoreRequest) -> bool:
        path = request.path.split("?", 1)[0]
        if status == "pending":
            return request.method == "POST" and path.endswith(table)
        return request.method == "PUT" and f"{table}(" in path and request.json().get("status") == status

    return match


def _arm_fault(fault: Fault) -> dict[str, Any]:
    """The emulator fault that stands for `fault` (count and match are added by the caller)."""
    specs: dict[Fault, dict[str, Any]] = {
        Fault.ARM_500: {"status": 500, "code": "InternalServerError"},
        Fault.ARM_429: {"status": 429, "code": "SubscriptionRequestsThrottled", "retry_after": RETRY_AFTER_S},
        Fault.ARM_BUSY: {"status": 409, "code": "AnotherOperationInProgress"},
        Fault.STALE_412: {"status": 412, "code": "PreconditionFailed"},
        Fault.ARM_HUNG: {"hang_ms": HUNG_MS},
    }
    return specs[fault]


def _arm_count(fault: Fault) -> int:
    """Enough firings to outlast the broker's retries of one operation (412 and a hang need one)."""
    return 1 if fault in (Fault.ARM_HUNG, Fault.STALE_412) else ARM_ATTEMPTS


def _touch(lab: CellLab) -> Callable[[StoreRequest], None]:
    """A concurrent writer: changes the grant record the request is about, so the broker's etag goes stale."""
    service = TableServiceClient.from_connection_string(lab.azurite.connection_string)
    table = service.get_table_client(f"{lab.prefix}grants")

    def touch(request: StoreRequest) -> None:
        body = request.json()
        entity = {"PartitionKey": body["PartitionKey"], "RowKey": body["RowKey"], "touched": "elsewhere"}
        table.update_entity(entity, mode=UpdateMode.MERGE)

    return touch


def _has_broker_rule(nsg: dict[str, Any]) -> bool:
    return bool(broker_rules(nsg))


def arm_the_fault(lab: CellLab, boundary: Boundary, fault: Fault) -> None:
    """Set the fault up so that it strikes at `boundary` (crashes are armed by `run_crash_cell`)."""
    nsg = boundary.nsg
    if nsg is not None:  # an NSG write
        if fault is Fault.TABLE:
            opened = not boundary.on_revoke_path
            lab.nsg_changes.arm(
                nsg,
                _has_broker_rule if opened else (lambda j: not _has_broker_rule(j)),
                lambda: lab.proxy.fail_next(TABLE_ATTEMPTS),
            )
            return
        lab.arm_admin.add_fault(
            method=boundary.arm_method, match=_rule_path(nsg), count=_arm_count(fault), **_arm_fault(fault)
        )
        return
    status = boundary.store_status
    assert status is not None
    match = _store_step(lab, status)
    if fault is Fault.TABLE:
        lab.proxy.outage(match, TABLE_ATTEMPTS)
    elif fault is Fault.STALE_412:
        (lab.proxy.after if status == "pending" else lab.proxy.before)(match, _touch(lab))
    else:
        spec = _arm_fault(fault)

        def strike_arm(_: StoreRequest) -> None:
            lab.fault_admin.add_fault(
                method="*", match="networkSecurityGroups", count=_arm_count(fault), **spec
            )

        lab.proxy.before(match, strike_arm)


# ---------------------------------------------------------------------------------------------- running


def _alice(scenario: Scenario) -> tuple[Principal, str]:
    user = scenario.user("alice")
    principal = Principal(
        oid=user.oid, name=user.display_name, upn=user.upn, tenant_id="t", roles=frozenset(user.roles)
    )
    return principal, user.address or "203.0.113.10"


@dataclass
class Lifecycle:
    """What the caller was told."""

    granted: Grant | None = None
    told_revoked: bool = False
    notes: list[str] = field(default_factory=list)


def run_in_process(lab: CellLab, boundary: Boundary, fault: Fault) -> Lifecycle:
    """Grant, then revoke, with the fault armed at its boundary (before the grant, or before the revoke)."""
    grants, _ = lab.lifecycle(lambda: datetime.now(UTC))
    principal, address = _alice(lab.scenario)
    told = Lifecycle()
    if not boundary.on_revoke_path:
        arm_the_fault(lab, boundary, fault)
    try:
        told.granted, _ = grants.request(
            principal,
            ipaddress.ip_address(address),
            GrantRequest(vm=VM, port=PORT, duration=DURATION, **WHERE),
        )
        told.notes.append(f"grant {told.granted.status}")
    except Exception as err:
        told.notes.append(f"grant refused ({type(err).__name__})")
        return told
    if boundary.on_revoke_path:
        arm_the_fault(lab, boundary, fault)
    try:
        closed = grants.revoke(principal, told.granted.id)
        told.told_revoked = closed.status is GrantStatus.REVOKED
        told.notes.append(f"revoke {closed.status}")
    except Exception as err:
        told.notes.append(f"revoke refused ({type(err).__name__})")
    return told


def run_crash_cell(lab: CellLab, boundary: Boundary) -> Lifecycle:
    """Run the broker as a subprocess, hold the boundary's request, SIGKILL the broker, let the request
    land."""
    _, address = _alice(lab.scenario)
    told = Lifecycle()
    headers = {"X-Forwarded-For": address, "Authorization": f"Bearer {lab.token}"}
    with (
        BrokerProcess(lab.settings_env, sweep_interval=None, log_dir=lab.log_dir) as broker,
        httpx.Client(base_url=broker.url, headers=headers, timeout=WAIT_S) as client,
    ):
        grant_id = None
        if boundary.on_revoke_path:
            answer = client.post(
                "/api/v1/grants", json={"vm": VM, "port": PORT, "duration": "PT10M", **WHERE}
            )
            assert answer.status_code == 201, answer.text
            grant_id = answer.json()["id"]
            told.notes.append("grant active")
        at_step = _hold_boundary(lab, boundary)

        def call() -> None:
            if grant_id is None:
                client.post("/api/v1/grants", json={"vm": VM, "port": PORT, "duration": "PT10M", **WHERE})
            else:
                client.delete(f"/api/v1/grants/{grant_id}")

        caller = threading.Thread(target=_swallow(call), daemon=True)
        caller.start()
        _wait_for(at_step, f"the broker to reach {boundary.value}")
        broker.kill()
        told.notes.append(f"killed at {boundary.value}")
    lab.proxy.release()
    caller.join(WAIT_S)
    if boundary.nsg is not None:
        _wait_for_ghost(lab, boundary.arm_method, _rule_path(boundary.nsg), CRASH_HOLD_MS)
    return told


def _hold_boundary(lab: CellLab, boundary: Boundary) -> Callable[[], bool]:
    """Arrange for the boundary's own request to be held; returns "is the broker there now?"."""
    if boundary.nsg is not None:
        lab.arm_admin.add_fault(
            method=boundary.arm_method, match=_rule_path(boundary.nsg), count=1, hang_ms=CRASH_HOLD_MS
        )
        return lambda: not lab.arm_admin.faults()
    status = boundary.store_status
    assert status is not None
    lab.proxy.hold(_store_step(lab, status))
    return lab.proxy.fired.is_set


def _swallow(call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the broker died under it: that is the point
            call()

    return run


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _wait_for_ghost(lab: CellLab, method: str, match: str, hang_ms: int) -> None:
    """Wait until the emulator finished a request it held (it lands after its caller gave up or died)."""

    def landed() -> bool:
        return any(
            r["method"] == method and match.lower() in r["path"].lower() and r["duration_ms"] >= hang_ms
            for r in lab.arm_admin.requests()
        )

    _wait_for(landed, f"the held {method} on {match} to land")


def sweep_healthy(lab: CellLab, result: CellResult, at: datetime) -> None:
    """Run the sweeper past expiry: once with whatever fault is still armed (it may strike the sweeper
    first), then, if one was, again with ARM and Table Storage healthy; checks read the last."""
    armed = bool(lab.arm_admin.faults()) or lab.proxy.armed or lab.nsg_changes.armed
    lab.nsg_changes.reset()
    _, sweeper = lab.lifecycle(lambda: at)
    lab.reports.append(sweeper.run())
    result.sweeps = 1
    if armed:
        lab.arm_admin.clear_faults()
        lab.proxy.reset()
        _, sweeper = lab.lifecycle(lambda: at)
        lab.reports.append(sweeper.run())
        result.sweeps = 2
    result.fired = "sweep" if armed else "lifecycle"


# ---------------------------------------------------------------------------------------------- checks


def foreign_rules(admin: ArmAdmin) -> dict[str, list[dict[str, Any]]]:
    """Every rule the broker did not write, per NSG, without ARM's renewed etags."""
    return {nsg["id"].lower(): others(nsg) for nsg in admin.nsgs()}


def check(lab: CellLab, told: Lifecycle, before: dict[str, list[dict[str, Any]]], result: CellResult) -> None:
    """Evaluate every invariant (none short-circuits another) into `result.checks`."""
    nsgs = lab.arm_admin.nsgs()
    left = [f"{nsg['name']}/{r['name']}" for nsg in nsgs for r in broker_rules(nsg)]
    result.checks["rules"] = f"left: {', '.join(left)}" if left else ""

    store = lab.direct_store()
    grants = store.list_all()
    stuck = [
        f"{g.id} {g.status}"
        for g in grants
        if g.status.is_open or (g.status is GrantStatus.FAILED and not g.reason)
    ]
    if told.granted is not None and told.granted.id not in {g.id for g in grants}:
        stuck.append(f"{told.granted.id} lost")
    result.checks["stuck"] = "; ".join(stuck)

    missing: list[str] = []
    for grant in grants:
        kinds = {e.kind for e in store.audit_events(grant.id)}
        wanted = {"requested", str(grant.status)}
        if grant.nsg_rules or (told.granted is not None and told.granted.id == grant.id):
            wanted.add("granted")
        if told.told_revoked and told.granted is not None and told.granted.id == grant.id:
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


# ---------------------------------------------------------------------------------------------- the cells


@pytest.mark.parametrize(("boundary", "fault"), CELLS)
def test_fault_at_boundary_leaves_no_door_open_no_grant_stuck_no_event_lost_no_foreign_rule_changed(
    boundary: Boundary, fault: Fault, cell_lab: CellLab, matrix: Matrix
) -> None:
    lab = cell_lab
    result = CellResult(boundary, fault)
    before = foreign_rules(lab.arm_admin)
    started = datetime.now(UTC)
    if fault is Fault.CRASH:
        told = run_crash_cell(lab, boundary)
    else:
        told = run_in_process(lab, boundary, fault)
        if fault is Fault.ARM_HUNG and not lab.arm_admin.faults():
            path = _rule_path(boundary.nsg) if boundary.nsg else "networkSecurityGroups"
            method = boundary.arm_method if boundary.nsg else "GET"
            _wait_for_ghost(lab, method, path, HUNG_MS)
    lifecycle_sleeps = list(lab.sleeps)
    sweep_healthy(lab, result, started + SWEEP_AFTER)
    result.outcome = ", ".join(told.notes)
    check(lab, told, before, result)
    matrix.add(result)

    failures = {name: why for name, why in result.checks.items() if why}
    assert set(result.checks) == set(INVARIANTS)
    assert not failures, f"{boundary.value} x {fault.value}: {failures}"
    if fault is Fault.ARM_429 and result.fired == "lifecycle":
        assert max(lifecycle_sleeps, default=0) >= RETRY_AFTER_S, "the broker did not honour Retry-After"
