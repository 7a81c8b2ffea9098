"""`jit audit`: the broker's audit trail (`GET /api/v1/audit`) for admins and auditors, every page or the
newest `--limit`, as a table or a JSON list; `--user` takes an object id or `me`, and what the broker would
refuse is refused before asking it.

The shapes and paging run against the scripted fake broker; one test reads the lab broker's real trail.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import pytest
from jitcli.main import build_parser

from tests.cli.conftest import BrokerApi, Jit
from tests.cli.fakebroker import FakeBroker, Reply

AUDIT = "/api/v1/audit"
WEB_01 = "/subscriptions/s/resourceGroups/rg-jit/providers/Microsoft.Compute/virtualMachines/web-01"
ALICE = "a11ce000-0000-4000-8000-000000000001"


def event(kind: str, at: str, grant_id: str | None = "g-1", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": kind,
        "at": at,
        "grant_id": grant_id,
        "principal": ALICE,
        "source": "203.0.113.10/32",
        "vm_id": WEB_01,
        "port": 22,
        "reason": None,
        "detail": None,
    }
    body.update(changes)
    return body


def query(seen: Any) -> dict[str, list[str]]:
    return parse_qs(seen.query)


# -- shapes and paging (fake broker) ------------------------------------------------------------------------


def test_json_is_one_list_of_every_page_with_the_filters_sent(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    page1 = [event("revoked", "2030-05-01T12:03:00Z"), event("granted", "2030-05-01T12:01:00Z")]
    page2 = [event("requested", "2030-05-01T12:00:00Z")]
    fake.on(
        "GET",
        AUDIT,
        Reply(200, {"events": page1, "nextLink": f"{AUDIT}?since=PT2H&limit=1000&cursor=c-2"}),
        Reply(200, {"events": page2, "nextLink": None}),
    )
    done = jit.run(
        "audit", "--since", "2h", "--kind", "granted", "--vm", "web-01", "--user", ALICE.upper(), "--json",
        JIT_BROKER_URL=fake.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == page1 + page2
    first, second = fake.requests("GET", AUDIT)
    assert query(first) == {
        "since": ["PT2H"],  # sent as ISO 8601
        "kind": ["granted"],
        "vm": ["web-01"],
        "user": [ALICE],
        "limit": ["1000"],
    }
    assert query(second)["cursor"] == ["c-2"]


def test_limit_stops_at_that_many_events_and_says_more_match(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    pages = [
        Reply(200, {"events": [event("granted", f"2030-05-01T12:0{9 - 2 * n - i}:00Z") for i in (0, 1)],
                    "nextLink": f"{AUDIT}?limit=3&cursor=c-{n + 1}"})
        for n in range(3)
    ]  # fmt: skip
    fake.on("GET", AUDIT, *pages)
    done = jit.run("audit", "--limit", "3", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert [e["at"] for e in json.loads(done.stdout)] == [
        "2030-05-01T12:09:00Z",
        "2030-05-01T12:08:00Z",
        "2030-05-01T12:07:00Z",
    ]
    asked = fake.requests("GET", AUDIT)
    assert len(asked) == 2  # the third page is never asked for
    assert query(asked[0])["limit"] == ["3"]
    assert "showing the newest 3 events; more match" in done.stderr


def test_the_table_names_time_kind_who_by_vm_port_source_grant_and_reason(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    events = [
        event("denied", "2030-05-01T12:05:00+00:00", None, reason="vm_not_eligible: not opted in", port=None),
        event("requested", "2030-05-01T12:00:00Z", "g-7f3a", detail="INC-1234\x1b]0;pwned\x07\nfake row"),
        event("revoked", "2030-05-01T11:00:00Z", "g-1", actor="ca201000-0000-4000-8000-000000000003"),
    ]
    fake.on("GET", AUDIT, Reply(200, {"events": events, "nextLink": None}))
    done = jit.run("audit", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["TIME", "KIND", "WHO", "BY", "VM", "PORT", "SOURCE", "GRANT", "REASON"]
    assert len(lines) == 4
    assert lines[1].split()[:6] == ["2030-05-01", "12:05:00Z", "denied", ALICE, "web-01", "203.0.113.10/32"]
    assert lines[1].endswith("vm_not_eligible: not opted in")
    assert lines[2].split()[:8] == [
        "2030-05-01", "12:00:00Z", "requested", ALICE, "web-01", "22", "203.0.113.10/32", "g-7f3a"
    ]  # fmt: skip
    # a justification is the requester's text: it may not steer the reader's terminal or forge a row
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert lines[2].endswith("INC-1234\\x1b]0;pwned\\x07\\nfake row")
    assert lines[3].split()[3:5] == [ALICE, "ca201000-0000-4000-8000-000000000003"]  # whose, and who did it

    fake.on("GET", AUDIT, Reply(200, {"events": [], "nextLink": None}))
    assert jit.run("audit", JIT_BROKER_URL=fake.url).stdout.strip() == "(none)"


def test_user_me_is_the_callers_object_id(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("GET", "/api/v1/whoami", Reply(200, {"principal": ALICE, "roles": ["JIT.Auditor"]}))
    fake.on("GET", AUDIT, Reply(200, {"events": [], "nextLink": None}))
    done = jit.run("audit", "--user", "me", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert query(fake.requests("GET", AUDIT)[0])["user"] == [ALICE]


@pytest.mark.parametrize(
    ("args", "exit_code", "words"),
    [
        (("--user", "alice@contoso.test"), 2, "az ad user show --id alice@contoso.test"),
        (("--user", "Alice Admin-Free"), 2, "not an object id"),
        (("--kind", "opened"), 2, "invalid choice"),
        (("--limit", "0"), 2, "at least 1"),
        (("--since", "yesterday"), 10, "not a duration"),
        (("--since", "1.5h"), 10, "whole numbers"),
        (("--since", "2030-01-01T00:00:00"), 10, "time zone"),
        (("--until", "2030-13-01T00:00:00Z"), 10, "not an ISO 8601 time"),
    ],
)
def test_what_the_broker_would_refuse_is_refused_before_asking(
    jit: Jit, fake_broker: FakeBroker, args: tuple[str, ...], exit_code: int, words: str
) -> None:
    done = jit.run("audit", *args, JIT_BROKER_URL=fake_broker.url)
    assert done.returncode == exit_code, done.stderr
    assert words in done.stderr
    assert fake_broker.seen == []


def test_a_time_with_its_zone_is_sent_as_written(jit: Jit, fake_broker: FakeBroker) -> None:
    fake_broker.on("GET", AUDIT, Reply(200, {"events": [], "nextLink": None}))
    done = jit.run(
        "audit", "--since", "2030-05-01T10:00:00+02:00", "--until", "2030-05-01T12:00:00Z",
        JIT_BROKER_URL=fake_broker.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    asked = query(fake_broker.requests("GET", AUDIT)[0])
    assert (asked["since"], asked["until"]) == (["2030-05-01T10:00:00+02:00"], ["2030-05-01T12:00:00Z"])


def test_a_refusal_exits_4_and_the_error_code_header_stands_in_for_a_lost_body(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    message = "reading the audit trail needs the JIT.Admin or JIT.Auditor app role"
    fake.on("GET", AUDIT, Reply(403, {"error": {"code": "forbidden", "message": message}}))
    done = jit.run("audit", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 4
    assert message in done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "forbidden"

    # a proxy on the way that replaces the body keeps the header: still "not allowed", not "other error"
    fake.on("GET", AUDIT, Reply(403, {"message": "Forbidden"}, {"x-ms-error-code": "forbidden"}))
    done = jit.run("audit", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 4, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "forbidden"


def test_audit_is_a_command_with_its_kinds() -> None:
    args = build_parser().parse_args(["audit", "--kind", "orphan_removed", "--user", "ME", "--limit", "5"])
    assert (args.command, args.kind, args.user, args.limit) == ("audit", "orphan_removed", "me", 5)


# -- the lab broker's real trail ----------------------------------------------------------------------------


def test_an_admin_reads_a_grants_events_and_a_requester_is_not_allowed(
    jit: Jit, api: BrokerApi, scenario: Any
) -> None:
    granted = jit.run("grant", "web-01", "--port", "22", "--duration", "10m", "--reason", "INC-42", "--json")
    assert granted.returncode == 0, granted.stderr
    grant = json.loads(granted.stdout)
    assert jit.run("revoke", grant["id"]).returncode == 0

    done = jit.run("audit", "--since", "1h", "--json", user="carol")
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)
    assert isinstance(events, list)
    stamps = [e["at"] for e in events]
    assert stamps == sorted(stamps, reverse=True)
    mine = [e for e in events if e["grant_id"] == grant["id"]]
    assert sorted(e["kind"] for e in mine) == ["granted", "requested", "revoked"]
    alice = scenario.user("alice").oid
    assert {(e["principal"], e["port"], e["source"]) for e in mine} == {(alice, 22, grant["source"])}
    requested = next(e for e in mine if e["kind"] == "requested")
    assert requested["detail"] == "INC-42"

    only = jit.run("audit", "--since", "1h", "--user", alice, "--kind", "requested", "--vm", "web-01",
                   "--json", user="carol")  # fmt: skip
    assert only.returncode == 0, only.stderr
    picked = json.loads(only.stdout)
    assert grant["id"] in {e["grant_id"] for e in picked}
    assert {(e["kind"], e["principal"]) for e in picked} == {("requested", alice)}

    table = jit.run("audit", "--since", "1h", "--limit", "50", user="carol")
    assert table.returncode == 0, table.stderr
    assert any(grant["id"] in line and "requested" in line for line in table.stdout.splitlines())

    refused = jit.run("audit")
    assert refused.returncode == 4
    assert "403" in refused.stderr and "JIT.Auditor" in refused.stderr
