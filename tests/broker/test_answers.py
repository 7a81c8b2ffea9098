"""Answers that match what happened: a VM name Azure refuses is the caller's mistake (400), not Azure
failing (502); and what ARM said in its own words never reaches a caller, in an error or a grant's reason."""

from __future__ import annotations

from typing import Any

import pytest

from tests.broker.conftest import RG, SUB, broker_rules

pytestmark = pytest.mark.usefixtures("clean_lab")

VM_IDS = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines"


def test_a_vm_name_arm_refuses_is_a_bad_request_not_an_azure_failure(as_user, arm_admin) -> None:
    arm_admin.add_fault(
        method="GET",
        match="virtualMachines/web-01",
        count=5,
        status=400,
        code="InvalidResourceName",
        message="Resource name web-01 is invalid.",
    )
    response = as_user("alice").post("/api/v1/grants", json={"vm": f"{VM_IDS}/web-01"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "not a name Azure accepts for a VM" in error["message"]
    assert broker_rules(arm_admin.nsg("web-01-nsg")) == []


@pytest.mark.parametrize("name", ["web 01", "web@01", "web(01)", "web-01.", "web-01-", "w" * 65, "web;01"])
@pytest.mark.parametrize("how", ["by id", "by group"])
def test_a_name_no_vm_can_have_is_refused_before_asking_arm(name: str, how: str, as_user, arm_admin) -> None:
    body: dict[str, Any] = (
        {"vm": f"{VM_IDS}/{name}"}
        if how == "by id"
        else {"vm": name, "subscription": SUB, "resource_group": RG}
    )
    arm_admin.clear_requests()
    response = as_user("alice").post("/api/v1/grants", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert not [r for r in arm_admin.requests() if "/virtualmachines/" in r["path"].lower()]


def test_an_azure_failure_reaches_the_caller_without_azures_own_words(as_user, arm_admin) -> None:
    marker = "INTERNAL-DETAIL-7f3a /subscriptions/secret-sub trace id 1234"
    arm_admin.add_fault(
        method="PUT", match="networkSecurityGroups/web-01-nsg", count=20, status=400, code="SomeArmRule",
        message=marker,
    )  # fmt: skip
    alice = as_user("alice")
    response = alice.post("/api/v1/grants", json={"vm": "web-01"})
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_error"
    assert "INTERNAL-DETAIL" not in response.text
    (failed,) = [g for g in alice.get("/api/v1/grants").json()["grants"] if g["status"] == "failed"]
    assert failed["reason"] and "INTERNAL-DETAIL" not in failed["reason"]
    assert "Traceback" not in failed["reason"] and "Error:" not in failed["reason"]
