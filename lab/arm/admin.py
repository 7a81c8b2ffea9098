"""A typed client for the ARM emulator's `/_lab/` endpoint, for tests, benchmarks, `jit-lab` and the demo.

Request-log entries are dicts: `method`, `path`, `query` (raw query string), `status`, `started` (Unix
seconds), `duration_ms`, `op` (the RBAC action, e.g.
`Microsoft.Network/networkSecurityGroups/securityRules/write`; None for paths the emulator does not serve)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests


class ArmAdmin:
    """Knobs, faults, request log and state of one running ARM emulator."""

    def __init__(self, url: str, verify: str | Path | bool = True, *, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.verify: str | bool = str(verify) if isinstance(verify, Path) else verify
        self.timeout = timeout
        self._session = requests.Session()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._session.request(
            method, f"{self.url}/_lab/{path}", json=body, verify=self.verify, timeout=self.timeout
        )
        if response.status_code >= 400:
            raise RuntimeError(f"ARM lab {method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def requests(self) -> list[dict[str, Any]]:
        """Every ARM request since the last clear, oldest first."""
        result: list[dict[str, Any]] = self._call("GET", "requests")
        return result

    def count(self, op: str | None = None, *, method: str | None = None, status: int | None = None) -> int:
        """How many logged requests match an RBAC op / method / status (None matches anything)."""
        return sum(
            1
            for r in self.requests()
            if (op is None or r["op"] == op)
            and (method is None or r["method"] == method)
            and (status is None or r["status"] == status)
        )

    def clear_requests(self) -> None:
        """Empty the request log."""
        self._call("DELETE", "requests")

    def knobs(self) -> dict[str, Any]:
        """The current knobs."""
        result: dict[str, Any] = self._call("GET", "knobs")
        return result

    def set_knobs(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs (`latency_ms={"write": 50}`, `lro_ms`, `write_budget`, `read_budget`,
        `budget_window_s`, `page_size`, `concurrency="reject"|"lro_failed"|"throttle"|"supersede"|"accept"`);
        returns all knobs after the change. `reset()` restores the emulator's construction-time knobs."""
        result: dict[str, Any] = self._call("PATCH", "knobs", knobs)
        return result

    def add_fault(
        self,
        *,
        method: str = "*",
        match: str = "",
        count: int = 1,
        status: int | None = None,
        code: str = "InternalServerError",
        message: str | None = None,
        retry_after: int | None = None,
        hang_ms: int = 0,
        lro_status: str | None = None,
    ) -> dict[str, Any]:
        """Queue a fault for the next `count` requests matching `method` and path substring `match`."""
        body = {
            "method": method,
            "match": match,
            "count": count,
            "status": status,
            "code": code,
            "message": message,
            "retry_after": retry_after,
            "hang_ms": hang_ms,
            "lro_status": lro_status,
        }
        result: dict[str, Any] = self._call("POST", "faults", body)
        return result

    def faults(self) -> list[dict[str, Any]]:
        """Faults still pending."""
        result: list[dict[str, Any]] = self._call("GET", "faults")
        return result

    def clear_faults(self) -> None:
        """Drop pending faults."""
        self._call("DELETE", "faults")

    def nsgs(self) -> list[dict[str, Any]]:
        """Every NSG's full ARM JSON."""
        result: list[dict[str, Any]] = self._call("GET", "nsgs")
        return result

    def nsg(self, name: str) -> dict[str, Any]:
        """One NSG's ARM JSON by name (KeyError when absent)."""
        for nsg in self.nsgs():
            if nsg["name"].lower() == name.lower():
                return nsg
        raise KeyError(name)

    def set_power(self, vm: str, state: str) -> dict[str, Any]:
        """Set a VM's power state: running, stopped, deallocated, starting, stopping, deallocating."""
        result: dict[str, Any] = self._call("POST", f"vms/{vm}/power", {"state": state})
        return result

    def reset(self) -> None:
        """Restore the scenario's world and the construction-time knobs and faults; empty the log."""
        self._call("POST", "reset")
