"""The broker's custom role holds exactly the ARM actions the broker performs: no more, no fewer.

The set is derived, not remembered: a real broker (uvicorn) and its real sweeper run a whole grant lifecycle
against the ARM emulator, whose request log names the RBAC action behind every request. If the code starts
calling something new, or stops calling something, this test names the difference to put in
infra/app/broker-role-actions.json.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.infra.bicep import INFRA, parse, role_actions

NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
NSG_WRITE = "Microsoft.Network/networkSecurityGroups/write"
RULE_CHANGES = {
    "Microsoft.Network/networkSecurityGroups/securityRules/write",
    "Microsoft.Network/networkSecurityGroups/securityRules/delete",
}  # the broker writes whole NSGs (one conditional write carries every change), never single rules
# db-01 sits behind its NIC's NSG and its subnet's NSG, so a grant writes two rules.
VM_WITH_TWO_NSGS = "db-01"


# ---------------------------------------------------------------- the role as Bicep declares it


def test_bicep_loads_the_role_actions_from_the_one_json_file():
    tree = parse(INFRA / "app" / "broker-role.bicep")
    loaded = tree["variables"]["permissions"]["value"]["function"]
    assert loaded["type"] == "load_json_content"
    assert loaded["parameters"]["file_path"] == "broker-role-actions.json"
    permissions = tree["resources"]["brokerRole"]["config"]["properties"]["permissions"][0]
    assert permissions["actions"]["operator"]["operands"] == {
        "operand_1": "permissions",
        "operand_2": "actions",
    }


def test_the_role_has_no_wildcard_no_single_rule_writes_and_no_data_actions():
    role = role_actions()
    assert role["actions"], "the broker needs some actions"
    assert [a for a in role["actions"] if "*" in a] == []
    assert RULE_CHANGES.isdisjoint(role["actions"])
    assert role["dataActions"] == [] and role["notActions"] == [] and role["notDataActions"] == []
    assert len(set(role["actions"])) == len(role["actions"])


def test_the_role_only_reads_except_for_nsg_writes():
    writes = {a for a in role_actions()["actions"] if not a.endswith("/read")}
    assert writes == {NSG_WRITE}


def test_the_identity_holds_no_built_in_network_or_contributor_role():
    for path in INFRA.rglob("*.bicep"):
        assert NETWORK_CONTRIBUTOR not in path.read_text(encoding="utf-8"), path


# ---------------------------------------------------------------- the role as the broker uses it


def _start_broker(settings: dict[str, str], log_dir) -> Any:
    try:
        from lab.broker import BrokerProcess
    except ImportError as exc:  # pragma: no cover - the lab is built in parallel
        pytest.skip(f"lab.broker is not available: {exc}")
    return BrokerProcess(settings, sweep_interval=None, log_dir=log_dir).start()


@pytest.fixture
def role_env(broker_env: dict[str, str]) -> dict[str, str]:
    """The lab broker's settings with tables of this test's own, so no other test's grants join the sweep."""
    return {**broker_env, "JIT_TABLE_PREFIX": f"jitrole{uuid.uuid4().hex[:8]}"}


@pytest.fixture
def fresh_broker(role_env: dict[str, str], tmp_path) -> Iterator[Any]:
    """A broker of its own, so no earlier test has warmed its topology cache (a warm cache skips reads)."""
    running = _start_broker(role_env, tmp_path / "broker")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def other_broker(role_env: dict[str, str], tmp_path) -> Iterator[Any]:
    """A second broker with its own tables: the rules it writes are orphans to the first broker's sweeper,
    exactly like rules whose grant record was lost (the sweeper's ownership-checked delete path)."""
    running = _start_broker(
        {**role_env, "JIT_TABLE_PREFIX": f"jitother{uuid.uuid4().hex[:8]}"}, tmp_path / "other"
    )
    try:
        yield running
    finally:
        running.stop()


def _sweep_as_if_at(moment: datetime, broker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """One run of the production sweeper, with the broker's own settings and identity, at `moment`."""
    from jitbroker.config import Settings
    from jitbroker.runtime import build

    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID"):
        monkeypatch.setenv(name, broker_env[name])
    broker = build(Settings.from_env(broker_env), clock=lambda: moment)
    return broker.sweeper.run()


def _call(method: str, url: str, token: str, **kwargs: Any) -> dict[str, Any]:
    response = requests.request(
        method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
    )
    assert response.status_code < 300, f"{method} {url}: {response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    return body


def test_the_role_equals_what_a_full_broker_cycle_asks_of_arm(  # noqa: PLR0917 - fixtures
    fresh_broker, other_broker, role_env, token_for, arm_admin, monkeypatch
):
    alice = token_for("alice")
    ask = {"vm": VM_WITH_TWO_NSGS, "port": 22, "duration": "5m"}  # from alice's own (loopback) address
    arm_admin.clear_requests()

    vms = _call("GET", f"{fresh_broker.url}/api/v1/vms", alice)["vms"]
    assert any(vm["name"] == VM_WITH_TWO_NSGS for vm in vms)

    grant = _call("POST", f"{fresh_broker.url}/api/v1/grants", alice, json=ask)
    assert len(grant["nsg_rules"]) == 2, "db-01 should get a rule in its NIC's NSG and its subnet's NSG"
    assert _call("DELETE", f"{fresh_broker.url}/api/v1/grants/{grant['id']}", alice)["status"] == "revoked"

    expiring = _call("POST", f"{fresh_broker.url}/api/v1/grants", alice, json=ask)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    report = _sweep_as_if_at(tomorrow, role_env, monkeypatch)
    assert report.errors == [] and report.expired == 1
    assert _call("GET", f"{fresh_broker.url}/api/v1/grants/{expiring['id']}", alice)["status"] == "expired"

    orphaned = _call("POST", f"{other_broker.url}/api/v1/grants", alice, json=ask)
    assert len(orphaned["nsg_rules"]) == 2
    report = _sweep_as_if_at(tomorrow, role_env, monkeypatch)
    assert report.errors == []
    assert report.orphans_removed == 2, "the other broker's rules should have been swept as orphans"

    log = [entry for entry in arm_admin.requests() if not entry["path"].startswith("/_lab")]
    unnamed = [f"{e['method']} {e['path']}" for e in log if not e.get("op")]
    assert unnamed == [], "the emulator could not name the RBAC action of these requests"
    performed = {entry["op"] for entry in log}

    declared = set(role_actions()["actions"])
    assert sorted(performed - declared) == [], "the broker calls ARM actions its role does not grant"
    assert sorted(declared - performed) == [], "the role grants actions the broker never uses"


def test_the_deploy_guide_lists_every_action_of_the_role():
    guide = (INFRA.parent / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert [action for action in role_actions()["actions"] if f"`{action}`" not in guide] == []
