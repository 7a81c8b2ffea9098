"""End to end with real packets: `jit` on a caller's machine, the broker, ARM's NSGs, nftables, sshd.

Addresses: alice 203.0.113.10, mallory 203.0.113.66; web-01 198.51.100.10 -> 192.0.2.4 (NIC NSG web-01-nsg);
db-01 198.51.100.12 (NIC NSG db-01-nsg with flushConnection, subnet NSG app-subnet-nsg); win-01
198.51.100.11 (subnet NSG app-subnet-nsg, an RDP stand-in on 3389). Every NSG starts with a deny for 22 and
3389 from anywhere; only the broker opens them.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from lab.demo import wait_until

pytestmark = pytest.mark.netlab

WEB = "198.51.100.10"
WIN = "198.51.100.11"
DB = "198.51.100.12"
ALICE = "203.0.113.10"
CLOSED_WAIT = 1.5  # seconds a dropped SYN is given before the port counts as closed
GRANT_WAIT = 60.0  # generous: grant, port probe and ssh handshake on a loaded 2-core machine
ECHO = 'while read line; do echo "echo:$line"; done'


def sources(rules: list[dict[str, Any]]) -> list[list[str] | None]:
    """Each broker rule's source prefixes."""
    return [rule["properties"].get("sourceAddressPrefixes") for rule in rules]


def test_the_granted_address_runs_a_command_over_ssh_while_another_address_times_out(lab, jit_session):
    run = jit_session(
        "alice",
        "ssh",
        "web-01",
        "--",
        *lab.ssh_options(),
        'echo "on $(hostname) as $(whoami)"; read _; echo bye',
    )
    assert run.wait_for("on web-01 as azureuser", GRANT_WAIT) is not None, run.output()

    assert sources(lab.broker_rules("web-01-nsg")) == [[f"{ALICE}/32"]]
    mallory = lab.net.run("mallory", lab.net.ssh_argv("web-01", "hostname", connect_timeout=2))
    assert mallory.returncode == 255
    assert "timed out" in mallory.stderr
    assert lab.net.probe("mallory", WEB, 22, CLOSED_WAIT) == "filtered"
    assert run.finish() == 0, run.output()


def test_when_jit_ssh_ends_the_rule_is_gone_and_no_new_connection_gets_in(lab):
    done = lab.jit("alice", "ssh", "web-01", "--", *lab.ssh_options(), "hostname")

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["web-01"]
    assert re.search(r"Revoked grant \S+: port 22 on web-01 is closed again", done.stderr)
    assert lab.broker_rules("web-01-nsg") == []
    assert lab.net.probe("alice", WEB, 22, CLOSED_WAIT) == "filtered"


def test_a_grant_left_by_a_killed_cli_expires_and_then_no_new_connection_gets_in(lab, jit_session):
    run = jit_session("alice", "ssh", "web-01", "--duration", "8s", "--", *lab.ssh_options(), ECHO)
    assert run.ask("hello", timeout=GRANT_WAIT), run.output()
    opened = re.search(r"\(grant (\S+)\)", run.output())
    assert opened is not None

    run.kill()  # SIGKILL: no revoke, no more renewals

    assert lab.broker_rules("web-01-nsg") != []
    assert wait_until(lambda: lab.broker_rules("web-01-nsg") == [], timeout=90)
    assert lab.net.probe("alice", WEB, 22, CLOSED_WAIT) == "filtered"
    listed = json.loads(lab.jit("alice", "ls", "--json").stdout)["grants"]
    assert {g["id"]: g["status"] for g in listed}[opened[1]] == "expired"


def test_a_live_session_survives_revocation_by_default(lab, jit_session):
    run = jit_session("alice", "ssh", "web-01", "--", *lab.ssh_options(), ECHO)
    assert run.ask("before", timeout=GRANT_WAIT), run.output()

    revoked = lab.jit("alice", "revoke", "--mine")

    assert revoked.returncode == 0, revoked.stderr
    assert lab.broker_rules("web-01-nsg") == []
    assert lab.net.probe("alice", WEB, 22, CLOSED_WAIT) == "filtered"
    assert run.ask("after")
    assert run.finish() == 0, run.output()


def test_with_flush_connection_revocation_cuts_the_live_session(lab, jit_session):
    run = jit_session("alice", "ssh", "db-01", "--", *lab.ssh_options(), ECHO)
    assert run.ask("before", timeout=GRANT_WAIT), run.output()
    assert sources(lab.broker_rules("db-01-nsg")) == [[f"{ALICE}/32"]]
    assert sources(lab.broker_rules("app-subnet-nsg")) == [[f"{ALICE}/32"]]

    revoked = lab.jit("alice", "revoke", "--mine")

    assert revoked.returncode == 0, revoked.stderr
    assert not run.ask("after", timeout=5)
    assert run.finish() != 0
    assert lab.net.probe("alice", DB, 22, CLOSED_WAIT) == "filtered"


def test_a_higher_priority_deny_wins_over_the_grant_and_the_broker_warns(lab, arm_rules):
    arm_rules.deny("web-01-nsg", "maintenance-freeze", priority=100, source="*", port=22)

    granted = lab.jit("alice", "grant", "web-01", "--port", "22", "--json")

    assert granted.returncode == 0, granted.stderr
    grant = json.loads(granted.stdout)
    assert grant["status"] == "active"
    assert any("maintenance-freeze" in warning for warning in grant["warnings"])
    assert "maintenance-freeze" in granted.stderr  # the CLI shows the warning too
    assert sources(lab.broker_rules("web-01-nsg")) == [[f"{ALICE}/32"]]
    assert lab.net.probe("alice", WEB, 22, CLOSED_WAIT) == "filtered"


def test_the_rdp_port_answers_only_the_grantee(lab):
    granted = lab.jit("alice", "grant", "win-01", "--port", "3389", "--json")
    assert granted.returncode == 0, granted.stderr
    grant = json.loads(granted.stdout)

    with ThreadPoolExecutor(2) as pool:
        mallory = pool.submit(lab.net.probe, "mallory", WIN, 3389, CLOSED_WAIT)
        greeting = lab.net.banner("alice", WIN, 3389)
        assert mallory.result() == "filtered"
    assert greeting == b"RDP stand-in on win-01\r\n"
    assert lab.net.probe("alice", WIN, 22, CLOSED_WAIT) == "filtered"  # one port per grant

    revoked = lab.jit("alice", "revoke", grant["id"])

    assert revoked.returncode == 0, revoked.stderr
    assert lab.net.probe("alice", WIN, 3389, CLOSED_WAIT) == "filtered"
