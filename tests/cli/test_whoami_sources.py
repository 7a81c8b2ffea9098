"""`jit whoami` says whether the caller may name a source other than their own address."""

from __future__ import annotations

import json

from tests.cli.conftest import Jit
from tests.cli.fakebroker import FakeBroker, Reply


def test_whoami_says_a_requester_may_not_name_sources_except_where_a_vm_allows_it(jit: Jit) -> None:
    done = jit.run("whoami", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["may_name_sources"] is False
    human = jit.run("whoami").stdout
    assert "may_name_sources" in human
    assert "no, only where a VM's jit-sources allow-list holds the source" in human


def test_whoami_says_a_holder_of_the_override_role_may_name_sources(
    jit: Jit, fake_broker: FakeBroker
) -> None:
    me = {
        "principal": "alice",
        "roles": ["JIT.SourceOverride"],
        "address": "127.0.0.1",
        "may_name_sources": True,
    }
    fake_broker.on("GET", "/api/v1/whoami", Reply(200, me))
    port = fake_broker.url.rsplit(":", 1)[1]
    human = jit.run("whoami", JIT_BROKER_URL=f"http://localhost:{port}")
    assert human.returncode == 0, human.stderr
    assert "yes, on any VM (inside a VM's jit-sources allow-list when it has one)" in human.stdout
