"""The lab's broker process: real uvicorn with lab settings, the socket peer as caller, a sweeper loop."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from lab.broker import BrokerProcess


def test_the_lab_broker_answers_and_sees_the_socket_peer(broker, token_for) -> None:
    assert httpx.get(f"{broker.url}/api/health").json() == {"status": "ok"}
    me = httpx.get(
        f"{broker.url}/api/v1/whoami", headers={"Authorization": f"Bearer {token_for('bob')}"}
    ).json()
    assert me["address"] == "127.0.0.1"
    assert me["upn"] == "bob@contoso.test"


def test_the_lab_broker_runs_the_sweeper_on_its_schedule(broker_env: dict[str, str], tmp_path: Path) -> None:
    env = {**broker_env, "JIT_TABLE_PREFIX": "jitloop"}  # tables of its own: it must not sweep others' grants
    with BrokerProcess(env, sweep_interval=0.5, log_dir=tmp_path) as looping:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "sweep: SweepReport(" in looping.sweeper_log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        log = looping.sweeper_log.read_text(errors="replace")[-2000:]
    raise AssertionError(f"no sweep ran; sweeper log:\n{log}")
