"""Load: three broker processes, one ARM emulator, one store; fifty people ask at once, then revoke while
sweeps overlap. Every request ends granted or cleanly refused, no two rules share a priority, nothing leaks,
nothing is lost.

The whole run happens once (`load_run`); each test states one property of it. While it runs, a watcher
snapshots every NSG over and over, so properties are checked on what ARM held at every moment seen, not just
at the end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from bench import crowd, scenarios
from jitbroker.model import GrantStatus
from tests.load.conftest import BROKERS, RUNNING_VMS

pytestmark = pytest.mark.load

PEOPLE = 50
STOPPED_VM = scenarios.vm_name(RUNNING_VMS)  # the deallocated one
REQUEST_TIMEOUT_S = 120.0


def wish(index: int) -> dict[str, Any]:
    """What member `index` asks for: mostly a running VM; every tenth a stopped VM, every tenth an
    over-long duration (both must be refused cleanly)."""
    if index % 10 == 9:
        return {"vm": STOPPED_VM, "port": 22}
    if index % 10 == 4:
        return {"vm": scenarios.vm_name(index % RUNNING_VMS), "port": 22, "duration": "PT9H"}
    return {"vm": scenarios.vm_name(index % RUNNING_VMS), "port": 22, "duration": "PT2H"}


@dataclass(frozen=True)
class Snapshot:
    """Every NSG as ARM held it somewhere between `started` and `ended` (monotonic seconds)."""

    started: float
    ended: float
    nsgs: list[dict[str, Any]]


@dataclass
class Outcome:
    """One grant request: who, what, the answer, and when its revoke (if any) was sent."""

    member: crowd.Member
    ask: dict[str, Any]
    status: int
    body: dict[str, Any]
    answered: float
    revoke_sent: float | None = None
    revoke_status: int | None = None
    revoke_answered: float | None = None


@dataclass
class LoadRun:
    """Everything the load run observed."""

    outcomes: list[Outcome]
    snapshots: list[Snapshot] = field(default_factory=list)
    sweep_errors: list[str] = field(default_factory=list)
    final_nsg: dict[str, Any] = field(default_factory=dict)
    initial_nsg: dict[str, Any] = field(default_factory=dict)
    unsettled_after_grants: list[str] = field(default_factory=list)
    unsettled_after_revokes: list[str] = field(default_factory=list)
    expiry_sweeps_started: float = float("inf")

    @property
    def granted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in (200, 201)]


class Watcher:
    """Snapshots every NSG in a loop until stopped."""

    def __init__(self, admin: Any) -> None:
        self._admin = admin
        self._stop = threading.Event()
        self.snapshots: list[Snapshot] = []
        self._thread = threading.Thread(target=self._run, name="nsg-watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            nsgs = self._admin.nsgs()
            self.snapshots.append(Snapshot(started, time.monotonic(), nsgs))
            self._stop.wait(0.05)


def _post_grant(
    url: str, issuer: Any, who: crowd.Member, ask: dict[str, Any], start: threading.Event
) -> Outcome:
    with httpx.Client(base_url=url, headers=crowd.headers(issuer, who), timeout=REQUEST_TIMEOUT_S) as client:
        start.wait()
        response = client.post("/api/v1/grants", json=ask)
    return Outcome(who, ask, response.status_code, response.json(), time.monotonic())


def _revoke(url: str, issuer: Any, outcome: Outcome, start: threading.Event) -> None:
    with httpx.Client(
        base_url=url, headers=crowd.headers(issuer, outcome.member), timeout=REQUEST_TIMEOUT_S
    ) as client:
        start.wait()
        outcome.revoke_sent = time.monotonic()
        outcome.revoke_status = client.delete(f"/api/v1/grants/{outcome.body['id']}").status_code
        outcome.revoke_answered = time.monotonic()


@pytest.fixture(scope="module")
def load_run(load_brokers, load_admin, load_parts, issuer) -> LoadRun:
    """Fifty concurrent grants over three brokers; two thirds revoked concurrently (each through another
    broker than the one that granted it) while two sweepers loop; then three overlapping sweeps after every
    expiry."""
    people = crowd.crowd(PEOPLE)
    run = LoadRun([], initial_nsg=load_admin.nsg(scenarios.SUBNET_NSG))
    with Watcher(load_admin) as watcher:
        start = threading.Event()
        with ThreadPoolExecutor(max_workers=PEOPLE) as pool:
            futures = [
                pool.submit(_post_grant, load_brokers[i % BROKERS], issuer, who, wish(i), start)
                for i, who in enumerate(people)
            ]
            time.sleep(0.5)  # let every client get ready, then release them together
            start.set()
            run.outcomes = [f.result() for f in futures]
        run.unsettled_after_grants = _settle(load_admin, run, revoked=False)

        to_revoke = [o for i, o in enumerate(run.granted) if i % 3 != 0]
        start, done = threading.Event(), threading.Event()
        sweepers = [
            threading.Thread(target=_sweep_until, args=(load_parts, done, run.sweep_errors)) for _ in range(2)
        ]
        for thread in sweepers:
            thread.start()
        with ThreadPoolExecutor(max_workers=max(len(to_revoke), 1)) as pool:
            revokes = [
                pool.submit(_revoke, load_brokers[(o.member.index + 1) % BROKERS], issuer, o, start)
                for o in to_revoke
            ]
            time.sleep(0.5)
            start.set()
            for future in revokes:
                future.result()
        done.set()
        for thread in sweepers:
            thread.join(timeout=REQUEST_TIMEOUT_S)
        # Revokes are recorded before their rule writes and every writer re-reads the open set after its
        # write, so the rule is already right here; one more sweep must find nothing to trim.
        run.sweep_errors.extend(load_parts(lambda: datetime.now(UTC)).sweeper.run().errors)
        run.unsettled_after_revokes = _settle(load_admin, run, revoked=True)
        run.expiry_sweeps_started = time.monotonic()

        after_all = max((_expiry(o) for o in run.granted), default=datetime.now(UTC)) + timedelta(seconds=1)
        reports: list[Any] = []
        final = [
            threading.Thread(target=lambda: reports.append(load_parts(lambda: after_all).sweeper.run()))
            for _ in range(3)
        ]
        for thread in final:
            thread.start()
        for thread in final:
            thread.join(timeout=REQUEST_TIMEOUT_S)
        run.sweep_errors.extend(e for r in reports for e in r.errors)
    run.snapshots = watcher.snapshots
    run.final_nsg = load_admin.nsg(scenarios.SUBNET_NSG)
    return run


def _sweep_until(load_parts: Any, done: threading.Event, errors: list[str]) -> None:
    sweeper = load_parts(lambda: datetime.now(UTC)).sweeper
    while not done.is_set():
        errors.extend(sweeper.run().errors)


def _settle(admin: Any, run: LoadRun, *, revoked: bool, timeout: float = 30.0) -> list[str]:
    """Wait until the NSG holds every open grant's source and no revoked one (other brokers may still be
    converging); the grants still misplaced after `timeout` (none when it settled)."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = _misplaced(admin.nsg(scenarios.SUBNET_NSG), run.granted, revoked=revoked)
        if not wrong or time.monotonic() > deadline:
            return wrong
        time.sleep(0.2)


def _misplaced(nsg: dict[str, Any], granted: list[Outcome], *, revoked: bool) -> list[str]:
    """Grant ids whose source is missing from their rule, or (after revokes) still in it."""
    wrong = []
    for outcome in granted:
        present = outcome.member.source in _sources_for(nsg, outcome.body["connect"]["private_ip"], 22)
        gone = revoked and outcome.revoke_status == 200
        if present == gone:
            wrong.append(f"{outcome.body['id']} ({outcome.member.source}, {'revoked' if gone else 'open'})")
    return wrong


def _expiry(outcome: Outcome) -> datetime:
    return datetime.fromisoformat(outcome.body["expires_at"].replace("Z", "+00:00"))


def _rules(nsg: dict[str, Any]) -> list[dict[str, Any]]:
    return list(nsg.get("properties", {}).get("securityRules", []))


def _broker_rules(nsg: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in _rules(nsg) if r["name"].startswith("jit-")]


def _sources_for(nsg: dict[str, Any], private_ip: str, port: int) -> set[str]:
    found: set[str] = set()
    for rule in _broker_rules(nsg):
        props = rule["properties"]
        if props.get("destinationAddressPrefix") == private_ip and props.get("destinationPortRange") == str(
            port
        ):
            found |= set(props.get("sourceAddressPrefixes") or [props.get("sourceAddressPrefix")])
    return found


def test_every_request_ends_granted_or_cleanly_refused(load_run: LoadRun) -> None:
    for outcome in load_run.outcomes:
        if outcome.status in (200, 201):
            assert outcome.body["status"] == "active"
            assert outcome.body["source"] == outcome.member.source
            continue
        assert 400 <= outcome.status < 500 or outcome.status == 503, (outcome.status, outcome.body)
        error = outcome.body["error"]
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)
        assert error["message"]


def test_policy_refusals_are_the_ones_policy_demands(load_run: LoadRun) -> None:
    for outcome in load_run.outcomes:
        if outcome.ask["vm"] == STOPPED_VM:
            assert (outcome.status, outcome.body["error"]["code"]) == (409, "vm_not_running")
        elif outcome.ask.get("duration") == "PT9H":
            assert (outcome.status, outcome.body["error"]["code"]) == (400, "invalid_request")
        else:
            assert outcome.status in (201, 503), (outcome.status, outcome.body)
    assert len(load_run.granted) >= PEOPLE // 2


def test_no_two_rules_ever_share_a_priority_and_direction(load_run: LoadRun) -> None:
    assert load_run.snapshots
    for snapshot in load_run.snapshots:
        for nsg in snapshot.nsgs:
            seen = Counter((r["properties"]["direction"], r["properties"]["priority"]) for r in _rules(nsg))
            assert [key for key, n in seen.items() if n > 1] == [], nsg["name"]


def test_once_the_grants_settle_every_granted_source_is_in_its_rule(load_run: LoadRun) -> None:
    assert load_run.unsettled_after_grants == []


def test_after_the_revokes_and_one_sweep_revoked_sources_are_gone_and_the_others_remain(
    load_run: LoadRun,
) -> None:
    assert load_run.unsettled_after_revokes == []


def test_a_source_is_in_its_rule_at_every_moment_its_grant_is_active_and_never_after_its_revoke(
    load_run: LoadRun,
) -> None:
    checked, wrong = 0, []
    for snapshot in load_run.snapshots:
        if snapshot.ended >= load_run.expiry_sweeps_started:
            continue
        (nsg,) = [n for n in snapshot.nsgs if n["name"] == scenarios.SUBNET_NSG]
        for outcome in load_run.granted:
            present = outcome.member.source in _sources_for(nsg, outcome.body["connect"]["private_ip"], 22)
            active = outcome.answered < snapshot.started and (
                outcome.revoke_sent is None or outcome.revoke_sent > snapshot.ended
            )
            revoked = outcome.revoke_answered is not None and outcome.revoke_answered < snapshot.started
            if active and not present:
                wrong.append(f"{outcome.body['id']} active but missing at {snapshot.started:.2f}")
            if revoked and present:
                wrong.append(f"{outcome.body['id']} revoked but present at {snapshot.started:.2f}")
            checked += active or revoked
    assert checked > 0
    assert wrong == []


def test_after_revokes_and_sweeps_no_broker_rule_remains_and_no_grant_is_open(load_run, load_store) -> None:
    assert _broker_rules(load_run.final_nsg) == []
    assert load_run.sweep_errors == []
    for outcome in load_run.granted:
        grant = load_store.get(outcome.body["id"])
        expected = GrantStatus.REVOKED if outcome.revoke_sent is not None else GrantStatus.EXPIRED
        assert outcome.revoke_status in (None, 200)
        assert grant.status is expected, grant
    assert load_store.list_all(status=GrantStatus.ACTIVE) == []
    assert load_store.list_all(status=GrantStatus.PENDING) == []


def test_the_rule_the_broker_did_not_write_is_unchanged(load_run: LoadRun) -> None:
    def foreign(nsg: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in r.items() if k != "etag"}
            for r in _rules(nsg)
            if not r["name"].startswith("jit-")
        ]

    assert foreign(load_run.final_nsg) == foreign(load_run.initial_nsg)


def test_the_audit_trail_has_every_event(load_run: LoadRun, load_store) -> None:
    for outcome in load_run.granted:
        kinds = Counter(e.kind for e in load_store.audit_events(outcome.body["id"]))
        closing = "revoked" if outcome.revoke_sent is not None else "expired"
        assert kinds["requested"] == 1 and kinds["granted"] == 1, kinds
        assert kinds[closing] >= 1, kinds
    refused = {o.member.oid for o in load_run.outcomes if o.status not in (200, 201)}
    denied = {e.principal for e in load_store.audit_events(limit=100_000) if e.kind == "denied"}
    assert refused <= denied
