"""`202 Accepted`: the broker answers within 25 s and finishes a slow grant (or extension) in the background.

`jit` polls the grant (at its Location, after Retry-After) with its spinner until it is `active`, says why
when it ends `failed` instead, and gives up after `grant_wait`. The lab broker does not answer 202 yet, so
these run `jit` against the scripted fake broker (tests/cli/fakebroker.py).
"""

from __future__ import annotations

import json
import os
import signal

from tests.cli.conftest import Jit, end, wait_until
from tests.cli.fakebroker import GRANTS, FakeBroker, Reply


def via(port: int) -> list[str]:
    return ["--connect-host", "127.0.0.1", "--connect-port", str(port)]


def test_grant_accepted_is_polled_until_active_and_json_prints_the_final_grant(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.accepted(retry_after="0"))
    fake.on("GET", fake.grant_path, fake.answer("pending", retry_after="0"), fake.answer("active"))
    done = jit.run("grant", "web-01", "--port", "22", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    grant = json.loads(done.stdout)
    assert (grant["id"], grant["status"]) == (fake.grant_id, "active")
    assert len(fake.requests("GET", fake.grant_path)) == 2  # at the (relative) Location: pending, then active
    assert all(seen.authorization.startswith("Bearer ") for seen in fake.seen)
    assert "waiting for the broker to open port 22 on web-01" in done.stderr
    assert f"grant {fake.grant_id} is active after" in done.stderr
    assert fake.requests("DELETE") == []


def test_human_output_names_the_grant_once_active(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.accepted(retry_after="0"))
    done = jit.run("grant", "web-01", "--port", "22", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert f"Opened grant {fake.grant_id}: port 22 on web-01" in done.stdout
    assert "connect  127.0.0.1:22 as azureuser" in done.stdout


def test_a_grant_that_ends_failed_shows_the_reason_and_exits_8(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    reason = "ARM answered InternalServerError writing the NSG rule"
    fake.on("POST", GRANTS, fake.accepted(retry_after="0"))
    fake.on(
        "GET", fake.grant_path, fake.answer("pending", retry_after="0"), fake.answer("failed", reason=reason)
    )
    done = jit.run("grant", "web-01", "--port", "22", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 8, done.stderr
    assert reason in done.stderr
    error = json.loads(done.stdout)
    assert error["error"]["code"] == "grant_failed"
    assert error["error"]["exit_code"] == 8
    assert error["grant"]["status"] == "failed"


def test_a_grant_revoked_while_pending_is_a_failure_too(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.accepted(retry_after="0"))
    fake.on("GET", fake.grant_path, fake.answer("revoked", reason="revoked by an admin"))
    done = jit.run("grant", "web-01", "--port", "22", JIT_BROKER_URL=fake.url)
    assert done.returncode == 8, done.stderr
    assert "was revoked before it opened: revoked by an admin" in done.stderr


def test_a_grant_still_pending_after_grant_wait_says_so_and_how_to_check(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.accepted(retry_after="0"))
    fake.on("GET", fake.grant_path, fake.answer("pending", retry_after="0"))
    done = jit.run("grant", "web-01", "--port", "22", "--json", JIT_BROKER_URL=fake.url, JIT_GRANT_WAIT="2s")
    assert done.returncode == 11, done.stderr
    assert f"grant {fake.grant_id} is still pending after 2s" in done.stderr
    assert "jit ls --status pending" in done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "grant_pending"
    assert len(fake.requests("GET", fake.grant_path)) >= 2
    assert fake.requests("DELETE") == []  # `jit grant` leaves it: the hint says how to check or close it


def test_retry_after_is_honoured_and_two_seconds_is_the_default(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.accepted(retry_after="1"))
    fake.on("GET", fake.grant_path, fake.answer("pending"), fake.answer("active"))
    done = jit.run("grant", "web-01", "--port", "22", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    (post,) = fake.requests("POST", GRANTS)
    first, second = fake.requests("GET", fake.grant_path)
    assert 0.9 <= first.at - post.at < 1.9  # Retry-After: 1
    assert 1.9 <= second.at - first.at < 3.0  # no Retry-After: 2 s


def test_a_location_on_another_origin_is_not_followed(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    port = fake.url.rsplit(":", 1)[1]
    elsewhere = f"http://localhost:{port}{fake.grant_path}"  # the same server under another name
    fake.on("POST", GRANTS, fake.accepted(location=elsewhere, retry_after="0"))
    done = jit.run("grant", "web-01", "--port", "22", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert {seen.host for seen in fake.seen} == {f"127.0.0.1:{port}"}  # the token went only to the broker


def test_extend_accepted_is_polled_until_active(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("POST", f"{fake.grant_path}/extend", fake.accepted(retry_after="0"))
    done = jit.run("extend", fake.grant_id, "--duration", "1h", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "active"
    assert len(fake.requests("GET", fake.grant_path)) == 1
    assert f"waiting for the broker to extend grant {fake.grant_id}" in done.stderr


# -- jit ssh ------------------------------------------------------------------------------------------------


def test_ssh_waits_for_an_accepted_grant_then_connects_and_revokes(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.accepted(retry_after="0"))
    fake.on("GET", fake.grant_path, fake.answer("pending", retry_after="0"), fake.answer("active"))
    done = jit.run("ssh", "web-01", *via(listening_port), "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert jit.recorded() == ["ssh", "-p", str(listening_port), "--", "azureuser@127.0.0.1"]
    summary = json.loads(done.stdout)
    assert summary["grant"]["status"] == "active"
    assert summary["revoked"] is True
    assert len(fake.requests("DELETE", fake.grant_path)) == 1
    assert "The broker is opening port 22 on web-01" in done.stderr


def test_ctrl_c_while_the_grant_is_pending_revokes_it(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.accepted(retry_after="0"))
    fake.on("GET", fake.grant_path, fake.answer("pending", retry_after="0"))
    session = jit.start("ssh", "web-01", *via(listening_port), JIT_BROKER_URL=fake.url)
    wait_until(lambda: fake.requests("GET", fake.grant_path), what="jit to poll the pending grant")
    os.killpg(session.pid, signal.SIGINT)
    code, _, err = end(session, jit)
    assert code == 130, err
    assert jit.recorded() is None
    assert len(fake.requests("DELETE", fake.grant_path)) == 1
    assert f"Revoked grant {fake.grant_id}" in err


def test_ssh_whose_grant_fails_exits_8_without_running_the_client(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.accepted(retry_after="0"))
    fake.on("GET", fake.grant_path, fake.answer("failed", reason="no NSG rule priority left"))
    done = jit.run("ssh", "web-01", *via(listening_port), JIT_BROKER_URL=fake.url)
    assert done.returncode == 8, done.stderr
    assert "no NSG rule priority left" in done.stderr
    assert jit.recorded() is None
    assert fake.requests("DELETE") == []  # a failed grant has nothing left to close


def test_ssh_gives_up_on_a_grant_still_pending_and_revokes_it(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.accepted(retry_after="0"))
    fake.on("GET", fake.grant_path, fake.answer("pending", retry_after="0"))
    done = jit.run("ssh", "web-01", *via(listening_port), JIT_BROKER_URL=fake.url, JIT_GRANT_WAIT="1s")
    assert done.returncode == 11, done.stderr
    assert "still pending after 1s" in done.stderr
    assert jit.recorded() is None
    assert len(fake.requests("DELETE", fake.grant_path)) == 1


def test_a_renewal_answered_202_is_polled_and_the_session_goes_on(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    from datetime import timedelta

    fake = fake_broker
    fake.lifetime = timedelta(seconds=3)
    fake.on("POST", GRANTS, fake.answer("active", code=201))
    fake.on("POST", f"{fake.grant_path}/extend", fake.accepted(retry_after="0"))
    session = jit.start(
        "ssh", "web-01", *via(listening_port), "--json", JIT_BROKER_URL=fake.url, **jit.hold_sessions()
    )
    wait_until(lambda: len(fake.requests("GET", fake.grant_path)) >= 2, timeout=20, what="two renewals")
    assert session.poll() is None
    jit.end_sessions()
    code, out, err = end(session, jit)
    assert code == 0, err
    assert json.loads(out)["renewals"] >= 2
    assert "warning" not in err


def test_a_201_answer_is_not_polled(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, Reply(201, fake.grant("active")))
    done = jit.run("grant", "web-01", "--port", "22", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert fake.requests("GET") == []
