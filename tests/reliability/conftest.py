"""Fixtures of the reliability tests: the Table Storage proxy, a trigger on and a history of ARM's NSG
changes, the session's ARM credential, a factory of broker labs (fresh tables, reset ARM world, a concurrency
mode), and the printed fault matrix.

The matrix is written by `pytest_terminal_summary`, so it shows in `make test` output with or without `-s`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.reliability.brokers import ANSWER_BUDGET_S, BrokerLab, NsgChangeTrigger, NsgHistory
from tests.reliability.matrix import Matrix
from tests.reliability.table_proxy import TableProxy

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from lab.arm import ArmEmulator
    from lab.arm.admin import ArmAdmin
    from lab.azurite import Azurite
    from lab.issuer import TokenIssuer
    from lab.scenario import Scenario

MATRIX = pytest.StashKey[Matrix]()
L = TypeVar("L", bound=BrokerLab)
LabFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def table_proxy(azurite: Azurite) -> Iterator[TableProxy]:
    """A fault-injecting proxy in front of the session's Azurite."""
    proxy = TableProxy(azurite.host, azurite.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def nsg_changes(arm: ArmEmulator) -> NsgChangeTrigger:
    """The session's trigger on the emulator's NSG changes."""
    trigger = NsgChangeTrigger()
    arm.subscribe(trigger)
    return trigger


@pytest.fixture(scope="session")
def nsg_history(arm: ArmEmulator) -> NsgHistory:
    """The session's record of the emulator's NSG states."""
    history = NsgHistory()
    arm.subscribe(history)
    return history


@pytest.fixture(scope="session")
def arm_credential(issuer: TokenIssuer) -> TokenCredential:
    """The broker's managed identity as one credential for every in-process broker of the session, so each
    test's brokers reuse its token instead of asking the lab's identity endpoint again."""
    from azure.identity import ManagedIdentityCredential

    from lab.issuer import LAB_BROKER_IDENTITY

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IDENTITY_ENDPOINT", issuer.identity_endpoint)
        patch.setenv("IDENTITY_HEADER", issuer.identity_header)
        return ManagedIdentityCredential(client_id=LAB_BROKER_IDENTITY.client_id)


@pytest.fixture
def new_lab(
    *,
    api_broker_env: dict[str, str],
    identity_env: dict[str, str],
    arm_admin: ArmAdmin,
    table_proxy: TableProxy,
    nsg_changes: NsgChangeTrigger,
    nsg_history: NsgHistory,
    arm_credential: TokenCredential,
    azurite: Azurite,
    scenario: Scenario,
    token_for: Callable[..., str],
    tmp_path: Path,
) -> Iterator[LabFactory]:
    """`new_lab(concurrency, lro_ms, kind=BrokerLab, answer_budget=..., settings=..., **extra)`: a lab on
    fresh tables and a reset ARM world whose NSG operations run `lro_ms` and meet concurrent writes as
    `concurrency` says; nothing armed. `settings` adds broker settings (`JIT_*`) to the lab's environment;
    `extra` goes to the lab's constructor."""
    made: list[BrokerLab] = []

    def make(
        concurrency: str,
        lro_ms: int,
        kind: type[L] = BrokerLab,  # type: ignore[assignment]
        *,
        answer_budget: str = ANSWER_BUDGET_S,
        settings: dict[str, str] | None = None,
        **extra: Any,
    ) -> L:
        env = {
            **api_broker_env,
            "JIT_TABLE_PREFIX": f"rel{uuid.uuid4().hex[:10]}",
            "JIT_TABLE_CONNECTION_STRING": table_proxy.connection_string,
            "JIT_TOPOLOGY_CACHE_SECONDS": "0",
            "JIT_ARM_POLL_SECONDS": "0.05",
            "JIT_ANSWER_BUDGET_SECONDS": answer_budget,
            **(settings or {}),
        }
        arm_admin.set_knobs(concurrency=concurrency, lro_ms=lro_ms)
        table_proxy.reset()
        nsg_changes.reset()
        nsg_history.reset()
        lab = kind(
            settings_env=env,
            arm_admin=arm_admin,
            proxy=table_proxy,
            nsg_changes=nsg_changes,
            history=nsg_history,
            azurite=azurite,
            credential=arm_credential,
            token_for=token_for,
            scenario=scenario,
            log_dir=tmp_path,
            **extra,
        )
        lab.direct_store().ensure_tables()
        made.append(lab)
        return lab

    yield make
    for lab in made:
        lab.close()
    table_proxy.reset()
    nsg_changes.reset()
    arm_admin.clear_faults()


@pytest.fixture(scope="session")
def matrix(request: pytest.FixtureRequest) -> Matrix:
    """The session's fault matrix, printed when the run ends."""
    found = request.config.stash.get(MATRIX, None)
    if found is None:
        found = Matrix()
        request.config.stash[MATRIX] = found
    return found


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the fault matrix and its counts after the run."""
    found = config.stash.get(MATRIX, None)
    if found is None or not found.cells:
        return
    terminalreporter.section("reliability fault matrix")
    for line in found.lines():
        terminalreporter.write_line(line)
