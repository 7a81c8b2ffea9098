"""Lists page (docs/api.md): `jit ls`, `jit vms` and `jit revoke --mine` follow `nextLink` to the last page,
only on the broker's own origin, and never round in circles. The fake broker serves the pages; the lab
broker's own paging is checked in tests/broker/test_operations_api.py."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from tests.cli.conftest import Jit
from tests.cli.fakebroker import GRANTS, FakeBroker, Reply

VMS = "/api/v1/vms"


def vm(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "id": f"/subscriptions/s/resourceGroups/rg-jit/providers/Microsoft.Compute/virtualMachines/{name}",
        "subscription": "s",
        "resource_group": "rg-jit",
        "ports": [22],
        "power_state": "running",
        "os": "Linux",
        "max_duration": "PT1H",
        "justification_required": False,
    }


def query(seen: Any) -> dict[str, list[str]]:
    return parse_qs(seen.query)


def test_ls_follows_next_link_to_the_last_page(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    first = fake.grant(id="g-page1", vm="web-01")
    second = fake.grant(id="g-page2", vm="db-01")
    fake.on(
        "GET",
        GRANTS,
        Reply(200, {"grants": [first], "nextLink": f"{GRANTS}?status=active&limit=1&cursor=o1"}),
        Reply(200, {"grants": [second], "nextLink": None}),
    )
    done = jit.run("ls", "--status", "active", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert [g["id"] for g in json.loads(done.stdout)["grants"]] == ["g-page1", "g-page2"]
    asked = fake.requests("GET", GRANTS)
    assert len(asked) == 2
    assert query(asked[0]) == {"status": ["active"], "limit": ["1000"]}  # the broker's largest page
    assert query(asked[1]) == {"status": ["active"], "limit": ["1"], "cursor": ["o1"]}  # the link as given
    assert all(seen.authorization.startswith("Bearer ") for seen in asked)

    fake.on(
        "GET",
        GRANTS,
        Reply(200, {"grants": [first], "nextLink": f"{GRANTS}?cursor=o1"}),
        Reply(200, {"grants": [second], "nextLink": None}),
    )
    human = jit.run("ls", JIT_BROKER_URL=fake.url)
    assert human.returncode == 0, human.stderr
    assert "g-page1" in human.stdout and "g-page2" in human.stdout


def test_vms_follows_next_link_relative_or_absolute_on_the_brokers_origin(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    fake.on(
        "GET",
        VMS,
        Reply(200, {"vms": [vm("web-01")], "nextLink": f"{VMS}?limit=1&cursor=o1"}),
        Reply(200, {"vms": [vm("db-01")], "nextLink": f"{fake.url}{VMS}?limit=1&cursor=o2"}),
        Reply(200, {"vms": [vm("win-01")]}),  # no nextLink at all: the last page too
    )
    done = jit.run("vms", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert names == ["web-01", "db-01", "win-01"]
    assert [query(s).get("cursor") for s in fake.requests("GET", VMS)] == [None, ["o1"], ["o2"]]


def test_a_broker_without_paging_is_read_in_one_request(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("GET", VMS, Reply(200, {"vms": [vm("web-01"), vm("db-01")]}))
    done = jit.run("vms", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert [v["name"] for v in json.loads(done.stdout)["vms"]] == ["web-01", "db-01"]
    assert len(fake.requests("GET", VMS)) == 1


def test_revoke_mine_closes_open_grants_on_every_page(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on(
        "GET",
        GRANTS,
        Reply(200, {"grants": [fake.grant(id="g-one")], "nextLink": f"{GRANTS}?cursor=o1"}),
        Reply(200, {"grants": [fake.grant(id="g-two"), fake.grant("expired", id="g-old")], "nextLink": None}),
    )
    for grant_id in ("g-one", "g-two"):
        fake.on("DELETE", f"{GRANTS}/{grant_id}", Reply(200, fake.grant("revoked", id=grant_id)))
    done = jit.run("revoke", "--mine", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    assert sorted(g["id"] for g in json.loads(done.stdout)["revoked"]) == ["g-one", "g-two"]
    assert sorted(s.path for s in fake.requests("DELETE")) == [f"{GRANTS}/g-one", f"{GRANTS}/g-two"]


def test_a_next_link_to_another_origin_is_refused_not_followed(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    for link in ("https://attacker.example/api/v1/grants?cursor=o1", "//attacker.example/api/v1/grants"):
        fake.seen.clear()
        fake.on("GET", GRANTS, Reply(200, {"grants": [fake.grant()], "nextLink": link}))
        done = jit.run("ls", "--json", JIT_BROKER_URL=fake.url)
        assert done.returncode == 1, done.stderr
        assert "points elsewhere" in done.stderr and "not sending the token there" in done.stderr
        assert json.loads(done.stdout)["error"]["code"] == "bad_response"
        assert len(fake.requests("GET", GRANTS)) == 1


def test_a_next_link_that_repeats_ends_with_an_error_instead_of_a_loop(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    fake = fake_broker
    fake.on("GET", GRANTS, Reply(200, {"grants": [fake.grant()], "nextLink": f"{GRANTS}?cursor=o1"}))
    done = jit.run("ls", JIT_BROKER_URL=fake.url)
    assert done.returncode == 1
    assert "repeats itself" in done.stderr
    assert len(fake.requests("GET", GRANTS)) == 2


def test_an_error_on_a_later_page_is_the_brokers_error(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on(
        "GET",
        GRANTS,
        Reply(200, {"grants": [fake.grant()], "nextLink": f"{GRANTS}?cursor=o9"}),
        fake.error(
            400, "invalid_request", "cursor is not one this broker handed out; start again without it"
        ),
    )
    done = jit.run("ls", JIT_BROKER_URL=fake.url)
    assert done.returncode == 10
    assert "cursor is not one this broker handed out" in done.stderr
