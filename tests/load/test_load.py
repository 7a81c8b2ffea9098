"""Load: three broker processes, one ARM emulator, one store, under each ARM concurrency mode. A crowd asks at
once, then two thirds revoke (each through another broker than the one that granted it) while two sweepers
loop; then three overlapping sweeps after every expiry. Every request ends granted (201/200, or 202 polled to
active) or cleanly refused, within 25 s; nothing leaks, nothing is lost.

The whole run happens once per mode (`load_run`); each test states one property of it. Every state of the
NSG that ARM published during the run is recorded (`tests.load.conftest.NsgStates`), so the properties are
checked at every moment ARM held, not just at the end. How a state is judged, given that a grant is recorded
before its rule is written and closed before its rule is taken out:

- a grant is *open* from the moment its caller was answered `active` (201/200, or a poll of a 202 saw
  `active`: the store said active and its NSG pass had written the source) until its revoke was sent;
  every state published in that window must hold its source;
- a grant is *closed* once its revoke was answered (the close was recorded before its own NSG pass, and
  the answer waited for that pass): every state published after that must lack its source. If the answer
  said the rule could not be updated, or the grant ended refused (its close's pass may have failed), the
  next sweep is the "one pass": every state published after the end of the first sweep that began after
  the answer must lack it. A member refused by policy never appears at all.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from bench import crowd, scenarios
from jitbroker.model import GrantStatus
from tests.load.conftest import BROKERS, RUNNING_VMS, ModeSummary, NsgState, NsgStates

pytestmark = pytest.mark.load

PEOPLE = 50  # per mode: five modes, three brokers, one NSG
STOPPED_VM = scenarios.vm_name(RUNNING_VMS)  # the deallocated one
REQUEST_TIMEOUT_S = 120.0
ANSWER_BOUND_S = 25.0  # the longest any HTTP answer may take (the broker's answer budget is 20 s)
CLOSE_PENDING = "could not be updated"  # the revoke answer's warning when its NSG pass did not finish


def wish(index: int) -> dict[str, Any]:
    """What member `index` asks for: mostly a running VM; every tenth a stopped VM, every tenth an
    over-long duration (both must be refused cleanly)."""
    if index % 10 == 9:
        return {"vm": STOPPED_VM, "port": 22}
    if index % 10 == 4:
        return {"vm": scenarios.vm_name(index % RUNNING_VMS), "port": 22, "duration": "PT9H"}
    return {"vm": scenarios.vm_name(index % RUNNING_VMS), "port": 22, "duration": "PT2H"}


@dataclass
class Outcome:
    """One member's grant request: the answer (after polling a 202), and their revoke if any."""

    member: crowd.Member
    ask: dict[str, Any]
    status: int  # the first answer's status
    body: dict[str, Any]  # the last answer's body (a 202 polled until no longer pending)
    answered: float  # when the request ended (the poll that saw it leave pending, for a 202)
    revoke_sent: float | None = None
    revoke_status: int | None = None
    revoke_body: dict[str, Any] = field(default_factory=dict)
    revoke_answered: float | None = None

    @property
    def active(self) -> bool:
        """Granted: 201/200, or 202 polled to active."""
        return self.status in (200, 201, 202) and self.body.get("status") == "active"

    @property
    def closed_cleanly(self) -> bool:
        """Revoked, and the answer came after its NSG pass took the source out."""
        warnings = " ".join(self.revoke_body.get("warnings") or [])
        return self.revoke_status == 200 and CLOSE_PENDING not in warnings


@dataclass
class LoadRun:
    """Everything one mode's run observed."""

    mode: str
    outcomes: list[Outcome]
    states: list[NsgState] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)  # the duration of every HTTP answer
    sweeps: list[tuple[float, float]] = field(default_factory=list)  # (started, ended) of every sweep
    sweep_errors: list[str] = field(default_factory=list)
    final_nsg: dict[str, Any] = field(default_factory=dict)
    initial_nsg: dict[str, Any] = field(default_factory=dict)
    unsettled_after_grants: list[str] = field(default_factory=list)
    unsettled_after_revokes: list[str] = field(default_factory=list)
    expiry_sweeps_started: float = float("inf")
    accepted_puts: int = 0
    broker_logs: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def granted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.active]

    def answered(self) -> list[Outcome]:
        """Every outcome (a fresh broker's cold start no longer races the SDK: see test_cold_start.py)."""
        return list(self.outcomes)

    def timed(self, call: Callable[[], httpx.Response]) -> httpx.Response:
        """Make one HTTP call, recording how long its answer took."""
        started = time.monotonic()
        response = call()
        with self.lock:
            self.answers.append(time.monotonic() - started)
        return response

    def sweep(self, sweeper: Any) -> None:
        """Run one sweep, recording when it ran and what it could not do."""
        started = time.monotonic()
        errors = sweeper.run().errors
        with self.lock:
            self.sweeps.append((started, time.monotonic()))
            self.sweep_errors.extend(errors)


def _post_grant(
    run: LoadRun, url: str, issuer: Any, who: crowd.Member, *, ask: dict[str, Any], start: threading.Event
) -> Outcome:
    with httpx.Client(base_url=url, headers=crowd.headers(issuer, who), timeout=REQUEST_TIMEOUT_S) as client:
        start.wait()
        response = run.timed(lambda: client.post("/api/v1/grants", json=ask))
        body = response.json()
        if response.status_code == 202:
            location = response.headers["Location"]
            while body.get("status") == "pending":
                time.sleep(min(float(response.headers.get("Retry-After") or 1), 1.0))
                body = run.timed(lambda: client.get(location)).json()
    return Outcome(who, ask, response.status_code, body, time.monotonic())


def _revoke(run: LoadRun, url: str, issuer: Any, outcome: Outcome, start: threading.Event) -> None:
    with httpx.Client(
        base_url=url, headers=crowd.headers(issuer, outcome.member), timeout=REQUEST_TIMEOUT_S
    ) as client:
        start.wait()
        outcome.revoke_sent = time.monotonic()
        response = run.timed(lambda: client.delete(f"/api/v1/grants/{outcome.body['id']}"))
        outcome.revoke_answered = time.monotonic()
        outcome.revoke_status = response.status_code
        outcome.revoke_body = response.json()


@pytest.fixture(scope="module")
def load_run(
    load_mode: str, load_brokers, load_admin, load_parts, *, load_states: NsgStates, load_summary, issuer
) -> LoadRun:
    """A crowd's concurrent grants over three brokers; two thirds revoked concurrently (each through another
    broker than the one that granted it) while two sweepers loop; then three overlapping sweeps after every
    expiry."""
    began = time.monotonic()
    people = crowd.crowd(PEOPLE)
    run = LoadRun(load_mode, [], initial_nsg=load_admin.nsg(scenarios.SUBNET_NSG))
    start = threading.Event()
    with ThreadPoolExecutor(max_workers=PEOPLE) as pool:
        futures = [
            pool.submit(
                _post_grant, run, load_brokers[i % BROKERS].url, issuer, who, ask=wish(i), start=start
            )
            for i, who in enumerate(people)
        ]
        time.sleep(0.5)  # let every client get ready, then release them together
        start.set()
        run.outcomes = [f.result() for f in futures]
    run.unsettled_after_grants = _settle(load_admin, run, revoked=False)

    to_revoke = [o for i, o in enumerate(run.granted) if i % 3 != 0]
    start, done = threading.Event(), threading.Event()
    sweepers = [threading.Thread(target=_sweep_until, args=(run, load_parts, done)) for _ in range(2)]
    for thread in sweepers:
        thread.start()
    with ThreadPoolExecutor(max_workers=max(len(to_revoke), 1)) as pool:
        revokes = [
            pool.submit(_revoke, run, load_brokers[(o.member.index + 1) % BROKERS].url, issuer, o, start)
            for o in to_revoke
        ]
        time.sleep(0.5)
        start.set()
        for future in revokes:
            future.result()
    done.set()
    for thread in sweepers:
        thread.join(timeout=REQUEST_TIMEOUT_S)
    # Closes are recorded before their NSG passes and a pass that wrote reads the store again, so the NSG is
    # already right here; one more sweep must find nothing to take out.
    run.sweep(load_parts(lambda: datetime.now(UTC)).sweeper)
    run.unsettled_after_revokes = _settle(load_admin, run, revoked=True)
    run.expiry_sweeps_started = time.monotonic()

    after_all = max((_expiry(o) for o in run.granted), default=datetime.now(UTC)) + timedelta(seconds=1)
    final = [
        threading.Thread(target=run.sweep, args=(load_parts(lambda: after_all).sweeper,)) for _ in range(3)
    ]
    for thread in final:
        thread.start()
    for thread in final:
        thread.join(timeout=REQUEST_TIMEOUT_S)
    run.states = load_states.states
    run.final_nsg = load_admin.nsg(scenarios.SUBNET_NSG)
    run.broker_logs = "".join(
        b.api_log.read_text(errors="replace") for b in load_brokers if b.api_log.exists()
    )
    _summarize(run, load_admin, load_summary, time.monotonic() - began)
    return run


def _sweep_until(run: LoadRun, load_parts: Any, done: threading.Event) -> None:
    sweeper = load_parts(lambda: datetime.now(UTC)).sweeper
    while not done.is_set():
        run.sweep(sweeper)


def _summarize(run: LoadRun, admin: Any, summary: ModeSummary, seconds: float) -> None:
    puts = [
        r for r in admin.requests() if r["method"] == "PUT" and "networksecuritygroups/" in r["path"].lower()
    ]
    summary.people = len(run.outcomes)
    summary.granted = len(run.granted)
    summary.accepted_202 = sum(1 for o in run.outcomes if o.status == 202)
    summary.refused = len(run.outcomes) - summary.granted
    summary.longest_answer_s = max(run.answers, default=0.0)
    summary.states = len(run.states)
    summary.nsg_puts = len(puts)
    summary.refused_puts = sum(1 for r in puts if r["status"] in (409, 412, 429))
    run.accepted_puts = sum(1 for r in puts if r["status"] in (200, 201, 202))
    summary.seconds = seconds
    failed = Counter(
        f"{o.status} {o.body.get('error', {}).get('code', o.body.get('status'))}"
        for o in run.outcomes
        if not o.active and o.ask["vm"] != STOPPED_VM and o.ask.get("duration") != "PT9H"
    )
    if failed:
        summary.notes.append(f"{run.mode}: refused outside policy: {dict(failed)}")


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


def _foreign(nsg: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k != "etag"} for r in _rules(nsg) if not r["name"].startswith("jit-")
    ]


def _sources_for(nsg: dict[str, Any], private_ip: str, port: int) -> set[str]:
    found: set[str] = set()
    for rule in _broker_rules(nsg):
        props = rule["properties"]
        if props.get("destinationAddressPrefix") == private_ip and props.get("destinationPortRange") == str(
            port
        ):
            found |= set(props.get("sourceAddressPrefixes") or [props.get("sourceAddressPrefix")])
    return found


def _all_sources(nsg: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for rule in _broker_rules(nsg):
        props = rule["properties"]
        found |= set(props.get("sourceAddressPrefixes") or [props.get("sourceAddressPrefix")])
    return found


def _gone_from(run: LoadRun, outcome: Outcome) -> float:
    """From when on the outcome's source must be absent from every published state (inf: no bound here)."""
    if outcome.active and outcome.revoke_sent is None:
        return float("inf")  # open until it expires: the final sweeps' check
    if outcome.active and outcome.closed_cleanly:
        assert outcome.revoke_answered is not None
        return outcome.revoke_answered
    closed = outcome.revoke_answered if outcome.active else outcome.answered
    assert closed is not None
    return min((ended for began, ended in run.sweeps if began > closed), default=float("inf"))


# ---------------------------------------------------------------------------------------------- answers


def test_every_request_ends_granted_or_cleanly_refused(load_run: LoadRun) -> None:
    for outcome in load_run.answered():
        if outcome.status in (200, 201, 202):
            assert outcome.body["status"] == "active", (outcome.status, outcome.body)
            assert outcome.body["source"] == outcome.member.source
            continue
        assert 400 <= outcome.status < 500 or outcome.status in (502, 503), (outcome.status, outcome.body)
        error = outcome.body["error"]
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)
        assert error["message"]


def test_policy_refusals_are_the_ones_policy_demands(load_run: LoadRun) -> None:
    for outcome in load_run.answered():
        if outcome.ask["vm"] == STOPPED_VM:
            assert (outcome.status, outcome.body["error"]["code"]) == (409, "vm_not_running")
        elif outcome.ask.get("duration") == "PT9H":
            assert (outcome.status, outcome.body["error"]["code"]) == (400, "invalid_request")
        else:
            assert outcome.status in (201, 202, 502, 503), (outcome.status, outcome.body)
    assert len(load_run.granted) >= PEOPLE // 2


def test_no_http_answer_takes_longer_than_25_seconds(load_run: LoadRun) -> None:
    assert load_run.answers
    assert max(load_run.answers) <= ANSWER_BOUND_S


# ---------------------------------------------------------------------------------------------- every moment


def test_every_write_arm_accepted_shows_in_the_recorded_states(load_run: LoadRun) -> None:
    assert load_run.accepted_puts > 0
    assert len(load_run.states) >= load_run.accepted_puts  # each accepted write publishes its new state


def test_a_source_is_in_its_rule_at_every_moment_its_grant_is_open(load_run: LoadRun) -> None:
    checked, wrong = 0, []
    for outcome in load_run.granted:
        ends = outcome.revoke_sent if outcome.revoke_sent is not None else load_run.expiry_sweeps_started
        ip = outcome.body["connect"]["private_ip"]
        for state in load_run.states:
            if outcome.answered < state.at < ends:
                checked += 1
                if outcome.member.source not in _sources_for(state.nsg, ip, 22):
                    wrong.append(
                        f"{outcome.body['id']} open but missing {state.at - outcome.answered:.2f}s in"
                    )
    assert checked > 0
    assert wrong == []


def test_no_closed_grant_s_source_stays_after_its_close_and_one_pass(load_run: LoadRun) -> None:
    checked, wrong = 0, []
    for outcome in load_run.outcomes:
        if outcome.ask["vm"] == STOPPED_VM or outcome.ask.get("duration") == "PT9H":
            gone_from = float("-inf")  # refused by policy: never recorded, never in a rule
        else:
            gone_from = _gone_from(load_run, outcome)
        for state in load_run.states:
            if state.at > gone_from:
                checked += 1
                if outcome.member.source in _all_sources(state.nsg):
                    wrong.append(
                        f"{outcome.member.source} present {state.at - gone_from:.2f}s after its close"
                    )
    assert checked > 0
    assert wrong == []


def test_no_two_rules_ever_share_a_priority_and_direction(load_run: LoadRun) -> None:
    for state in load_run.states:
        seen = Counter((r["properties"]["direction"], r["properties"]["priority"]) for r in _rules(state.nsg))
        assert [key for key, n in seen.items() if n > 1] == [], state.at


def test_the_rules_the_broker_did_not_write_are_intact_at_every_moment(load_run: LoadRun) -> None:
    initial = _foreign(load_run.initial_nsg)
    for state in load_run.states:
        assert _foreign(state.nsg) == initial, state.at
    assert _foreign(load_run.final_nsg) == initial


# ---------------------------------------------------------------------------------------------- settled


def test_once_the_grants_settle_every_granted_source_is_in_its_rule(load_run: LoadRun) -> None:
    assert load_run.unsettled_after_grants == []


def test_after_the_revokes_and_one_sweep_revoked_sources_are_gone_and_the_others_remain(
    load_run: LoadRun,
) -> None:
    assert load_run.unsettled_after_revokes == []


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


def test_the_audit_trail_has_every_event(load_run: LoadRun, load_store) -> None:
    for outcome in load_run.granted:
        kinds = Counter(e.kind for e in load_store.audit_events(outcome.body["id"]))
        closing = "revoked" if outcome.revoke_sent is not None else "expired"
        assert kinds["requested"] == 1 and kinds["granted"] == 1, kinds
        assert kinds[closing] >= 1, kinds
    by_policy = {o.member.oid for o in load_run.outcomes if o.status in (400, 409)}
    denied = {e.principal for e in load_store.audit_events(limit=100_000) if e.kind == "denied"}
    assert by_policy <= denied
    for outcome in load_run.answered():
        if outcome.active or outcome.member.oid in by_policy:
            continue
        # refused after it was recorded (ARM gave up): the grant ended failed, with its reason and events
        (grant,) = load_store.list_for_principal(outcome.member.oid)
        assert grant.status is GrantStatus.FAILED and grant.reason, grant
        events = {e.kind for e in load_store.audit_events(grant.id)}
        assert {"requested", "failed"} <= events, events
