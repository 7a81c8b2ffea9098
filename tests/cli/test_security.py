"""Items of the CLI's security review, each with the tests that failed before its fix."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from jitcli.api import check_broker_url, is_loopback
from jitcli.errors import InsecureBrokerUrl

from tests.cli.conftest import BrokerApi, Jit, end, wait_until
from tests.cli.fakebroker import GRANTS, FakeBroker, Reply

#: How the broker's revoke answer begins its warning when the NSG rule write failed (jitbroker.grants).
CLOSE_PENDING = (
    "the grant is closed, but its NSG rule could not be updated just now; the sweeper removes the source "
    "from the rule within one sweep interval"
)


def via(port: int) -> list[str]:
    return ["--connect-host", "127.0.0.1", "--connect-port", str(port)]


# -- no bearer token over plain http:// ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "[::1]", "localhost", "LOCALHOST", "[::ffff:127.0.0.1]"]
)
def test_http_is_accepted_for_a_broker_on_this_machine(host: str) -> None:
    assert check_broker_url(f"http://{host}:7071") == f"http://{host}:7071"


@pytest.mark.parametrize(
    "url",
    [
        "http://jit.contoso.com",
        "http://198.51.100.7:7071",
        "http://[2001:db8::1]:7071",
        "http://127.0.0.1.nip.io:7071",
        "http://localhost.contoso.com",
        "http://10.0.0.4",
        "ftp://jit.contoso.com",
        "jit.contoso.com",
    ],
)
def test_other_broker_urls_are_refused(url: str) -> None:
    with pytest.raises(InsecureBrokerUrl):
        check_broker_url(url)
    assert check_broker_url("https://jit.contoso.com") == "https://jit.contoso.com"
    assert not is_loopback("jit.contoso.com")


def test_jit_refuses_a_plain_http_broker_off_this_machine_before_sending_anything(jit: Jit) -> None:
    done = jit.run("whoami", "--json", JIT_BROKER_URL="http://jit.contoso.test")
    assert done.returncode == 1
    assert "clear text" in done.stderr
    assert "https://" in done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "insecure_broker_url"


def test_jit_talks_plain_http_to_localhost(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("GET", "/api/v1/whoami", Reply(200, {"principal": "alice", "roles": [], "address": "127.0.0.1"}))
    port = fake.url.rsplit(":", 1)[1]
    done = jit.run("whoami", "--json", JIT_BROKER_URL=f"http://localhost:{port}")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["principal"] == "alice"


# -- nothing from the broker becomes an ssh option ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "-oProxyCommand=touch /tmp/jit-pwned"),
        ("username", "azure user"),
        ("username", "azureuser\n"),
        ("host", "-oProxyCommand=touch /tmp/jit-pwned"),
        ("host", "web-01 -v"),
    ],
)
def test_an_unsafe_username_or_host_from_the_broker_is_refused_and_the_grant_revoked(
    jit: Jit, fake_broker: FakeBroker, listening_port: int, field: str, value: str
) -> None:
    said = "login name" if field == "username" else "host"
    fake = fake_broker
    fake.connect[field] = value
    fake.on("POST", GRANTS, fake.answer("active", code=201))
    target = via(listening_port) if field == "username" else ["--connect-port", str(listening_port)]
    done = jit.run("ssh", "web-01", *target, "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 1, done.stderr
    assert f"refusing the {said} {value!r} from the broker" in done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "unsafe_target"
    assert jit.recorded() is None  # ssh never ran
    assert len(fake.requests("DELETE", fake.grant_path)) == 1


def test_ssh_gets_a_double_dash_before_the_destination(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.answer("active", code=201))
    extra = ["-L", "8080:localhost:80", "-A", "uptime"]
    done = jit.run("ssh", "web-01", *via(listening_port), "--", *extra, JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    options, command = extra[:3], extra[3:]
    assert jit.recorded() == [
        "ssh",
        "-p",
        str(listening_port),
        *options,
        "--",
        "azureuser@127.0.0.1",
        *command,
    ]


# -- a door the sweeper still has to close ------------------------------------------------------------------


def test_revoke_says_the_door_closes_within_one_sweep_when_the_broker_warns_so(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    fake.on("DELETE", fake.grant_path, fake.answer("revoked", warnings=[CLOSE_PENDING]))
    done = jit.run("revoke", fake.grant_id, JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert "the door to port 22 on web-01 closes within one sweep" in done.stdout
    assert "closed again" not in done.stdout


def test_a_session_says_the_door_closes_within_one_sweep_when_the_broker_warns_so(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.answer("active", code=201))
    fake.on("DELETE", fake.grant_path, fake.answer("revoked", warnings=[CLOSE_PENDING]))
    done = jit.run("ssh", "web-01", *via(listening_port), JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert "the door to port 22 on web-01 closes within one sweep" in done.stderr
    assert "is closed again" not in done.stderr


def test_the_lab_brokers_own_warning_is_recognised(jit: Jit, api: BrokerApi, arm_admin: Any) -> None:
    granted = jit.run("grant", "db-01", "--port", "5432", "--duration", "10m", "--json")
    assert granted.returncode == 0, granted.stderr
    grant_id = json.loads(granted.stdout)["id"]
    for method in ("PUT", "PATCH", "DELETE"):  # every NSG write fails, one rule's or the whole NSG's
        arm_admin.add_fault(method=method, match="networkSecurityGroups", count=50, status=500)
    try:
        done = jit.run("revoke", grant_id)
    finally:
        arm_admin.clear_faults()
    assert done.returncode == 0, done.stderr
    assert f"Revoked {grant_id}: the door to port 5432 on db-01 closes within one sweep" in done.stdout
    assert api.grant(grant_id)["status"] == "revoked"  # the rule left behind goes with arm_admin's reset


# -- a refused renewal ends the grant -----------------------------------------------------------------------


def test_a_renewal_the_broker_refuses_revokes_the_grant_and_says_why(
    jit: Jit, fake_broker: FakeBroker, listening_port: int
) -> None:
    fake = fake_broker
    fake.lifetime = timedelta(seconds=3)
    refusal = f"grant {fake.grant_id} already runs to the maximum total of 8h; request a new one"
    fake.on("POST", GRANTS, fake.answer("active", code=201))
    fake.on("POST", f"{fake.grant_path}/extend", FakeBroker.error(409, "conflict", refusal))
    session = jit.start(
        "ssh", "web-01", *via(listening_port), "--json", JIT_BROKER_URL=fake.url, **jit.hold_sessions()
    )
    wait_until(jit.recorded, what="the client to start")
    wait_until(lambda: fake.requests("DELETE", fake.grant_path), timeout=20, what="jit to revoke the grant")
    wait_until(lambda: "revoked it" in jit.stderr_so_far(), what="the reason on stderr")
    assert session.poll() is None  # the running client is left alone
    assert len(fake.requests("POST", f"{fake.grant_path}/extend")) == 1  # refused once: no retrying
    jit.end_sessions()
    code, out, err = end(session, jit)
    assert code == 0, err
    assert refusal in err
    assert "409 conflict" in err
    summary = json.loads(out)
    assert summary["revoked"] is True
    assert summary["grant"]["status"] == "revoked"
    assert len(fake.requests("DELETE", fake.grant_path)) == 1  # not revoked a second time at the end
