"""A throw-away lab for benchmarks: CA, token issuer, ARM emulator and Azurite for one scenario file, plus
broker processes started on demand (each on its own tables, trusting `X-Forwarded-For` like Azure).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
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

    def revoke(self, broker: BrokerProcess, who: crowd.Member, grant_id: str) -> int:
        """Revoke `who`'s grant (the door closes now); the HTTP status."""
        with httpx.Client(
            base_url=broker.url, headers=crowd.headers(self.issuer, who), timeout=HTTP_TIMEOUT_S
        ) as client:
            return client.delete(f"/api/v1/grants/{grant_id}").status_code


def arm_counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Request-log entries split into resource reads, operation polls, writes (PUT) and deletes."""
    counts = {"reads": 0, "polls": 0, "writes": 0, "deletes": 0}
    for entry in entries:
        method, path = entry["method"], entry["path"]
        if method == "GET" and ("/operations/" in path or "/operationResults/" in path):
            counts["polls"] += 1
        elif method == "GET":
            counts["reads"] += 1
        elif method == "PUT":
            counts["writes"] += 1
        elif method == "DELETE":
            counts["deletes"] += 1
    return counts
