"""schemathesis against the OpenAPI document the broker serves: no 5xx, every answer matches the document.

A real uvicorn broker (the suite's), a valid lab token (an admin's, so every route can answer 2xx), positive
and negative cases for every operation. Blind generation rarely names a real VM or grant, so part of the
budget is steered: request bodies naming the scenario's VMs, and grant routes aimed at grants that exist, so
the success paths (201, 200, revoke, extend, 409) are fuzzed too.

The case budget is `JIT_FUZZ_EXAMPLES` (1 000 in `make test`, 20 000 in `make fuzz`); the run counts the
cases it really sent and fails if it sent fewer. Failures are collected rather than shrunk, so one run
reports every distinct problem it met. Negative cases must not break the broker or its document either;
whether each one is refused is not asked here, since FastAPI rightly ignores unknown query parameters and
headers (the input-abuse tests pin down what must be refused).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lab.broker import BrokerProcess
from lab.scenario import Scenario
from tests.security.conftest import World

EXAMPLES = int(os.environ.get("JIT_FUZZ_EXAMPLES", "1000"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
_MAX_ROUNDS = 6


@dataclass(frozen=True)
class Run:
    """One slice of the budget: an operation, optionally steered, with its share."""

    label: str
    weight: int
    steer: str = ""


RUNS = [
    Run("POST /api/v1/grants", 5),
    Run("POST /api/v1/grants", 5, steer="real vm"),
    Run("POST /api/v1/grants/{grant_id}/extend", 2),
    Run("POST /api/v1/grants/{grant_id}/extend", 3, steer="real grant"),
    Run("GET /api/v1/grants", 4),
    Run("GET /api/v1/grants/{grant_id}", 1),
    Run("GET /api/v1/grants/{grant_id}", 2, steer="real grant"),
    Run("DELETE /api/v1/grants/{grant_id}", 1),
    Run("DELETE /api/v1/grants/{grant_id}", 2, steer="real grant"),
    Run("GET /api/v1/vms", 1),
    Run("GET /api/v1/whoami", 1),
    Run("GET /api/health", 1),
    Run("GET /api/ready", 1),
    Run("GET /api/v1/audit", 2),
    Run("POST /api/v1/grants/{grant_id}/approve", 1),
    Run("POST /api/v1/grants/{grant_id}/approve", 1, steer="real grant"),
    Run("POST /api/v1/grants/{grant_id}/deny", 1),
    Run("POST /api/v1/grants/{grant_id}/withdraw", 1),
    Run("POST /api/v1/grants/{grant_id}/withdraw", 1, steer="real grant"),
]


@pytest.fixture(scope="module")
def schema(sec_broker: BrokerProcess) -> Any:
    """The OpenAPI document as the broker serves it."""
    return schemathesis.openapi.from_url(f"{sec_broker.url}/api/openapi.json")


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def _naming(vm_names: list[str]) -> Callable[[Any], Any]:
    """Steer a generated grant request at one of the scenario's VMs (keeping every other field as drawn)."""

    def steer(drawn: tuple[Any, str, bool]) -> Any:
        case, vm, keep_source = drawn
        if isinstance(case.body, dict):
            case.body["vm"] = vm
            if not keep_source:
                case.body.pop("source", None)
        return case

    return steer


def test_fuzzing_the_served_openapi_finds_no_server_error_and_no_schema_mismatch(
    *,
    schema: Any,
    sec_broker: BrokerProcess,
    scenario: Scenario,
    token_for: Callable[..., str],
    session: requests.Session,
    world: World,
) -> None:
    headers = {"Authorization": f"Bearer {token_for('carol')}", "X-Forwarded-For": "203.0.113.20"}
    operations = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}
    assert set(operations) == {run.label for run in RUNS}, "the budget must cover every served operation"
    vm_names = sorted(place.vm.name for place in scenario.azure.vms())
    grant_ids: list[str] = []
    sent: Counter[str] = Counter()
    answered: Counter[int] = Counter()
    failures: dict[str, str] = {}

    def real_grant() -> str:
        """A grant that exists (an open one when possible), made through the API itself."""
        alice = {"Authorization": f"Bearer {token_for('alice')}", "X-Forwarded-For": "203.0.113.10"}
        body = {"vm": vm_names[len(grant_ids) % len(vm_names)], "duration": "PT30M"}
        made = session.post(f"{sec_broker.url}/api/v1/grants", json=body, headers=alice, timeout=60)
        if made.status_code in (200, 201):
            grant_ids.append(made.json()["id"])
        return grant_ids[-1] if grant_ids else "g-00000000000000000000"

    def strategy(run: Run, mode: GenerationMode) -> Any:
        operation = operations[run.label]
        if run.steer == "real grant":
            return operation.as_strategy(generation_mode=mode, path_parameters={"grant_id": real_grant()})
        drawn = operation.as_strategy(generation_mode=mode)
        if run.steer == "real vm":
            return st.tuples(drawn, st.sampled_from(vm_names), st.booleans()).map(_naming(vm_names))
        return drawn

    def fuzz(run: Run, mode: GenerationMode, examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy(run, mode))
        def one(case: Any) -> None:
            sent[run.label] += 1
            try:
                response = case.call_and_validate(
                    base_url=sec_broker.url, session=session, headers=headers, checks=CHECKS, timeout=60
                )
                answered[response.status_code] += 1
            except FailureGroup as group:
                for failure in group.exceptions:
                    key = f"{run.label} [{mode.value}] {failure.title}"
                    failures.setdefault(key, f"{key}: {failure.message}\n{case.as_curl_command()}"[:3000])

        try:
            one()
        except Unsatisfiable:  # no negative form of a route without inputs (health, whoami, vms)
            assert mode is GenerationMode.NEGATIVE, run.label

    total_weight = sum(run.weight for run in RUNS)
    for _ in range(_MAX_ROUNDS):
        missing = EXAMPLES - sum(sent.values())
        if missing <= 0:
            break
        for run in RUNS:
            share = max(1, -(-missing * run.weight // total_weight) // len(MODES))
            for mode in MODES:
                fuzz(run, mode, share)

    print(f"fuzz: {sum(sent.values())} cases {dict(sent)}; statuses {dict(answered)}")
    assert not failures, "\n\n".join(failures.values())
    assert sum(sent.values()) >= EXAMPLES, dict(sent)
    assert {200, 201} <= set(answered), "the steered cases should have reached the success paths"
