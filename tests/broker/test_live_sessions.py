"""A revoke closes the door to new connections; where the NSG keeps established flows (flushConnection off),
the answer says that live sessions run on, so nobody takes "revoked" for "cut off"."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("clean_lab")


def test_a_revoke_behind_an_nsg_without_flush_connection_warns_that_live_sessions_run_on(as_user) -> None:
    alice = as_user("alice")
    grant = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()

    revoked = alice.delete(f"/api/v1/grants/{grant['id']}").json()

    assert revoked["status"] == "revoked"
    (warning,) = [w for w in revoked["warnings"] if "flushConnection" in w]
    assert "web-01-nsg" in warning and "live sessions" in warning


def test_only_the_nsgs_that_keep_live_flows_are_named(as_user) -> None:
    carol = as_user("carol")  # db-01: its NIC's NSG flushes connections, its subnet's NSG does not
    grant = carol.post("/api/v1/grants", json={"vm": "db-01", "port": 22, "duration": "PT10M"}).json()

    revoked = carol.delete(f"/api/v1/grants/{grant['id']}").json()

    named = [w for w in revoked["warnings"] if "flushConnection" in w]
    assert len(named) == 1 and "app-subnet-nsg" in named[0] and "db-01-nsg" not in named[0]


def test_revoking_again_adds_no_warning(as_user) -> None:
    alice = as_user("alice")
    grant = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT10M"}).json()
    alice.delete(f"/api/v1/grants/{grant['id']}")

    again = alice.delete(f"/api/v1/grants/{grant['id']}").json()

    assert again["status"] == "revoked"
    assert [w for w in again["warnings"] if "flushConnection" in w] == []
