"""Brokers of one deployment in the test process, and the callers of the reliability tests.

`BrokerLab` holds what a reliability test shares: its own tables (behind the fault-injecting Table Storage
proxy), the reset ARM world, and any number of broker instances (`instance()`), each with its own ARM
clients, reconciler and single flight, as separate processes of one deployment would have. Their backoff
sleeps are recorded and only napped, their ARM read timeout is short (so a hung call is given up), and a
hook runs before every NSG PUT they send (`race_next_put`: someone else saves the NSG at that moment).
"""

from __future__ import annotations

import io
import ipaddress
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.core.credentials import TokenCredential
from azure.data.tables import TableServiceClient

from jitbroker.approvals import ApprovalService
from jitbroker.clients import AzureClients
from jitbroker.closing import Closer
from jitbroker.config import Settings
from jitbroker.grants import GrantRequest, GrantService
from jitbroker.identity import Principal
from jitbroker.model import Grant, GrantStatus
from jitbroker.nsgplan import canonical
from jitbroker.reconciler import NsgReconciler
from jitbroker.rules import is_broker_rule
from jitbroker.store import GrantStore
from jitbroker.sweeper import Sweeper, SweepReport
from jitbroker.topology import TopologyReader
from lab.arm.admin import ArmAdmin
from lab.azurite import Azurite
from lab.scenario import Scenario
from tests.broker.conftest import RG, SUB, security_rules
from tests.reliability.table_proxy import TableProxy

NIC_NSG = "db-01-nsg"
SUBNET_NSG = "app-subnet-nsg"
DURATION = timedelta(minutes=10)
READ_TIMEOUT_S = 0.6  # shorter than a hung call, so the broker gives up on it
NAP_S = 0.05  # the most a recorded backoff sleep really waits
ANSWER_BUDGET_S = "5"  # a request still writing after this is answered pending (202) and driven by GETs
DRIVE_S = 6.0  # how long a pending answer is driven on by GETs before the test calls it stuck
WAIT_S = 90.0  # generous bound on waits that poll for a condition


# ---------------------------------------------------------------------------------------------- NSG changes


class NsgChangeTrigger:
    """Runs an action once, right after ARM took a write that changed one NSG in the wanted way.

    Subscribed once per session (the emulator has no unsubscribe); `arm()` sets the next action, `reset()`
    drops it. Called from the emulator's request thread before it answers the write.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted: tuple[str, Callable[[dict[str, Any]], bool], Callable[[], None]] | None = None

    def arm(self, nsg_name: str, when: Callable[[dict[str, Any]], bool], action: Callable[[], None]) -> None:
        """Run `action` after the first change of NSG `nsg_name` whose new state satisfies `when`."""
        with self._lock:
            self._wanted = (nsg_name.lower(), when, action)

    @property
    def armed(self) -> bool:
        """True while an action waits for its NSG change."""
        with self._lock:
            return self._wanted is not None

    def reset(self) -> None:
        """Drop the pending action."""
        with self._lock:
            self._wanted = None

    def __call__(self, nsg_id: str, nsg_json: dict[str, Any]) -> None:
        with self._lock:
            wanted = self._wanted
            if wanted is None or not nsg_id.lower().endswith(f"/{wanted[0]}") or not wanted[1](nsg_json):
                return
            self._wanted = None
        wanted[2]()


@dataclass(frozen=True)
class NsgState:
    """One state of one NSG as ARM published it, and when (monotonic seconds) it was handed out."""

    at: float
    name: str
    nsg: dict[str, Any]


class NsgHistory:
    """Every state of every NSG ARM published since the last `reset()` (each accepted write, each finish).

    ARM hands a write's new state to subscribers before it answers that write (and a finished operation's
    before it answers the poll that saw it finish), so a state recorded after a caller's answer came back
    is a change made after the one the caller waited for.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: list[NsgState] = []

    def reset(self) -> None:
        """Forget what was seen."""
        with self._lock:
            self._states = []

    @property
    def states(self) -> list[NsgState]:
        """What was seen, in order."""
        with self._lock:
            return list(self._states)

    def __call__(self, nsg_id: str, nsg_json: dict[str, Any]) -> None:
        name = nsg_id.rstrip("/").rsplit("/", 1)[-1].lower()
        with self._lock:
            self._states.append(NsgState(time.monotonic(), name, nsg_json))


# ---------------------------------------------------------------------------------------------- who asks


@dataclass(frozen=True)
class Person:
    """A caller and what they ask for: their VM (named with its scope), one port, ten minutes."""

    name: str
    vm: str
    port: int
    private_ip: str
    nsgs: tuple[str, ...]
    principal: Principal
    address: str

    @property
    def source(self) -> str:
        """The /32 the broker writes for this caller."""
        return f"{self.address}/32"

    @property
    def ask(self) -> GrantRequest:
        """The request as the lifecycle service takes it."""
        return GrantRequest(
            vm=self.vm, port=self.port, duration=DURATION, resource_group=RG, subscription=SUB
        )

    @property
    def body(self) -> dict[str, Any]:
        """The same request as the HTTP API takes it."""
        return {
            "vm": self.vm,
            "port": self.port,
            "duration": "PT10M",
            "resource_group": RG,
            "subscription": SUB,
        }


@dataclass(frozen=True)
class Approver:
    """Someone who answers requests on VMs that want a second person's yes (the demo's `JIT.Approver`)."""

    name: str
    principal: Principal
    address: str


def principal_of(scenario: Scenario, name: str) -> Principal:
    """A scenario user as the broker sees them once their token is verified."""
    user = scenario.user(name)
    return Principal(
        oid=user.oid, name=user.display_name, upn=user.upn, tenant_id="t", roles=frozenset(user.roles)
    )


def approver(scenario: Scenario) -> Approver:
    """carol, who holds `JIT.Approver` (and never asks for a door in these tests, so she may approve all)."""
    return Approver(
        "carol", principal_of(scenario, "carol"), scenario.user("carol").address or "203.0.113.20"
    )


def people(scenario: Scenario) -> tuple[Person, Person]:
    """alice (SSH to `db-01`: its NIC NSG and the subnet NSG) and bob (RDP to `win-01`: the subnet NSG)."""

    def make(name: str, vm: str, port: int, private_ip: str, nsgs: tuple[str, ...]) -> Person:
        address = scenario.user(name).address or "203.0.113.10"
        return Person(name, vm, port, private_ip, nsgs, principal_of(scenario, name), address)

    return (
        make("alice", "db-01", 22, "192.0.2.21", (NIC_NSG, SUBNET_NSG)),
        make("bob", "win-01", 3389, "192.0.2.20", (SUBNET_NSG,)),
    )


@dataclass
class Told:
    """What the callers were answered, and when (monotonic seconds)."""

    ids: dict[str, str] = field(default_factory=dict)  # person -> the grant id they were answered with
    active_at: dict[str, float] = field(default_factory=dict)  # person -> when they were told "active"
    closing_at: dict[str, float] = field(default_factory=dict)  # person -> when their revoke was sent
    revoked: set[str] = field(default_factory=set)  # grant ids whose owner was told "revoked"
    yes_at: float = float("inf")  # when the approver's first yes was sent (approval cells)
    approval_refusals: list[str] = field(default_factory=list)  # what the approver was answered instead
    final_at: float = float("inf")  # when the expiry phase (or the last sweep) began
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, text: str) -> None:
        """Add one line to what happened."""
        with self.lock:
            self.notes.append(text)

    def answered(self, who: Person, grant_id: str, status: str) -> None:
        """Record an answer: the grant, and the moment it was active."""
        with self.lock:
            self.ids[who.name] = grant_id
            if status == "active":
                self.active_at.setdefault(who.name, time.monotonic())


# ---------------------------------------------------------------------------------------------- brokers


@dataclass
class Instance:
    """One broker of the deployment, in this process: its own clients, reconciler and single flight."""

    clients: AzureClients
    grants: GrantService
    sweeper: Sweeper
    reconciler: NsgReconciler
    approvals: ApprovalService


class BrokerLab:
    """A test's tables, ARM world, proxy, NSG trigger and history, and its broker instances."""

    def __init__(
        self,
        *,
        settings_env: dict[str, str],
        arm_admin: ArmAdmin,
        proxy: TableProxy,
        nsg_changes: NsgChangeTrigger,
        history: NsgHistory,
        azurite: Azurite,
        credential: TokenCredential,
        token_for: Callable[..., str],
        scenario: Scenario,
        log_dir: Path,
        nap_s: float = NAP_S,
        base_delay: float = 0.01,
    ) -> None:
        self.settings_env = settings_env
        self.nap_s = nap_s
        self.base_delay = base_delay
        self.prefix = settings_env["JIT_TABLE_PREFIX"]
        self.settings = Settings.from_env(settings_env)
        self.arm_admin = arm_admin
        self.fault_admin = ArmAdmin(arm_admin.url, verify=arm_admin.verify)  # used from other threads
        self.proxy = proxy
        self.nsg_changes = nsg_changes
        self.history = history
        self.azurite = azurite
        self.credential = credential
        self.token_for = token_for
        self.alice, self.bob = people(scenario)
        self.carol = approver(scenario)
        self.log_dir = log_dir
        self.started = datetime.now(UTC)
        self.sleeps: list[float] = []
        self.reports: list[SweepReport] = []
        self.instances: list[Instance] = []
        self._lock = threading.Lock()
        self._race: tuple[str, Callable[[str], None]] | None = None
        self._raced = False

    @property
    def people(self) -> tuple[Person, Person]:
        """Both callers."""
        return (self.alice, self.bob)

    def nap(self, seconds: float) -> None:
        """The brokers' backoff sleep: recorded, and only napped (at most `nap_s`)."""
        self.sleeps.append(seconds)
        time.sleep(min(seconds, self.nap_s))

    def direct_store(self) -> GrantStore:
        """The test's store straight on Azurite, for checks (never through the proxy)."""
        service = TableServiceClient.from_connection_string(self.azurite.connection_string)
        return GrantStore(service, prefix=self.prefix, clock=lambda: datetime.now(UTC))

    def instance(self, clock: Callable[[], datetime] | None = None, *, attempts: int = 8) -> Instance:
        """A broker instance over the test's tables and ARM (`attempts`: its reconciler's per pass)."""
        clock = clock or (lambda: datetime.now(UTC))
        settings = self.settings
        clients = AzureClients.from_settings(
            settings, read_timeout=READ_TIMEOUT_S, credential=self.credential
        )
        store = GrantStore(clients.table_service(), prefix=settings.table_prefix, clock=clock)
        topology = TopologyReader(clients, cache_seconds=3600, clock=clock, base_delay=0.01, sleep=self.nap)
        reconciler = NsgReconciler(
            clients,
            openings=store.openings,
            clock=clock,
            priority_band=(settings.priority_min, settings.priority_max),
            attempts=attempts,
            base_delay=self.base_delay,
            lro_timeout=settings.arm_timeout_seconds,
            poll_interval=settings.arm_poll_seconds,
            sleep=self.nap,
            before_write=self._before_write,
        )
        budget = settings.answer_budget_seconds
        closer = Closer(store=store, reconciler=reconciler, clock=clock, answer_budget=budget)
        grants = GrantService(
            settings=settings,
            store=store,
            topology=topology,
            reconciler=reconciler,
            closer=closer,
            clock=clock,
            answer_budget=budget,
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
        )
        approvals = ApprovalService(
            settings=settings,
            store=store,
            topology=topology,
            activator=grants,
            closer=closer,
            clock=clock,
        )
        made = Instance(clients, grants, sweeper, reconciler, approvals)
        with self._lock:
            self.instances.append(made)
        return made

    def sweep(self, at: datetime | None = None, instance: Instance | None = None) -> SweepReport:
        """One sweep by a broker instance whose clock says `at` (now when None)."""
        sweeper = (instance or self.instance(None if at is None else (lambda: at))).sweeper
        report = sweeper.run()
        with self._lock:
            self.reports.append(report)
        return report

    def close(self) -> None:
        """Close every instance's clients."""
        for made in self.instances:
            made.clients.close()

    # -- someone else saves the NSG between a broker's GET and its PUT (a real 412)

    def race_next_put(self, nsg: str, action: Callable[[str], None] | None = None) -> None:
        """Right before a broker's next PUT of `nsg`, run `action(nsg_id)`: by default someone else saves that
        NSG as it is (the broker's `If-Match` goes stale)."""
        with self._lock:
            self._race = (nsg.lower(), action or self.someone_saves)

    def cancel_race(self) -> None:
        """Drop a race that has not run."""
        with self._lock:
            self._race = None

    @property
    def raced(self) -> bool:
        """True once a race armed by `race_next_put` ran."""
        with self._lock:
            return self._raced

    def _before_write(self, nsg_id: str) -> None:
        with self._lock:
            wanted = self._race
            if wanted is None or not nsg_id.lower().endswith(f"/{wanted[0]}"):
                return
            self._race = None
            self._raced = True
        try:
            wanted[1](nsg_id)
        except Exception:  # someone else's save lost a race of its own: the NSG changed all the same
            return

    def someone_saves(self, nsg_id: str) -> None:
        """Save the NSG unchanged, as someone in the portal would, without waiting for its operation."""
        network = AzureClients.from_settings(self.settings, credential=self.credential).network_client(SUB)
        name = nsg_id.rstrip("/").rsplit("/", 1)[-1]
        nsg = network.network_security_groups.get(
            RG, name, cls=lambda response, _model, _headers: response.http_response.json()
        )
        network.network_security_groups.begin_create_or_update(
            RG,
            name,
            io.BytesIO(json.dumps(nsg).encode()),
            content_type="application/json",
            headers={"If-Match": nsg["etag"]},
            polling=False,
        )


# ---------------------------------------------------------------------------------------------- callers


def together(*calls: Callable[[], None]) -> None:
    """Run the calls at once, each in its own thread, and wait for all of them."""
    threads = [threading.Thread(target=call, daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)


def drive(broker: Instance, who: Person, grant: Grant, *, within: float = DRIVE_S) -> Grant:
    """Drive a pending answer on with GETs, as a client polls `Location`."""
    deadline = time.monotonic() + within
    while grant.status is GrantStatus.PENDING and time.monotonic() < deadline:
        time.sleep(0.1)
        grant = broker.grants.get(who.principal, grant.id)
    return grant


def ask(broker: Instance, who: Person, told: Told) -> Callable[[], None]:
    """`who` asks `broker` for their grant; a pending answer is driven on."""

    def run() -> None:
        try:
            grant, _ = broker.grants.request(who.principal, ipaddress.ip_address(who.address), who.ask)
            grant = drive(broker, who, grant)
        except Exception as err:
            told.note(f"{who.name} refused ({type(err).__name__})")
            return
        told.answered(who, grant.id, str(grant.status))
        told.note(f"{who.name} {grant.status}")

    return run


def approve(broker: Instance, carol: Approver, who: Person, told: Told) -> Callable[[], None]:
    """`carol` says yes to `who`'s waiting request through `broker`, and `who` polls the answer on."""

    def run() -> None:
        grant_id = told.ids.get(who.name)
        if grant_id is None:
            return
        told.yes_at = time.monotonic()
        try:
            grant = broker.approvals.approve(carol.principal, grant_id, "fault matrix")
            grant = drive(broker, who, grant)
        except Exception as err:
            told.approval_refusals.append(f"{type(err).__name__}: {err}")
            told.note(f"{carol.name}'s yes answered {type(err).__name__}")
            return
        told.answered(who, grant.id, str(grant.status))
        told.note(f"{carol.name} approved: {who.name} {grant.status}")

    return run


def revoke(broker: Instance, who: Person, told: Told) -> Callable[[], None]:
    """`who` revokes their grant through `broker`, if they were told it is active."""

    def run() -> None:
        grant_id = told.ids.get(who.name)
        if grant_id is None or who.name not in told.active_at:
            return
        told.closing_at[who.name] = time.monotonic()
        try:
            closed = broker.grants.revoke(who.principal, grant_id)
        except Exception as err:
            told.note(f"{who.name}'s revoke refused ({type(err).__name__})")
            return
        if closed.status is GrantStatus.REVOKED:
            told.revoked.add(closed.id)
        told.note(f"{who.name} {closed.status}")

    return run


def extend(broker: Instance, who: Person, told: Told) -> Callable[[], None]:
    """`who` extends their grant through `broker` (the rule is renamed: one more PUT on its NSGs)."""

    def run() -> None:
        grant_id = told.ids.get(who.name)
        if grant_id is None or who.name not in told.active_at:
            return
        try:
            broker.grants.extend(who.principal, grant_id, DURATION)
        except Exception as err:
            told.note(f"{who.name}'s extension refused ({type(err).__name__})")
            return
        told.note(f"{who.name} extended")

    return run


def wait_for(condition: Callable[[], bool], what: str, *, within: float = WAIT_S) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- NSG JSON


def rule_key(rule: dict[str, Any]) -> tuple[str, int]:
    """A broker rule's (destination address, port)."""
    props = rule["properties"]
    return str(props.get("destinationAddressPrefix")), int(props.get("destinationPortRange") or 0)


def rule_sources(rule: dict[str, Any]) -> list[str]:
    """A rule's source prefixes in canonical form, whichever field holds them."""
    props = rule["properties"]
    return [canonical(s) for s in (props.get("sourceAddressPrefixes") or [props.get("sourceAddressPrefix")])]


def sources_for(nsg: dict[str, Any], private_ip: str, port: int) -> set[str]:
    """Every source the broker's rules let in to `private_ip:port` in this NSG JSON."""
    return {
        s
        for rule in security_rules(nsg)
        if is_broker_rule(rule) and rule_key(rule) == (private_ip, port)
        for s in rule_sources(rule)
    }
