"""Renewals cannot outlive eligibility behind the topology cache: the suite's broker caches VMs for ten
minutes, yet the very next extend after an owner opts a VM out, or stops it, is refused."""

from __future__ import annotations

from typing import Any

from tests.broker.conftest import retag
from tests.security.conftest import Caller, World, assert_refused


def extend(client: Any, grant_id: str) -> Any:
    return client.post(f"/api/v1/grants/{grant_id}/extend", json={"duration": "PT30M"})


def test_an_extend_reads_the_vm_fresh_through_a_ten_minute_cache(
    as_caller: Caller, world: World, arm: Any, arm_admin: Any
) -> None:
    alice = as_caller("alice")
    made = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"})
    assert made.status_code in (200, 201), made.text
    grant_id = made.json()["id"]
    assert extend(alice, grant_id).status_code == 200  # the VM is cached now

    retag(arm, "web-01", {"owner": "ops"})  # jit-ports removed a moment ago
    refused = extend(alice, grant_id)
    assert_refused(refused)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "vm_not_eligible")

    retag(arm, "web-01", {"jit-ports": "22"})
    arm_admin.set_power("web-01", "deallocated")
    stopped = extend(alice, grant_id)
    assert (stopped.status_code, stopped.json()["error"]["code"]) == (409, "vm_not_running")

    arm_admin.set_power("web-01", "running")
    assert extend(alice, grant_id).status_code == 200  # and the cache holds the VM as it is again
