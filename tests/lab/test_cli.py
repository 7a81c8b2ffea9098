"""`jit-lab` as a person uses it: `up` in the foreground, `token` and `env` beside it, Ctrl-C to stop."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from azure.data.tables import TableServiceClient

JIT_LAB = Path(sys.executable).parent / "jit-lab"
READY = "lab ready"
DEMO_VMS = (
    "/subscriptions/00000000-0000-4000-8000-0000000000a1/resourceGroups/rg-jit-demo"
    "/providers/Microsoft.Compute/virtualMachines"
)


@dataclass
class LabRun:
    """A `jit-lab up` subprocess, its output so far, and the state it wrote."""

    process: subprocess.Popen[str]
    state_dir: Path
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start_reader(self) -> None:
        assert self.process.stdout is not None
        stdout = self.process.stdout

        def pump() -> None:
            for line in stdout:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"`jit-lab up` did not print {text!r}; output so far:\n" + "\n".join(self.lines))
            if line is None:
                pytest.fail(f"`jit-lab up` exited ({self.process.wait()}):\n" + "\n".join(self.lines))
            self.lines.append(line)
            if text in line:
                return

    def drain(self) -> None:
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)

    @property
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        return state


def start_lab(state_dir: Path, *extra: str) -> LabRun:
    process = subprocess.Popen(
        [str(JIT_LAB), "up", "--state-dir", str(state_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    run = LabRun(process, state_dir)
    run.start_reader()
    run.wait_for(READY)
    return run


def kill_lab(run: LabRun) -> None:
    if run.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.process.pid, signal.SIGKILL)
        run.process.wait(timeout=10)


def jit_lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(JIT_LAB), *args], capture_output=True, text=True, timeout=60, check=False)


def port_is_closed(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as probe:
        return probe.connect_ex((parts.hostname or "", parts.port or 0)) != 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    run = start_lab(tmp_path_factory.mktemp("jit-lab"))
    try:
        yield run
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)
            try:
                run.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_lab(run)


def test_up_prints_every_endpoint_and_the_broker_settings_but_no_secret(lab: LabRun):
    state = lab.state
    output = "\n".join(lab.lines)

    for url in (state["discovery"], state["jwks"], state["token_endpoint"], state["identity_endpoint"]):
        assert url in output
    assert state["azurite"] in output
    assert f"JIT_AUTHORITY_HOST={state['issuer']}" in output
    assert "IDENTITY_HEADER=***" in output
    assert state["settings"]["IDENTITY_HEADER"] not in output
    assert "eyJ" not in output  # no JWT
    assert (lab.state_dir / "state.json").stat().st_mode & 0o077 == 0


def test_issuer_endpoints_answer_over_verified_https(lab: LabRun):
    state = lab.state
    ca = state["ca_bundle"]

    meta = requests.get(state["discovery"], verify=ca, timeout=5).json()
    keys = requests.get(meta["jwks_uri"], verify=ca, timeout=5).json()["keys"]
    signed_in = requests.post(
        meta["token_endpoint"],
        data={"grant_type": "password", "username": "bob", "scope": state["scope"]},
        verify=ca,
        timeout=5,
    )

    assert meta["issuer"] == f"{state['issuer']}/{state['tenant_id']}/v2.0"
    assert keys
    assert signed_in.status_code == 200
    assert signed_in.json()["token_type"] == "Bearer"


def test_managed_identity_azurite_arm_and_broker_answer(lab: LabRun):
    state = lab.state
    settings = state["settings"]
    ca = state["ca_bundle"]
    identity = requests.get(
        state["identity_endpoint"],
        params={"resource": "https://management.azure.com/", "api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": settings["IDENTITY_HEADER"]},
        timeout=5,
    )
    assert identity.status_code == 200
    arm_token = identity.json()["access_token"]

    tables = TableServiceClient.from_connection_string(settings["JIT_TABLE_CONNECTION_STRING"])
    tables.create_table("clicheck")
    assert "clicheck" in {t.name for t in tables.list_tables()}

    if state["arm"] is None:
        pytest.skip("the ARM emulator (lab.arm) is not available yet")
    vms_url = f"{state['arm']}{DEMO_VMS}?api-version=2024-07-01"
    assert requests.get(vms_url, verify=ca, timeout=10).status_code == 401
    vms = requests.get(vms_url, headers={"Authorization": f"Bearer {arm_token}"}, verify=ca, timeout=10)
    assert vms.status_code == 200
    assert "web-01" in {vm["name"] for vm in vms.json()["value"]}

    if state["broker"] is None:
        pytest.skip("the broker (lab.broker) is not available yet")
    health = requests.get(f"{state['broker']}/api/health", verify=ca, timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


def test_token_prints_a_token_that_verifies_against_the_running_issuer(lab: LabRun):
    state = lab.state

    result = jit_lab("token", "alice", "--state-dir", str(lab.state_dir))

    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    jwks = jwt.PyJWKClient(state["jwks"], ssl_context=_context(state["ca_bundle"]))
    claims = jwt.decode(
        token,
        jwks.get_signing_key_from_jwt(token).key,
        algorithms=["RS256"],
        audience=state["settings"]["JIT_API_CLIENT_ID"],
        issuer=f"{state['issuer']}/{state['tenant_id']}/v2.0",
    )
    assert claims["preferred_username"] == "alice@contoso.test"
    assert claims["roles"] == ["JIT.Requester"]


def test_token_for_an_unknown_user_fails_with_the_issuers_reason(lab: LabRun):
    result = jit_lab("token", "eve", "--state-dir", str(lab.state_dir))

    assert result.returncode != 0
    assert result.stdout == ""
    assert "AADSTS50034" in result.stderr


def test_env_prints_shell_exports_for_the_broker_and_the_cli(lab: LabRun):
    state = lab.state

    result = jit_lab("env", "--state-dir", str(lab.state_dir), "--user", "carol")

    assert result.returncode == 0, result.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
    assert exports["JIT_AUTHORITY_HOST"] == state["issuer"]
    assert exports["JIT_TENANT_ID"] == state["tenant_id"]
    assert exports["JIT_AUTH"] == "lab"
    assert exports["JIT_LAB_USER"] == "carol"
    assert exports["REQUESTS_CA_BUNDLE"] == state["ca_bundle"]
    assert set(state["settings"]) <= set(exports)


def test_token_and_env_without_a_running_lab_say_so(tmp_path: Path):
    for command in (("token", "alice"), ("env",)):
        result = jit_lab(*command, "--state-dir", str(tmp_path))

        assert result.returncode == 3
        assert "jit-lab up" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_stops_everything_cleanly_on_a_signal(tmp_path: Path, signum: signal.Signals):
    run = start_lab(tmp_path / "lab", "--no-broker")
    try:
        state = run.state
        endpoints = [state["issuer"], state["identity_endpoint"], state["azurite"]]
        endpoints += [state["arm"]] if state["arm"] else []

        run.process.send_signal(signum)

        assert run.process.wait(timeout=30) == 0
        run.drain()
        assert run.lines[-1] == "lab stopped"
        assert not (run.state_dir / "state.json").exists()
        for url in endpoints:
            assert port_is_closed(url), url
    finally:
        kill_lab(run)


def _context(ca_bundle: str) -> Any:
    import ssl

    return ssl.create_default_context(cafile=ca_bundle)
