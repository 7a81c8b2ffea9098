"""A throw-away lab for benchmarks: CA, token issuer, ARM emulator and Azurite for one scenario file, plus
broker processes started on demand (each on its own tables, trusting `X-Forwarded-For` like Azure), and
brokers built in this process for counting and timing what they do.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench import crowd
from lab.arm.admin import ArmAdmin
from lab.azurite import Azurite
from lab.broker import BrokerProcess
from lab.issuer import TokenIssuer
from lab.scenario import load_scenario
from lab.settings import lab_broker_settings
from lab.tls import LabCA

HTTP_TIMEOUT_S = 600.0
POLL_LIMIT_S = 300.0  # a 202's Location is polled this long at most


@dataclass(frozen=True)
class Outcome:
    """One grant request as a client sees it: the first answer, and where polling a 202 ended."""

    status: int  # the first answer's HTTP status (201, 202, or an error)
    answer_s: float  # how long that first answer took
    settled_s: float  # until the grant left `pending` (the first answer's time when it was not 202)
    final: str  # the grant's status in the end ("active", "failed", ...), or "error <status>"
    body: Any

    @property
    def granted(self) -> bool:
        """The grant ended active (at once, or after polling its 202)."""
        return self.final == "active"


class BenchLab:
    """`with BenchLab(scenario_path, scope) as lab:` → `.admin`, `.broker(prefix)`, `.grant(...)`."""

    def __init__(self, scenario_path: Path | None, allowed_scope: str) -> None:
        self._scenario_path = scenario_path
        self._scope = allowed_scope
        self._stack = contextlib.ExitStack()
        self._dir = Path(tempfile.mkdtemp(prefix="jit-bench-"))

    def __enter__(self) -> BenchLab:
        from lab.arm import ArmEmulator

        self.scenario = load_scenario(self._scenario_path)
        self.ca = LabCA(self._dir / "ca")
        for name, value in self.ca.client_env().items():  # this process trusts the lab like the brokers do
            os.environ[name] = value
        self.issuer = self._stack.enter_context(TokenIssuer(self.scenario, self.ca))
        self.arm = self._stack.enter_context(
            ArmEmulator(self.scenario, self.ca, token_validator=self.issuer.arm_token_validator)
        )
        self.azurite = self._stack.enter_context(Azurite(self._dir / "azurite"))
        self.admin = ArmAdmin(self.arm.url, verify=str(self.ca.ca_bundle))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def settings(self, prefix: str, **overrides: str) -> dict[str, str]:
        """Broker settings for this lab on tables `{prefix}…`, with Azure's caller-address trust."""
        return lab_broker_settings(
            self.scenario,
            ca=self.ca,
            issuer=self.issuer,
            arm_url=self.arm.url,
            azurite=self.azurite,
            allowed_scopes=self._scope,
            overrides={
                "JIT_CLIENT_ADDRESS_FROM": "x-forwarded-for",
                "JIT_TABLE_PREFIX": prefix,
                "JIT_ARM_POLL_SECONDS": "1",
                **overrides,
            },
        )

    def broker(self, prefix: str, **overrides: str) -> BrokerProcess:
        """A broker process on its own tables (no background sweeper), stopped with the lab."""
        process = BrokerProcess(
            self.settings(prefix, **overrides), sweep_interval=None, log_dir=self._dir / prefix
        )
        return self._stack.enter_context(process)

    def in_process(
        self, prefix: str, *, clock: Callable[[], datetime] | None = None, **overrides: str
    ) -> Any:
        """A broker built in this process (`jitbroker.runtime.build`) on tables `{prefix}…`, on `clock` if
        given: for counting and timing what the broker does, and for sweeping at a chosen time."""
        from jitbroker.config import Settings
        from jitbroker.runtime import build, utc_now

        os.environ.update(self.identity_env())
        return build(Settings.from_env(self.settings(prefix, **overrides)), clock=clock or utc_now)

    def backend(self, prefix: str, *, clock: Callable[[], datetime] | None = None) -> Any:
        """The sweeper's own wiring built in this process (`jitbroker.runtime.build_backend`): clients, store,
        reconciler, closer and sweeper on tables `{prefix}…`."""
        from jitbroker.config import SweepSettings
        from jitbroker.runtime import build_backend, utc_now

        os.environ.update(self.identity_env())
        settings = SweepSettings.from_env(self.settings(prefix))
        return build_backend(settings, clock=clock or utc_now)[0]

    def identity_env(self) -> dict[str, str]:
        """What makes an in-process broker use the lab's managed identity."""
        from lab.issuer import LAB_BROKER_IDENTITY

        return {
            "IDENTITY_ENDPOINT": self.issuer.identity_endpoint,
            "IDENTITY_HEADER": self.issuer.identity_header,
            "AZURE_CLIENT_ID": LAB_BROKER_IDENTITY.client_id,
        }

    def grant(self, broker: BrokerProcess, who: crowd.Member, body: dict[str, Any]) -> tuple[int, float, Any]:
        """One grant request as `who`: (status, seconds, JSON body)."""
        with httpx.Client(
            base_url=broker.url, headers=crowd.headers(self.issuer, who), timeout=HTTP_TIMEOUT_S
        ) as client:
            started = time.perf_counter()
            response = client.post("/api/v1/grants", json=body)
            return response.status_code, time.perf_counter() - started, response.json()

    def grant_settled(self, broker: BrokerProcess, who: crowd.Member, body: dict[str, Any]) -> Outcome:
        """One grant as a client does it: POST, and on `202` poll `Location` after `Retry-After` until the
        grant is no longer pending."""
        with httpx.Client(
            base_url=broker.url, headers=crowd.headers(self.issuer, who), timeout=HTTP_TIMEOUT_S
        ) as client:
            started = time.perf_counter()
            response = client.post("/api/v1/grants", json=body)
            answered = time.perf_counter() - started
            status, payload = response.status_code, response.json()
            if status not in (200, 201, 202):
                return Outcome(status, answered, answered, f"error {status}", payload)
            while payload.get("status") == "pending" and time.perf_counter() - started < POLL_LIMIT_S:
                time.sleep(float(response.headers.get("Retry-After") or 1))
                response = client.get(response.headers.get("Location") or f"/api/v1/grants/{payload['id']}")
                if response.status_code != 200:
                    return Outcome(status, answered, answered, f"error {response.status_code}", payload)
                payload = response.json()
            settled = time.perf_counter() - started if status == 202 else answered
            return Outcome(status, answered, settled, str(payload.get("status")), payload)

    def revoke(self, broker: BrokerProcess, who: crowd.Member, grant_id: str) -> int:
        """Revoke `who`'s grant (the door closes now); the HTTP status."""
        with httpx.Client(
            base_url=broker.url, headers=crowd.headers(self.issuer, who), timeout=HTTP_TIMEOUT_S
        ) as client:
            return client.delete(f"/api/v1/grants/{grant_id}").status_code


def arm_counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Request-log entries split into resource reads, operation polls, writes (PUT) and deletes, plus
    `nsg_writes`: PUTs of a whole network security group."""
    counts = {"reads": 0, "polls": 0, "writes": 0, "deletes": 0, "nsg_writes": 0}
    for entry in entries:
        method, path = entry["method"], entry["path"]
        if method == "GET" and ("/operations/" in path or "/operationResults/" in path):
            counts["polls"] += 1
        elif method == "GET":
            counts["reads"] += 1
        elif method == "PUT":
            counts["writes"] += 1
            counts["nsg_writes"] += is_nsg_put(entry)
        elif method == "DELETE":
            counts["deletes"] += 1
    return counts


def is_nsg_put(entry: dict[str, Any]) -> bool:
    """A request-log entry that is a PUT of a whole NSG (`…/networkSecurityGroups/{name}`)."""
    parts = entry["path"].rstrip("/").split("/")
    return entry["method"] == "PUT" and len(parts) >= 2 and parts[-2].lower() == "networksecuritygroups"
