"""Fixtures for the end-to-end tests: one `PacketLab` per module, `jit` run on callers' machines.

Everything is real: network namespaces with sshd, NSGs rendered into nftables, the broker under uvicorn bound
to the lab's host address (it sees each caller's own address), the token issuer, the ARM emulator, Azurite
and the `jit` CLI with the system's `ssh`. Without root they are skipped with the reason (CI runs as root).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab.demo import JitRun, PacketLab
from lab.netlab import can_run
from tests.netlab.conftest import IssuerCredential, Rules

SUBSCRIPTION = "00000000-0000-4000-8000-0000000000a1"
USERS = ("alice", "bob", "mallory")


@pytest.fixture(scope="module")
def packet_lab() -> Iterator[PacketLab]:
    """The module's lab; its sweeper runs every second so expiry shows within seconds."""
    reason = can_run()
    if reason:
        pytest.skip(reason)
    with PacketLab(sweep_interval=1.0) as running:
        yield running


@pytest.fixture
def lab(packet_lab: PacketLab) -> Iterator[PacketLab]:
    """The lab for one test; afterwards every grant is revoked (every waiting request withdrawn) and the
    scenario's ARM world restored."""
    yield packet_lab
    packet_lab.reset(users=USERS)


@pytest.fixture
def jit_session(lab: PacketLab) -> Iterator[Callable[..., JitRun]]:
    """`jit_session(user, *args)`: a `jit` command left running (ended after the test, before the reset)."""
    runs: list[JitRun] = []

    def start(user: str, *args: str) -> JitRun:
        run = lab.jit_session(user, *args)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


@pytest.fixture
def arm_rules(lab: PacketLab) -> Rules:
    """Someone else's rule writes (an NSG owner's), through the real SDK against the lab's ARM emulator."""
    from azure.mgmt.network import NetworkManagementClient

    client: Any = NetworkManagementClient(
        IssuerCredential(lab.issuer),
        SUBSCRIPTION,
        base_url=lab.arm.url,
        connection_verify=str(lab.ca.ca_bundle),
    )
    return Rules(client)
