"""Approvals: a VM tagged `jit-approval: required` opens only when a second person says yes.

`jit grant` / `jit ssh` on such a VM say who can approve and what to pass on, wait with the spinner
(bounded by the request's `wait_until`, not `grant_wait`), connect once approved, and end with exit 12
(denied) or 13 (expired, withdrawn); Ctrl-C withdraws the request. `jit approve`, `jit deny`,
`jit withdraw` and `jit ls --awaiting` are the approver's and the requester's side. Timings and odd
endings run against the scripted fake broker (tests/cli/fakebroker.py); bob asking and carol approving run
against the lab broker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jitcli.api import Answer
from jitcli.errors import ApprovalDenied, GrantFailed, GrantPending, NotApproved
from jitcli.models import Grant
from jitcli.pending import APPROVAL_MARGIN_S, approval_bound, ended, settle

from tests.cli.conftest import BrokerApi, Jit, end, jit_command, wait_until
from tests.cli.fakebroker import GRANTS, FakeBroker, Reply, iso

APPROVER = "ca201000-0000-4000-8000-000000000003"


def via(port: int) -> list[str]:
    return ["--connect-host", "127.0.0.1", "--connect-port", str(port)]


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# -- settle: the bound and the endings, without a broker -----------------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def grant_json(status: str, **approval: Any) -> dict[str, Any]:
    return {
        "id": "g-1",
        "status": status,
        "vm": "prod-01",
        "port": 22,
        "source": "203.0.113.11/32",
        "expires_at": iso(NOW + timedelta(hours=1)),
        "approval": {
            "approver_role": "JIT.Approver",
            "wait_until": iso(NOW + timedelta(minutes=30)) if status == "awaiting_approval" else None,
            "requested_duration": "PT10M",
            "decided_by": None,
            "decided_by_name": None,
            "decided_at": None,
            "reason": None,
            **approval,
        },
    }


def reply(status: str, **approval: Any) -> tuple[Grant, Answer]:
    """The grant in `status`, answered at NOW with the broker's Retry-After for a waiting request (5 s)."""
    body = grant_json(status, **approval)
    return Grant.from_json(body), Answer(200, body, NOW, retry_after=5.0)


class ScriptedClient:
    def __init__(self, *answers: tuple[Grant, Answer]) -> None:
        self.answers = list(answers)

    def poll_grant(self, grant_id: str, location: str | None = None) -> tuple[Grant, Answer]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(client: ScriptedClient, time: FakeTime, timeout: float = 60.0) -> tuple[Grant, Answer]:
    grant, answer = reply("awaiting_approval")
    return settle(
        client,  # type: ignore[arg-type]
        grant,
        answer,
        timeout=timeout,
        clock=time.clock,
        sleep=time.sleep,
    )


def test_the_approval_wait_is_bounded_by_wait_until_by_the_brokers_clock_plus_a_margin() -> None:
    grant, answer = reply("awaiting_approval")
    assert approval_bound(grant, answer) == 30 * 60 + APPROVAL_MARGIN_S
    time = FakeTime()
    with pytest.raises(NotApproved) as caught:
        run(
            ScriptedClient(reply("awaiting_approval")), time, timeout=60.0
        )  # grant_wait does not cut it short
    assert time.now == pytest.approx(30 * 60 + APPROVAL_MARGIN_S)
    assert caught.value.code == "approval_timeout" and int(caught.value.exit_code) == 13
    assert "2030-01-01 12:30:00Z" in caught.value.message


def test_once_approved_the_opening_gets_grant_wait_from_the_approval() -> None:
    time = FakeTime()
    approved = {"decided_at": iso(NOW), "decided_by_name": "carol@contoso.test"}
    client = ScriptedClient(
        reply("awaiting_approval"), reply("awaiting_approval"), reply("pending", **approved)
    )
    with pytest.raises(GrantPending):
        run(client, time, timeout=60.0)
    assert time.now == pytest.approx(15.0 + 60.0)  # three polls 5 s apart, then grant_wait


def test_approved_then_active_is_returned() -> None:
    approved = {"decided_at": iso(NOW), "decided_by_name": "carol@contoso.test"}
    grant, _ = run(ScriptedClient(reply("awaiting_approval"), reply("active", **approved)), FakeTime())
    assert grant.status == "active" and grant.approval and grant.approval.decider == "carol@contoso.test"


@pytest.mark.parametrize(
    ("status", "approval", "error", "exit_code", "code"),
    [
        (
            "denied",
            {"decided_at": "2030-01-01T12:01:00Z", "reason": "no"},
            ApprovalDenied,
            12,
            "approval_denied",
        ),
        ("expired", {}, NotApproved, 13, "approval_expired"),
        ("withdrawn", {}, NotApproved, 13, "approval_withdrawn"),
        ("failed", {"decided_at": "2030-01-01T12:01:00Z"}, GrantFailed, 8, "grant_failed"),
        ("revoked", {"decided_at": "2030-01-01T12:01:00Z"}, GrantFailed, 8, "grant_failed"),
    ],
)
def test_how_a_request_ended_decides_the_error_and_exit_code(
    status: str, approval: dict[str, Any], error: type[GrantFailed], exit_code: int, code: str
) -> None:
    grant = Grant.from_json(grant_json(status, **approval))
    failure = ended(grant)
    assert type(failure) is error
    assert (int(failure.exit_code), failure.code) == (exit_code, code)
    assert json.loads(json.dumps(failure.to_json()))["grant"]["status"] == status


def test_the_approvers_words_cannot_steer_the_terminal() -> None:
    grant = Grant.from_json(grant_json("denied", decided_at=iso(NOW), reason="no\x1b[2J\nreally"))
    message = ended(grant).message
    assert "\x1b" not in message and "\n" not in message
    assert message.endswith("no\\x1b[2J\\nreally")


def test_a_grant_without_approval_is_unchanged() -> None:
    body = grant_json("failed")
    del body["approval"]
    grant = Grant.from_json(body)
    assert grant.approval is None and type(ended(grant)) is GrantFailed


# -- jit grant on an approval VM (fake broker) ---------------------------------------------------------------


def test_grant_says_who_can_approve_waits_and_prints_the_approved_grant(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.awaiting(vm="prod-01"))
    fake.on(
        "GET",
        fake.grant_path,
        fake.awaiting(code=200, vm="prod-01"),
        fake.awaiting(code=200, vm="prod-01"),
        fake.answer("active", vm="prod-01", approval=fake.decided("change CHG-42")),
    )
    done = jit.run(
        "grant", "prod-01", "--port", "22", "--json", JIT_BROKER_URL=fake.url, JIT_GRANT_WAIT="1s"
    )  # grant_wait does not bound the wait for an approver
    assert done.returncode == 0, done.stderr
    grant = json.loads(done.stdout)
    assert grant["status"] == "active"
    assert grant["approval"]["decided_by_name"] == "carol@contoso.test"
    err = done.stderr
    assert (
        f"prod-01 needs approval: grant {fake.grant_id} asks for port 22 for 10m, counted from the approval"
        in err
    )
    assert "anyone with the app role JIT.Approver, except you" in err
    assert f"jit approve {fake.grant_id}" in err
    assert "Ctrl-C withdraws the request" in err
    assert f"grant {fake.grant_id} approved by carol@contoso.test after" in err and ": change CHG-42" in err
    assert len(fake.requests("GET", fake.grant_path)) == 3
    assert fake.requests("POST", f"{fake.grant_path}/withdraw") == []

    fake.on("POST", GRANTS, fake.awaiting(vm="prod-01"))
    fake.on("GET", fake.grant_path, fake.answer("active", vm="prod-01", approval=fake.decided("ok")))
    human = jit.run("grant", "prod-01", "--port", "22", JIT_BROKER_URL=fake.url)
    assert human.returncode == 0, human.stderr
    assert f"Opened grant {fake.grant_id}: port 22 on prod-01" in human.stdout
    assert "\ndecision approved by carol@contoso.test at " in human.stdout and ": ok" in human.stdout


def test_a_denied_request_names_the_approver_and_the_reason_and_exits_12(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.awaiting())
    fake.on("GET", fake.grant_path, fake.answer("denied", approval=fake.decided("not during the freeze")))
    done = jit.run("grant", "web-01", "--port", "22", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 12, done.stderr
    assert "denied by carol@contoso.test: not during the freeze" in done.stderr
    error = json.loads(done.stdout)
    assert (error["error"]["code"], error["error"]["exit_code"]) == ("approval_denied", 12)
    assert error["grant"]["status"] == "denied"
    assert error["grant"]["approval"]["reason"] == "not during the freeze"


def test_an_unanswered_request_that_expired_says_so_and_exits_13(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    reason = "nobody approved the request within PT1H"
    fake.on("POST", GRANTS, fake.awaiting())
    fake.on("GET", fake.grant_path, fake.answer("expired", reason=reason, approval=fake.approval()))
    done = jit.run("grant", "web-01", "--port", "22", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 13, done.stderr
    assert f"nobody approved grant {fake.grant_id} for port 22 on web-01 in time: {reason}" in done.stderr
    assert f"grant {fake.grant_id} was not approved: it is expired" in done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "approval_expired"


def test_a_request_withdrawn_elsewhere_says_so_and_exits_13(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.awaiting())
    fake.on("GET", fake.grant_path, fake.answer("withdrawn", reason="withdrawn", approval=fake.approval()))
    done = jit.run("grant", "web-01", "--port", "22", JIT_BROKER_URL=fake.url)
    assert done.returncode == 13, done.stderr
    assert "was withdrawn before anyone approved it" in done.stderr


def test_a_request_still_waiting_past_wait_until_and_the_margin_ends_the_wait(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    fake.approval_wait = timedelta(seconds=-(APPROVAL_MARGIN_S - 2))  # its wait ends 2 s after the margin
    fake.on("POST", GRANTS, fake.awaiting())
    fake.on("GET", fake.grant_path, fake.awaiting(code=200))
    done = jit.run("grant", "web-01", "--port", "22", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 13, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "approval_timeout"
    assert f"grant {fake.grant_id} is still waiting for an approver after" in done.stderr
    assert fake.requests("POST", f"{fake.grant_path}/withdraw") == []  # `jit grant` leaves it to the broker


def test_ctrl_c_while_grant_waits_for_an_approver_withdraws_the_request(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.awaiting())
    fake.on("GET", fake.grant_path, fake.awaiting(code=200))
    fake.on("POST", f"{fake.grant_path}/withdraw", fake.answer("withdrawn", reason="withdrawn"))
    waiting = jit.start("grant", "web-01", "--port", "22", JIT_BROKER_URL=fake.url)
    wait_until(lambda: fake.requests("GET", fake.grant_path), what="jit to poll the waiting request")
    os.killpg(waiting.pid, signal.SIGINT)
    code, _, err = end(waiting, jit)
    assert code == 130, err
    assert len(fake.requests("POST", f"{fake.grant_path}/withdraw")) == 1
    assert fake.requests("DELETE") == []
    assert f"Withdrew request {fake.grant_id} for port 22 on web-01: nobody can approve it now" in err


def test_ctrl_c_just_after_an_approval_revokes_the_grant_instead(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.awaiting())
    fake.on("GET", fake.grant_path, fake.awaiting(code=200))
    fake.on(
        "POST",
        f"{fake.grant_path}/withdraw",
        fake.error(409, "not_awaiting_approval", "grant g-fake0001 is already active: revoke it instead"),
    )
    waiting = jit.start("grant", "web-01", "--port", "22", JIT_BROKER_URL=fake.url)
    wait_until(lambda: fake.requests("GET", fake.grant_path), what="jit to poll the waiting request")
    os.killpg(waiting.pid, signal.SIGINT)
    code, _, err = end(waiting, jit)
    assert code == 130, err
    assert len(fake.requests("DELETE", fake.grant_path)) == 1
    assert f"Revoked grant {fake.grant_id}: port 22 on web-01 is closed again" in err


# -- jit ssh on an approval VM (fake broker) -----------------------------------------------------------------


def test_ssh_waits_for_the_approval_then_the_door_then_connects_and_revokes(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.awaiting(vm="prod-01"))
    approval = fake.decided()
    fake.on(
        "GET",
        fake.grant_path,
        fake.awaiting(code=200, vm="prod-01"),
        fake.answer("pending", retry_after="0", vm="prod-01", approval=approval),
        fake.answer("active", vm="prod-01", approval=approval),
    )
    done = jit.run("ssh", "prod-01", *via(listening_port), "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert jit.recorded() == ["ssh", "-p", str(listening_port), "--", "azureuser@127.0.0.1"]
    summary = json.loads(done.stdout)
    assert summary["grant"]["status"] == "active" and summary["revoked"] is True
    assert summary["withdrawn"] is False
    err = done.stderr
    assert "prod-01 needs approval" in err and f"jit approve {fake.grant_id}" in err
    assert f"grant {fake.grant_id} approved by carol@contoso.test after" in err
    assert "waiting for the broker to open port 22 on prod-01" in err
    assert f"grant {fake.grant_id} is active: port 22 on prod-01 until" in err
    assert len(fake.requests("DELETE", fake.grant_path)) == 1


def test_ssh_denied_exits_12_without_running_the_client(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.awaiting())
    fake.on("GET", fake.grant_path, fake.answer("denied", approval=fake.decided("use staging")))
    done = jit.run("ssh", "web-01", *via(listening_port), "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 12, done.stderr
    assert jit.recorded() is None
    assert "carol@contoso.test denied grant" in done.stderr and "use staging" in done.stderr
    body = json.loads(done.stdout)
    assert body["error"]["code"] == "approval_denied" and body["grant"]["status"] == "denied"
    assert fake.requests("DELETE") == [] and fake.requests("POST", f"{fake.grant_path}/withdraw") == []


def test_ctrl_c_while_ssh_waits_for_an_approver_withdraws_the_request(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.awaiting())
    fake.on("GET", fake.grant_path, fake.awaiting(code=200))
    fake.on("POST", f"{fake.grant_path}/withdraw", fake.answer("withdrawn", reason="withdrawn"))
    session = jit.start("ssh", "web-01", *via(listening_port), "--json", JIT_BROKER_URL=fake.url)
    wait_until(lambda: fake.requests("GET", fake.grant_path), what="jit to poll the waiting request")
    os.killpg(session.pid, signal.SIGINT)
    code, out, err = end(session, jit)
    assert code == 130, err
    assert jit.recorded() is None
    assert len(fake.requests("POST", f"{fake.grant_path}/withdraw")) == 1
    assert fake.requests("DELETE") == []
    assert f"Withdrew request {fake.grant_id}" in err
    summary = json.loads(out)
    assert summary["withdrawn"] is True and summary["grant"]["status"] == "withdrawn"
    assert summary["exit_code"] == 130


# -- approve, deny, withdraw, ls --awaiting (fake broker) ---------------------------------------------------


def test_approve_sends_the_reason_and_shows_the_grant_and_the_decision(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    approved = fake.answer(
        "active", vm="prod-01", principal_name="bob@contoso.test", approval=fake.decided("change CHG-42")
    )
    fake.on("POST", f"{fake.grant_path}/approve", approved)
    done = jit.run("approve", fake.grant_id, "--reason", "change CHG-42", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    (seen,) = fake.requests("POST", f"{fake.grant_path}/approve")
    assert seen.body == {"reason": "change CHG-42"}
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"Approved grant {fake.grant_id} of bob@contoso.test: port 22 on prod-01 is open for 127.0.0.1/32"
    )
    assert lines[1].startswith("until     ") and ("(in 10m" in lines[1] or "(in 9m" in lines[1])
    assert lines[2].startswith("decision  approved by carol@contoso.test at ") and lines[2].endswith(
        ": change CHG-42"
    )

    fake.on("POST", f"{fake.grant_path}/approve", fake.answer("pending", 202, approval=fake.decided()))
    pending = jit.run("approve", fake.grant_id, "--json", JIT_BROKER_URL=fake.url)
    assert pending.returncode == 0, pending.stderr
    assert json.loads(pending.stdout)["status"] == "pending"
    assert fake.requests("POST", f"{fake.grant_path}/approve")[-1].body == {}


@pytest.mark.parametrize(
    ("status", "code", "exit_code"),
    [(403, "forbidden", 4), (409, "not_awaiting_approval", 6), (404, "not_found", 5)],
)
def test_approve_refused_exits_with_the_documented_code(
    jit: Jit, fake_broker: FakeBroker, status: int, code: str, exit_code: int
) -> None:
    fake = fake_broker
    message = "nobody approves their own request"
    fake.on("POST", f"{fake.grant_path}/approve", fake.error(status, code, message))
    done = jit.run("approve", fake.grant_id, "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == exit_code, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == code
    assert message in done.stderr


def test_deny_needs_a_reason_and_sends_it(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    for missing in ((), ("--reason", "  ")):
        refused = jit.run("deny", fake.grant_id, *missing, JIT_BROKER_URL=fake.url)
        assert refused.returncode == 2, refused.stderr
    assert fake.seen == []
    denied = fake.answer(
        "denied", principal_name="bob@contoso.test", approval=fake.decided("not during the freeze")
    )
    fake.on("POST", f"{fake.grant_path}/deny", denied)
    done = jit.run("deny", fake.grant_id, "--reason", "not during the freeze", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert fake.requests("POST", f"{fake.grant_path}/deny")[0].body == {"reason": "not during the freeze"}
    assert f"Denied grant {fake.grant_id} of bob@contoso.test: port 22 on web-01 stays closed" in done.stdout
    assert "decision  denied by carol@contoso.test at " in done.stdout
    as_json = jit.run("deny", fake.grant_id, "--reason", "no", "--json", JIT_BROKER_URL=fake.url)
    assert json.loads(as_json.stdout)["approval"]["decided_by_name"] == "carol@contoso.test"


def test_withdraw_says_what_happened_and_is_idempotent(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    path = f"{fake.grant_path}/withdraw"
    fake.on("POST", path, fake.answer("withdrawn", reason="withdrawn"), fake.answer("denied"))
    done = jit.run("withdraw", fake.grant_id, JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert f"Withdrew request {fake.grant_id} for port 22 on web-01" in done.stdout
    again = jit.run("withdraw", fake.grant_id, "--json", JIT_BROKER_URL=fake.url)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "denied"
    human = jit.run("withdraw", fake.grant_id, JIT_BROKER_URL=fake.url)
    assert f"Grant {fake.grant_id} is already denied: there is nothing to withdraw" in human.stdout
    fake.on("POST", path, fake.error(409, "not_awaiting_approval", "already active: revoke it instead"))
    active = jit.run("withdraw", fake.grant_id, JIT_BROKER_URL=fake.url)
    assert active.returncode == 6 and "revoke it instead" in active.stderr


def test_ls_awaiting_lists_every_page_with_requester_duration_and_justification(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    since = datetime.now(UTC) - timedelta(minutes=12)

    def waiting(grant_id: str, name: str, justification: str) -> dict[str, Any]:
        return fake.grant(
            "awaiting_approval",
            id=grant_id,
            vm="prod-01",
            principal_name=name,
            created_at=iso(since),
            justification=justification,
            approval=fake.approval(requested_duration="PT1H30M"),
        )

    fake.on(
        "GET",
        GRANTS,
        Reply(
            200,
            {"grants": [waiting("g-1", "bob@contoso.test", "INC-7: disk full")], "nextLink": f"{GRANTS}?c=2"},
        ),
        Reply(200, {"grants": [waiting("g-2", "Alice", "deploy\x1b[31m")], "nextLink": None}),
    )
    done = jit.run("ls", "--awaiting", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    first = fake.requests("GET", GRANTS)[0]
    assert "awaiting=me" in first.query
    header, *rows = done.stdout.splitlines()
    assert header.split() == [
        "ID", "REQUESTER", "VM", "PORT", "SOURCE", "DURATION", "WAITING", "SINCE", "JUSTIFICATION"
    ]  # fmt: skip
    assert rows[0].split()[:6] == ["g-1", "bob@contoso.test", "prod-01", "22", "127.0.0.1/32", "1h30m"]
    assert "(12m00s ago)" in rows[0] or "(12m01s ago)" in rows[0]
    assert rows[0].endswith("INC-7: disk full")
    assert rows[1].endswith("deploy\\x1b[31m")  # the broker's words cannot steer the terminal
    assert "jit approve ID" in done.stderr

    fake.on("GET", GRANTS, Reply(200, {"grants": [], "nextLink": None}))
    as_json = jit.run("ls", "--awaiting", "--json", JIT_BROKER_URL=fake.url)
    assert json.loads(as_json.stdout) == {"grants": []}
    assert jit.run("ls", "--awaiting", JIT_BROKER_URL=fake.url).stdout.strip() == "(none)"
    refused = jit.run("ls", "--awaiting", "--all", JIT_BROKER_URL=fake.url)
    assert refused.returncode == 2


def test_revoke_mine_withdraws_waiting_requests_too(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("GET", GRANTS, Reply(200, {"grants": [fake.grant("awaiting_approval")], "nextLink": None}))
    fake.on("DELETE", fake.grant_path, fake.answer("withdrawn", reason="withdrawn"))
    done = jit.run("revoke", "--mine", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert f"Withdrew request {fake.grant_id}" in done.stdout


# -- bob asks, carol decides (lab broker) --------------------------------------------------------------------


def bobs_waiting_request(api: BrokerApi) -> dict[str, Any]:
    found = wait_until(
        lambda: api.grants("bob", vm="prod-01", status="awaiting_approval"),
        what="bob's request for prod-01 to wait for an approver",
    )
    return dict(found[0])


def test_carol_approves_bobs_waiting_grant_and_its_clock_starts_at_the_approval(
    jit: Jit, api: BrokerApi
) -> None:
    waiting = jit.start(
        "grant", "prod-01", "--port", "22", "--duration", "10m", "--reason", "CHG-42 hotfix", "--json",
        user="bob",
    )  # fmt: skip
    request = bobs_waiting_request(api)
    wait_until(
        lambda: f"jit approve {request['id']}" in jit.stderr_so_far(), what="bob's jit to say what to pass on"
    )
    told = jit.stderr_so_far()
    assert "prod-01 needs approval" in told and "JIT.Approver" in told

    listed = jit.run("ls", "--awaiting", "--json", user="carol")
    assert listed.returncode == 0, listed.stderr
    (mine,) = [g for g in json.loads(listed.stdout)["grants"] if g["id"] == request["id"]]
    assert mine["principal_name"] == "bob@contoso.test" and mine["justification"] == "CHG-42 hotfix"
    table = jit.run("ls", "--awaiting", user="carol").stdout
    (row,) = [line for line in table.splitlines() if line.startswith(request["id"])]
    assert "bob@contoso.test" in row and "prod-01" in row and "10m" in row and "CHG-42 hotfix" in row
    assert jit.run("ls", "--awaiting", "--json", user="bob").stdout.count(request["id"]) == 0  # not his own
    own = jit.run("approve", request["id"], user="bob")
    assert own.returncode == 4, own.stderr

    approved = jit.run("approve", request["id"], "--reason", "on call", "--json", user="carol")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["status"] in ("pending", "active")

    code, out, err = end(waiting, jit)
    assert code == 0, err
    grant = json.loads(out)
    assert (grant["id"], grant["status"]) == (request["id"], "active")
    assert (
        grant["approval"]["decided_by_name"] == "carol@contoso.test"
        and grant["approval"]["reason"] == "on call"
    )
    assert parse(grant["expires_at"]) - parse(grant["approval"]["decided_at"]) == timedelta(minutes=10)
    assert "approved by carol@contoso.test" in err

    again = jit.run("approve", request["id"], user="carol")
    assert again.returncode == 6 and "not_awaiting_approval" in again.stderr


def test_carol_denies_and_bobs_ssh_exits_12_with_her_reason(
    jit: Jit, api: BrokerApi, listening_port: int
) -> None:
    session = jit.start("ssh", "prod-01", *via(listening_port), "--json", user="bob")
    request = bobs_waiting_request(api)
    denied = jit.run("deny", request["id"], "--reason", "not during the freeze", user="carol")
    assert denied.returncode == 0, denied.stderr
    assert "Denied grant" in denied.stdout and "bob@contoso.test" in denied.stdout

    code, out, err = end(session, jit)
    assert code == 12, err
    assert jit.recorded() is None
    assert "carol@contoso.test denied grant" in err and "not during the freeze" in err
    body = json.loads(out)
    assert body["error"]["code"] == "approval_denied" and body["grant"]["status"] == "denied"
    assert api.grant(request["id"])["status"] == "denied"


def test_bobs_ssh_connects_once_carol_approves_and_revokes_at_the_end(
    jit: Jit, api: BrokerApi, listening_port: int
) -> None:
    session = jit.start("ssh", "prod-01", *via(listening_port), "--json", user="bob")
    request = bobs_waiting_request(api)
    assert jit.recorded() is None
    assert jit.run("approve", request["id"], user="carol").returncode == 0
    code, out, err = end(session, jit)
    assert code == 0, err
    assert jit.recorded() == ["ssh", "-p", str(listening_port), "--", "azureuser@127.0.0.1"]
    summary = json.loads(out)
    assert summary["grant"]["id"] == request["id"] and summary["revoked"] is True
    assert api.grant(request["id"])["status"] == "revoked"


def test_ctrl_c_withdraws_bobs_waiting_request_at_the_broker(jit: Jit, api: BrokerApi) -> None:
    waiting = jit.start("grant", "prod-01", "--port", "22", user="bob")
    request = bobs_waiting_request(api)
    wait_until(lambda: "waiting for approval" in jit.stderr_so_far(), what="bob's jit to wait")
    os.killpg(waiting.pid, signal.SIGINT)
    code, _, err = end(waiting, jit)
    assert code == 130, err
    assert api.grant(request["id"])["status"] == "withdrawn"
    assert jit.run("approve", request["id"], user="carol").returncode == 6


# -- the command line ----------------------------------------------------------------------------------------


def test_help_names_the_approval_commands_and_their_exit_codes() -> None:
    done = subprocess.run([*jit_command(), "--help"], capture_output=True, text=True, timeout=60, check=True)
    for word in ("approve", "deny", "withdraw", "jit ls --awaiting"):
        assert word in done.stdout
    assert "12   an approver denied the request" in done.stdout
    assert "13   the request ended unapproved" in done.stdout
    deny = subprocess.run([*jit_command(), "deny", "--help"], capture_output=True, text=True, check=True)
    assert "--reason TEXT" in deny.stdout and "required" in deny.stdout
