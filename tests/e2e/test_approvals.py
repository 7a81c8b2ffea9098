"""End to end with real packets: prod-01 (tag `jit-approval: required`) opens only after a second yes.

prod-01 is 198.51.100.19 -> 192.0.2.6 behind its NIC NSG prod-01-nsg (a deny for 22 and 3389 from anywhere);
bob (203.0.113.11) asks, carol (JIT.Approver) approves, mallory (203.0.113.66) is anyone else. A
`SynCounter` inside prod-01's namespace counts each caller's SYNs to port 22 twice: as they reach the VM, and
after its NSGs (a dropped SYN never gets there), so "nothing got through" is counted, not inferred.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lab.demo import PacketLab, SynCounter, wait_until

pytestmark = pytest.mark.netlab

PROD = "198.51.100.19"
PROD_PRIVATE = "192.0.2.6"
BOB = "203.0.113.11"
NSG = "prod-01-nsg"
DURATION = timedelta(minutes=30)
CLOSED_WAIT = 1.5  # seconds a dropped SYN is given before the port counts as closed
WAIT = 60.0


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def rule_expiry(rule: dict[str, Any]) -> datetime:
    """The expiry a broker rule carries in its name (`jit-192.0.2.6-p22-x20261130T024337Z`)."""
    found = re.search(r"-x(\d{8}T\d{6}Z)$", rule["name"])
    assert found, rule["name"]
    return datetime.strptime(found[1], "%Y%m%dT%H%M%S%z")


@pytest.fixture
def syns(lab: PacketLab) -> Iterator[SynCounter]:
    """bob's and mallory's SYNs to prod-01:22, before and after its NSGs."""
    with SynCounter(lab.net, "prod-01", 22, ("bob", "mallory")) as counter:
        yield counter


def bob_ssh(lab: PacketLab, *command: str) -> Any:
    """Plain ssh from bob's machine to prod-01's public address."""
    return lab.net.run("bob", lab.net.ssh_argv("prod-01", *command, connect_timeout=3))


def test_prod_01_opens_for_bob_only_after_carols_approval_for_the_duration_counted_from_it(lab, syns):
    asked = lab.api(
        "bob", "POST", "/api/v1/grants", {"vm": "prod-01", "duration": "PT30M", "justification": "hotfix"}
    )
    assert asked.status == 202, asked.body
    request = asked.body
    assert request["status"] == "awaiting_approval"
    assert request["source"] == f"{BOB}/32"

    # Waiting: no rule in the emulator's NSG, none rendered, and not one of bob's SYNs gets past the NSG.
    assert lab.broker_rules(NSG) == []
    assert BOB not in lab.net.ruleset("prod-01")
    assert lab.net.probe("bob", PROD, 22, CLOSED_WAIT) == "filtered"
    waiting = syns.counts()["bob"]
    assert waiting.arrived > 0, "the probe's SYNs reached prod-01's NIC"
    assert waiting.passed == 0, "and none got past prod-01-nsg"
    assert lab.grant("bob", request["id"])["status"] == "awaiting_approval"

    before = datetime.now(UTC).replace(microsecond=0)
    approval = lab.approve("carol", request["id"], "change CHG-1042")
    after = datetime.now(UTC)
    assert approval.ok, approval.said
    assert wait_until(lambda: lab.grant("bob", request["id"])["status"] != "pending", timeout=WAIT)
    grant = lab.grant("bob", request["id"])
    assert grant["status"] == "active", grant

    # The clock starts at the approval: expires_at and the rule's name both say approval time + 30 minutes.
    decided = when(grant["approval"]["decided_at"])
    assert before <= decided <= after
    assert grant["approval"]["decided_by"] == lab.scenario.user("carol").oid
    assert when(grant["expires_at"]) == decided + DURATION
    assert when(grant["expires_at"]) - when(request["created_at"]) > DURATION
    (rule,) = lab.broker_rules(NSG)
    assert rule_expiry(rule) == decided + DURATION
    assert rule["properties"]["sourceAddressPrefixes"] == [f"{BOB}/32"]
    assert rule["properties"]["destinationAddressPrefix"] == PROD_PRIVATE
    assert rule["properties"]["destinationPortRange"] == "22"

    # bob's address gets in and runs a command; mallory's gets nothing.
    hello = bob_ssh(lab, "hostname")
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout.split() == ["prod-01"]
    assert lab.net.probe("mallory", PROD, 22, CLOSED_WAIT) == "filtered"
    counted = syns.counts()
    assert counted["bob"].passed > 0
    assert counted["mallory"].arrived > 0
    assert counted["mallory"].passed == 0

    revoked = lab.jit("bob", "revoke", request["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert lab.grant("bob", request["id"])["status"] == "revoked"
    assert lab.broker_rules(NSG) == []
    passed = syns.counts()["bob"].passed
    assert lab.net.probe("bob", PROD, 22, CLOSED_WAIT) == "filtered"
    assert syns.counts()["bob"].passed == passed


def test_a_withdrawn_request_never_opened_anything(lab, syns):
    asked = lab.api("bob", "POST", "/api/v1/grants", {"vm": "prod-01", "duration": "PT30M"})
    assert asked.status == 202, asked.body

    withdrawn = lab.api("bob", "POST", f"/api/v1/grants/{asked.body['id']}/withdraw")
    assert withdrawn.status == 200 and withdrawn.body["status"] == "withdrawn"
    assert not lab.approve("carol", asked.body["id"], "too late").ok

    assert lab.broker_rules(NSG) == []
    assert lab.net.probe("bob", PROD, 22, CLOSED_WAIT) == "filtered"
    assert syns.counts()["bob"].passed == 0
