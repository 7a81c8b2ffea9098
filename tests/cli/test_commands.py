"""Every `jit` command against the lab broker over real HTTPS, with tokens from the lab issuer.

Session clients (ssh, xfreerdp) are recording stand-ins on PATH; the VM's port is a real listener on
127.0.0.1 reached through `--connect-host`/`--connect-port`, the way a bastion or tunnel address is used.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.cli.conftest import BrokerApi, Jit, end, wait_until, without_client


def via(port: int) -> list[str]:
    return ["--connect-host", "127.0.0.1", "--connect-port", str(port)]


# -- reading ------------------------------------------------------------------------------------------------


def test_whoami_shows_the_principal_roles_and_the_address_the_broker_sees(jit: Jit, scenario: Any) -> None:
    done = jit.run("whoami", "--json")
    assert done.returncode == 0, done.stderr
    me = json.loads(done.stdout)
    assert me["principal"] == scenario.user("alice").oid
    assert me["roles"] == ["JIT.Requester"]
    assert me["address"] == "127.0.0.1"
    human = jit.run("whoami")
    assert "alice@contoso.test" in human.stdout


def test_vms_lists_the_opted_in_vms_with_their_ports(jit: Jit) -> None:
    done = jit.run("vms", "--json")
    assert done.returncode == 0, done.stderr
    vms = {vm["name"]: vm for vm in json.loads(done.stdout)["vms"]}
    assert vms["web-01"]["ports"] == [22]
    assert "legacy-01" not in vms
    assert vms["prod-01"]["approval_required"] is True
    table = jit.run("vms").stdout
    assert table.splitlines()[0].split()[:2] == ["NAME", "RESOURCE"]
    assert table.splitlines()[0].split()[-1] == "APPROVAL"
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert "22,5432" in rows["db-01"] and rows["db-01"][-1] == "-"
    assert rows["prod-01"][-2:] == ["by", "JIT.Approver"]


# -- grant, ls, extend, revoke ------------------------------------------------------------------------------


def test_grant_ls_extend_and_revoke_a_grant(jit: Jit, api: BrokerApi) -> None:
    granted = jit.run("grant", "db-01", "--port", "5432", "--duration", "10m", "--json")
    assert granted.returncode == 0, granted.stderr
    grant = json.loads(granted.stdout)
    assert (grant["vm"], grant["port"], grant["status"]) == ("db-01", 5432, "active")
    assert grant["source"] == "127.0.0.1/32"

    human = jit.run("grant", "db-01", "--port", "5432", "--duration", "10m")
    assert human.returncode == 0, human.stderr
    assert f"grant {grant['id']}" in human.stdout  # the same grant, extended (idempotent)
    assert "198.51.100.12:5432" in human.stdout
    assert f"jit revoke {grant['id']}" in human.stdout

    listed = json.loads(jit.run("ls", "--json").stdout)["grants"]
    assert [g["id"] for g in listed if g["status"] == "active"] == [grant["id"]]
    assert grant["id"] in jit.run("ls").stdout

    extended = jit.run("extend", grant["id"], "--duration", "20m", "--json")
    assert extended.returncode == 0, extended.stderr
    assert json.loads(extended.stdout)["expires_at"] > grant["expires_at"]

    revoked = jit.run("revoke", grant["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert f"Revoked {grant['id']}" in revoked.stdout
    assert api.grant(grant["id"])["status"] == "revoked"


def test_revoke_mine_closes_every_open_grant_of_mine_only(jit: Jit, api: BrokerApi) -> None:
    for port in ("22", "5432"):
        assert jit.run("grant", "db-01", "--port", port).returncode == 0
    bobs = jit.run("grant", "web-01", "--port", "22", "--json", user="bob")
    assert bobs.returncode == 0, bobs.stderr

    done = jit.run("revoke", "--mine", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(g["port"] for g in json.loads(done.stdout)["revoked"]) == [22, 5432]
    assert api.open_grants("alice", "db-01") == []
    assert api.grant(json.loads(bobs.stdout)["id"])["status"] == "active"
    assert "No active grants" in jit.run("revoke", "--mine").stdout


def test_ls_all_is_for_admins(jit: Jit, api: BrokerApi) -> None:
    assert jit.run("grant", "db-01", "--port", "22").returncode == 0
    everyone = jit.run("ls", "--all", "--json", user="carol")
    assert everyone.returncode == 0, everyone.stderr
    assert any(g["principal_name"] == "alice@contoso.test" for g in json.loads(everyone.stdout)["grants"])
    assert "alice@contoso.test" in jit.run("ls", "--all", user="carol").stdout
    refused = jit.run("ls", "--all", user="bob")
    assert refused.returncode == 4
    assert "403" in refused.stderr


# -- the connect flow ---------------------------------------------------------------------------------------


def test_ssh_runs_the_client_with_the_vms_user_passes_extra_args_and_revokes(
    jit: Jit, api: BrokerApi, listening_port: int
) -> None:
    done = jit.run(
        "ssh", "web-01", *via(listening_port), "--", "-o", "BatchMode=yes", "uptime", STANDIN_EXIT="3"
    )
    assert done.returncode == 3, done.stderr  # the client's own exit code
    assert jit.recorded() == [
        "ssh",
        "-p",
        str(listening_port),
        "-o",
        "BatchMode=yes",
        "--",
        "azureuser@127.0.0.1",
        "uptime",
    ]
    assert "Opened port 22 on web-01 for 127.0.0.1/32" in done.stderr
    assert "answered after" in done.stderr
    assert api.open_grants("alice", "web-01") == []
    assert "Revoked grant" in done.stderr


def test_ssh_login_name_and_json_summary(jit: Jit, api: BrokerApi, listening_port: int) -> None:
    done = jit.run("ssh", "web-01", "-l", "root", *via(listening_port), "--json")
    assert done.returncode == 0, done.stderr
    assert jit.recorded() == ["ssh", "-p", str(listening_port), "--", "root@127.0.0.1"]
    summary = json.loads(done.stdout)
    assert summary["exit_code"] == 0
    assert summary["revoked"] is True
    assert api.grant(summary["grant"]["id"])["status"] == "revoked"


def test_rdp_runs_freerdp_with_the_vms_admin_user(jit: Jit, api: BrokerApi, listening_port: int) -> None:
    done = jit.run("rdp", "win-01", *via(listening_port), STANDIN_EXIT="0")
    assert done.returncode == 0, done.stderr
    assert jit.recorded() == ["xfreerdp", f"/v:127.0.0.1:{listening_port}", "/u:labadmin"]
    assert "Opened port 3389 on win-01" in done.stderr
    assert api.open_grants("alice", "win-01") == []


def test_rdp_without_a_client_names_what_to_install_and_revokes(
    jit: Jit, api: BrokerApi, listening_port: int
) -> None:
    without_client(jit, "xfreerdp")
    done = jit.run("rdp", "win-01", *via(listening_port))
    assert done.returncode == 9
    assert "no RDP client" in done.stderr
    assert "install FreeRDP" in done.stderr
    assert api.open_grants("alice", "win-01") == []


def test_connect_waits_for_a_port_that_starts_answering_after_the_grant(
    jit: Jit, api: BrokerApi, silent_socket: socket.socket
) -> None:
    port = silent_socket.getsockname()[1]
    session = jit.start("ssh", "web-01", *via(port))
    # The port listens only once the grant exists: jit must keep probing, not give up or sleep blindly.
    wait_until(lambda: api.open_grants("alice", "web-01"), what="the grant")
    assert jit.recorded() is None
    silent_socket.listen()
    code, _, err = end(session, jit)
    assert code == 0, err
    assert jit.recorded() == ["ssh", "-p", str(port), "--", "azureuser@127.0.0.1"]
    assert "waiting for 127.0.0.1" in err
    assert api.open_grants("alice", "web-01") == []


def test_a_port_that_never_answers_times_out_with_likely_causes_and_revokes(
    jit: Jit, api: BrokerApi, silent_socket: socket.socket
) -> None:
    port = silent_socket.getsockname()[1]
    done = jit.run("ssh", "web-01", *via(port), "--wait", "2s")
    assert done.returncode == 7
    assert f"port {port} at 127.0.0.1 never answered within 2s" in done.stderr
    for cause in ("VPN", "NAT", "deny rule", "--source"):
        assert cause in done.stderr
    assert jit.recorded() is None
    assert api.open_grants("alice", "web-01") == []


@pytest.mark.parametrize(
    ("how", "sig"),
    [
        ("ctrl-c to the terminal's process group", signal.SIGINT),
        ("SIGTERM to jit", signal.SIGTERM),
        ("SIGHUP to jit", signal.SIGHUP),
    ],
)
def test_interrupting_a_session_ends_the_client_and_revokes(
    jit: Jit, api: BrokerApi, listening_port: int, how: str, sig: signal.Signals
) -> None:
    session = jit.start(
        "ssh", "web-01", *via(listening_port), STANDIN_SIGNAL_EXIT="42", **jit.hold_sessions()
    )
    wait_until(jit.recorded, what="the client to start")
    assert len(api.open_grants("alice", "web-01")) == 1
    if how.startswith("ctrl-c"):
        os.killpg(session.pid, sig)
    else:
        session.send_signal(sig)
    code, _, err = end(session, jit)
    assert code == 42, err  # the client's exit code
    assert sig.name in jit.signals()
    assert api.open_grants("alice", "web-01") == []
    assert "Revoked grant" in err


def test_interrupting_while_waiting_for_the_port_revokes(
    jit: Jit, api: BrokerApi, silent_socket: socket.socket
) -> None:
    session = jit.start("ssh", "web-01", *via(silent_socket.getsockname()[1]))
    wait_until(
        lambda: [g for g in api.open_grants("alice", "web-01") if g["status"] == "active"], what="the grant"
    )
    os.killpg(session.pid, signal.SIGINT)
    code, _, err = end(session, jit)
    assert code == 130, err
    assert jit.recorded() is None
    assert api.open_grants("alice", "web-01") == []


def test_ctrl_c_while_the_broker_is_still_opening_the_port_revokes_once_it_answers(
    jit: Jit, api: BrokerApi, arm_admin: Any, listening_port: int
) -> None:
    arm_admin.set_knobs(latency_ms={"read": 0, "write": 1500, "delete": 0, "poll": 0})
    try:
        session = jit.start("ssh", "web-01", *via(listening_port))
        wait_until(
            lambda: [g for g in api.open_grants("alice", "web-01") if g["status"] == "pending"],
            what="the broker to record the grant before writing its rule",
        )
        os.killpg(session.pid, signal.SIGINT)
        code, _, err = end(session, jit)
    finally:
        arm_admin.reset()
    assert code == 130, err
    assert jit.recorded() is None
    assert "Revoked grant" in err
    assert api.open_grants("alice", "web-01") == []


def test_a_short_grant_is_renewed_for_as_long_as_the_session_lasts(
    jit: Jit, api: BrokerApi, listening_port: int
) -> None:
    session = jit.start(
        "ssh", "web-01", *via(listening_port), "--duration", "3s", "--json", **jit.hold_sessions()
    )
    wait_until(jit.recorded, what="the client to start")
    (grant,) = api.open_grants("alice", "web-01")
    created = datetime.fromisoformat(grant["created_at"])

    def eight_seconds_on() -> bool:
        return (datetime.now(UTC) - created).total_seconds() >= 8

    # The session outlives its 3 s grant several times over; the grant stays open because jit renews it.
    wait_until(eight_seconds_on, timeout=20, what="eight seconds of session")
    now = api.grant(grant["id"])
    assert now["status"] == "active"
    assert datetime.fromisoformat(now["expires_at"]) > datetime.now(UTC)
    jit.end_sessions()
    code, out, err = end(session, jit)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["renewals"] >= 3
    assert summary["revoked"] is True
    assert api.grant(grant["id"])["status"] == "revoked"


def test_a_refused_renewal_is_reported_without_ending_the_session(
    jit: Jit, api: BrokerApi, listening_port: int
) -> None:
    session = jit.start("ssh", "web-01", *via(listening_port), "--duration", "4s", **jit.hold_sessions())
    wait_until(jit.recorded, what="the client to start")
    (grant,) = api.open_grants("alice", "web-01")
    api.call("DELETE", f"/api/v1/grants/{grant['id']}", "carol")  # an admin closes the door meanwhile
    wait_until(lambda: "refused to renew" in jit.stderr_so_far(), what="the renewal warning")
    assert session.poll() is None  # the session goes on
    jit.end_sessions()
    code, _, err = end(session, jit)
    assert code == 0, err
    assert jit.signals() == []
    assert f"grant {grant['id']} is revoked" in err


# -- what goes wrong, said clearly --------------------------------------------------------------------------


def test_a_user_without_the_requester_role_is_denied_with_the_brokers_message(jit: Jit) -> None:
    done = jit.run("ssh", "web-01", "--json", user="dave")
    assert done.returncode == 4
    error = json.loads(done.stdout)["error"]
    assert (error["status"], error["code"]) == (403, "forbidden")
    assert error["message"] in done.stderr
    assert jit.recorded() is None


def test_a_vm_that_is_not_opted_in_is_denied(jit: Jit) -> None:
    done = jit.run("ssh", "legacy-01")
    assert done.returncode == 4
    assert "403 vm_not_eligible" in done.stderr


def test_a_token_for_the_wrong_audience_is_a_401_with_a_sign_in_hint(jit: Jit) -> None:
    done = jit.run("whoami", JIT_SCOPE="https://management.azure.com")
    assert done.returncode == 3
    assert "401 unauthenticated" in done.stderr
    assert "hint:" in done.stderr


def test_a_user_the_issuer_does_not_know_cannot_sign_in(jit: Jit) -> None:
    done = jit.run("whoami", user="nobody")
    assert done.returncode == 3
    assert "refused a token for 'nobody'" in done.stderr


def test_a_stopped_vm_is_a_409_that_says_so(jit: Jit) -> None:
    done = jit.run("ssh", "stopped-01", "--json")
    assert done.returncode == 6
    error = json.loads(done.stdout)["error"]
    assert (error["status"], error["code"]) == (409, "vm_not_running")
    assert "deallocated" in done.stderr


def test_an_arm_failure_is_a_5xx_shown_with_the_brokers_message(jit: Jit, arm_admin: Any) -> None:
    # Every NSG write fails, whether the broker writes one rule (…/securityRules/…) or the whole NSG.
    arm_admin.add_fault(
        method="PUT", match="networkSecurityGroups", count=50, status=500, code="InternalServerError"
    )
    try:
        done = jit.run("grant", "db-01", "--port", "22", "--json")
    finally:
        arm_admin.clear_faults()
    assert done.returncode == 8, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["status"] >= 500
    assert error["message"] in done.stderr


def test_an_unreachable_broker_is_reported_with_the_url(jit: Jit) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        done = jit.run("whoami", JIT_BROKER_URL=url)
    assert done.returncode == 8
    assert f"cannot reach the broker at {url}" in done.stderr


def test_verbose_traces_http_without_the_token(jit: Jit) -> None:
    done = jit.run("whoami", "-v")
    assert done.returncode == 0, done.stderr
    assert "> GET " in done.stderr
    assert "> Authorization: Bearer [redacted]" in done.stderr
    assert "< 200 OK" in done.stderr
    assert "eyJ" not in done.stderr + done.stdout  # no JWT anywhere


# -- settings -----------------------------------------------------------------------------------------------


def test_config_file_then_environment_then_flag(jit: Jit, broker: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{sock.getsockname()[1]}"

        assert jit.run("config", "set", "broker_url", broker.url).returncode == 0
        assert jit.run("whoami", JIT_BROKER_URL="").returncode == 0  # from the file
        got = json.loads(jit.run("config", "get", "broker_url", "--json", JIT_BROKER_URL="").stdout)
        assert got["value"] == broker.url
        assert got["source"].startswith("file ")

        assert jit.run("whoami", JIT_BROKER_URL=dead).returncode == 8  # env beats file
        assert (
            jit.run("whoami", "--broker", broker.url, JIT_BROKER_URL=dead).returncode == 0
        )  # flag beats env
        got = json.loads(jit.run("config", "get", "broker_url", "--json", JIT_BROKER_URL=dead).stdout)
        assert (got["value"], got["source"]) == (dead, "env JIT_BROKER_URL")

    assert jit.run("config", "path").stdout.strip() == str(jit.home / "jit.toml")
    assert jit.run("config", "unset", "broker_url").returncode == 0
    missing = jit.run("whoami", JIT_BROKER_URL="")
    assert missing.returncode == 1
    assert "broker_url is not set" in missing.stderr
    listing = json.loads(jit.run("config", "get", "--json").stdout)
    assert listing["wait"] == {"value": "120s", "source": "default"}
