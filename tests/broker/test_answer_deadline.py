"""Every answer within the budget counts from the request's arrival: time spent finding the VM through a slow
ARM is taken from the wait for the NSG passes, so a slow request answers 202 (pending) in time, not late.

The broker's parts are built in this process and served through its real ASGI app (the AnswerClock middleware
included) by Starlette's test client; the topology is slowed in front of the emulator."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jitbroker.api import create_app
from jitbroker.closing import Closer
from jitbroker.grants import GrantService
from tests.broker.conftest import broker_rules

pytestmark = pytest.mark.usefixtures("clean_lab")

BUDGET_S = 2.0
SLOW_LOOKUP_S = 2.5  # longer than the whole budget


class SlowTopology:
    """The topology as a slow ARM serves it: each VM lookup takes `SLOW_LOOKUP_S`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def resolve(self, vm_id: str) -> Any:
        time.sleep(SLOW_LOOKUP_S)
        return self._inner.resolve(vm_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def now() -> datetime:
    return datetime.now(UTC)


def test_a_request_whose_vm_lookup_ate_the_budget_answers_202_at_once_and_opens_later(
    in_process_broker, token_for, arm_admin
) -> None:
    parts = in_process_broker(now)
    closer = Closer(store=parts.store, reconciler=parts.reconciler, clock=now, answer_budget=BUDGET_S)
    grants = GrantService(
        settings=parts.services.settings,
        store=parts.store,
        topology=SlowTopology(parts.topology),
        reconciler=parts.reconciler,
        closer=closer,
        clock=now,
        answer_budget=BUDGET_S,
    )
    app = create_app(dataclasses.replace(parts.services, grants=grants))
    headers = {"Authorization": f"Bearer {token_for('alice')}", "X-Forwarded-For": "203.0.113.10"}
    with TestClient(app) as client:
        started = time.monotonic()
        answer = client.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}, headers=headers)
        took = time.monotonic() - started

        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "pending" and answer.headers["Location"]
        assert took < SLOW_LOOKUP_S + 1.0, took  # the budget was spent on the lookup: no second wait

        deadline = time.monotonic() + 30
        while client.get(answer.headers["Location"], headers=headers).json()["status"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert len(broker_rules(arm_admin.nsg("web-01-nsg"))) == 1


def test_outside_a_request_the_whole_budget_is_there() -> None:
    from jitbroker.deadline import remaining

    assert remaining(7.5) == 7.5
