"""Human output and `--json` output of results and errors."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

from jitcli.errors import BrokerError
from jitcli.lease import renew_after
from jitcli.models import Grant
from jitcli.output import Output, grants_table, until

GRANT = {
    "id": "g-1",
    "status": "active",
    "principal_name": "alice@contoso.test",
    "vm": "web-01",
    "port": 22,
    "source": "203.0.113.10/32",
    "created_at": "2026-01-01T12:00:00Z",
    "expires_at": "2026-01-01T12:30:00Z",
    "connect": {
        "host": None,
        "public_ip": "198.51.100.10",
        "private_ip": "192.0.2.4",
        "username": "azureuser",
    },
    "warnings": ["an existing rule already allows port 22 from the internet"],
}


def test_json_mode_prints_parseable_json_and_human_mode_text() -> None:
    out, err = io.StringIO(), io.StringIO()
    Output(json_mode=True, stdout=out, stderr=err).result({"grants": [GRANT]}, lambda: "never")
    assert json.loads(out.getvalue())["grants"][0]["id"] == "g-1"
    out = io.StringIO()
    Output(json_mode=False, stdout=out, stderr=err).result({"x": 1}, lambda: "hello")
    assert out.getvalue() == "hello\n"


def test_broker_errors_keep_the_broker_message_in_both_modes() -> None:
    error = BrokerError(409, "vm_not_running", "VM stopped-01 is deallocated, not running: start it first")
    out, err = io.StringIO(), io.StringIO()
    Output(json_mode=True, stdout=out, stderr=err).error(error)
    body = json.loads(out.getvalue())["error"]
    assert body == {
        "code": "vm_not_running",
        "message": "VM stopped-01 is deallocated, not running: start it first",
        "status": 409,
        "exit_code": 6,
    }
    assert "VM stopped-01 is deallocated" in err.getvalue()


def test_grant_takes_the_best_connect_address_and_warning_text() -> None:
    grant = Grant.from_json(GRANT)
    assert grant.connect.host == "198.51.100.10"
    assert grant.connect.username == "azureuser"
    assert grant.warnings == ("an existing rule already allows port 22 from the internet",)


def test_grants_table_and_relative_expiry() -> None:
    text = grants_table([GRANT], show_principal=True)
    assert text.splitlines()[0].split() == ["ID", "PRINCIPAL", "VM", "PORT", "SOURCE", "STATUS", "EXPIRES"]
    assert "alice@contoso.test" in text
    assert grants_table([]) == "(none)"
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert until("2026-01-01T12:30:00Z", now) == "2026-01-01 12:30:00Z (in 30m00s)"


def test_lease_renews_halfway_allowing_for_a_second_of_clock_granularity() -> None:
    assert renew_after(1800) == 899.5
    assert renew_after(3) == 1.0
    assert renew_after(0.5) == 0.2
