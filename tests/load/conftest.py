"""Fixtures for the load test: a generated world behind one subnet NSG, served by its own ARM emulator, and
three broker processes sharing it and the session's Azurite (their own tables), trusting `X-Forwarded-For`.

Caller addresses: every broker sees 127.0.0.1 for everyone in the lab, so the brokers run with Azure's address
trust (`JIT_CLIENT_ADDRESS_FROM=x-forwarded-for`) and each synthetic user sends its own documentation-range
address, exactly as the Functions platform appends it in Azure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bench import scenarios
from lab.azurite import Azurite
from lab.broker import BrokerProcess
from lab.issuer import TokenIssuer
from lab.scenario import Scenario, load_scenario
from lab.settings import lab_broker_settings
from lab.tls import LabCA

if TYPE_CHECKING:
    from jitbroker.runtime import Broker
    from jitbroker.store import GrantStore
    from lab.arm import ArmEmulator
    from lab.arm.admin import ArmAdmin

LOAD_TABLE_PREFIX = "jitload"
RUNNING_VMS = 5
STOPPED_VMS = 1
BROKERS = 3


@pytest.fixture(scope="module")
def load_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Scenario]:
    """Five running VMs and one deallocated VM, all behind one subnet NSG."""
    world = scenarios.subnet_world(RUNNING_VMS, stopped=STOPPED_VMS)
    path = scenarios.write_scenario(world, tmp_path_factory.mktemp("load-world"))
    return path, load_scenario(path)


@pytest.fixture(scope="module")
def load_arm(load_world: tuple[Path, Scenario], lab_ca: LabCA, issuer: TokenIssuer) -> Iterator[ArmEmulator]:
    """An ARM emulator of its own, so no other test's sweeper can visit this world's NSG."""
    from lab.arm import ArmEmulator

    with ArmEmulator(load_world[1], lab_ca, token_validator=issuer.arm_token_validator) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def load_admin(load_arm: ArmEmulator, lab_ca: LabCA) -> ArmAdmin:
    """Admin client of the load test's emulator (NSG snapshots, request log)."""
    from lab.arm.admin import ArmAdmin

    return ArmAdmin(load_arm.url, verify=str(lab_ca.ca_bundle))


@pytest.fixture(scope="module")
def load_env(
    scenario: Scenario, lab_ca: LabCA, issuer: TokenIssuer, load_arm: ArmEmulator, azurite: Azurite
) -> dict[str, str]:
    """Settings shared by the three brokers: one store, one ARM, Azure's caller-address trust."""
    return lab_broker_settings(
        scenario,
        ca=lab_ca,
        issuer=issuer,
        arm_url=load_arm.url,
        azurite=azurite,
        allowed_scopes=scenarios.scope(),
        overrides={
            "JIT_CLIENT_ADDRESS_FROM": "x-forwarded-for",
            "JIT_TABLE_PREFIX": LOAD_TABLE_PREFIX,
            "JIT_ARM_POLL_SECONDS": "0.1",
        },
    )


@pytest.fixture(scope="module")
def load_brokers(load_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three broker processes on their own ports, no background sweeper: the test runs the sweeps."""
    processes = [
        BrokerProcess(load_env, sweep_interval=None, log_dir=tmp_path_factory.mktemp(f"load-broker-{n}"))
        for n in range(BROKERS)
    ]
    try:
        for process in processes:
            process.start()
        yield [process.url for process in processes]
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def load_parts(
    load_env: dict[str, str], issuer: TokenIssuer
) -> Iterator[Callable[[Callable[[], datetime]], Broker]]:
    """`load_parts(clock)`: a broker's parts built in this process (own writer, own locks) over the same
    tables and ARM, like one more broker instance; used for sweeps with a chosen clock."""
    from jitbroker.config import Settings
    from jitbroker.runtime import build

    identity = {
        "IDENTITY_ENDPOINT": load_env["IDENTITY_ENDPOINT"],
        "IDENTITY_HEADER": load_env["IDENTITY_HEADER"],
        "AZURE_CLIENT_ID": load_env["AZURE_CLIENT_ID"],
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in identity.items():
            patch.setenv(name, value)

        def make(clock: Callable[[], datetime]) -> Broker:
            return build(Settings.from_env(load_env), clock=clock)

        yield make


@pytest.fixture(scope="module")
def load_store(load_parts: Callable[[Callable[[], datetime]], Broker]) -> GrantStore:
    """The brokers' store, read from the test process."""
    return load_parts(lambda: datetime.now(UTC)).store
