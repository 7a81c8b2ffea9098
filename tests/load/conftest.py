"""Fixtures for the load test: a generated world behind one subnet NSG, served by its own ARM emulator, and
three broker processes sharing it and the session's Azurite, trusting `X-Forwarded-For`.

The whole run is repeated under each of the emulator's concurrency modes (`lab.arm.knobs.CONCURRENCY_MODES`:
what an NSG write meets while another operation on that NSG is in progress): `load_mode` is a module-scoped
parameter, so pytest runs every test of one mode, then starts over with the next. Each mode gets a reset ARM
world (whose NSG operations take `LRO_MS`, so writes overlap), its own tables and three fresh brokers.

Caller addresses: every broker sees 127.0.0.1 for everyone in the lab, so the brokers run with Azure's address
trust (`JIT_CLIENT_ADDRESS_FROM=x-forwarded-for`) and each synthetic user sends its own documentation-range
address, exactly as the Functions platform appends it in Azure.

Every state of the NSG that ARM publishes (each accepted write, each finished operation) is recorded with the
moment it was handed out (`NsgStates`): ARM publishes a write's new state before it answers that write, so a
state recorded after a caller's answer is one made after the write the caller waited for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bench import scenarios
from lab.arm.knobs import CONCURRENCY_MODES
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
LRO_MS = 250  # each NSG write's operation: long enough for the three brokers' writes to overlap
MODES: tuple[str, ...] = tuple(CONCURRENCY_MODES)
SUMMARY = pytest.StashKey[dict[str, "ModeSummary"]]()


@dataclass(frozen=True)
class NsgState:
    """One state of the NSG as ARM published it, and when (monotonic seconds) it was handed out."""

    at: float
    nsg: dict[str, Any]


class NsgStates:
    """Every state of the load world's NSG that ARM published since the last `reset()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: list[NsgState] = []

    def reset(self) -> None:
        """Forget what was seen."""
        with self._lock:
            self._states = []

    @property
    def states(self) -> list[NsgState]:
        """What was seen, in order."""
        with self._lock:
            return list(self._states)

    def __call__(self, nsg_id: str, nsg_json: dict[str, Any]) -> None:
        if nsg_id.rstrip("/").rsplit("/", 1)[-1].lower() == scenarios.SUBNET_NSG.lower():
            with self._lock:
                self._states.append(NsgState(time.monotonic(), nsg_json))


@dataclass
class ModeSummary:
    """What one mode's run saw, printed at the end of the session."""

    mode: str
    people: int = 0
    granted: int = 0
    accepted_202: int = 0
    refused: int = 0
    longest_answer_s: float = 0.0
    states: int = 0
    nsg_puts: int = 0
    refused_puts: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


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
def load_states(load_arm: ArmEmulator) -> NsgStates:
    """The record of the NSG's states (subscribed once: the emulator has no unsubscribe)."""
    states = NsgStates()
    load_arm.subscribe(states)
    return states


@pytest.fixture(scope="module")
def load_admin(load_arm: ArmEmulator, lab_ca: LabCA) -> ArmAdmin:
    """Admin client of the load test's emulator (NSG state, knobs, request log)."""
    from lab.arm.admin import ArmAdmin

    return ArmAdmin(load_arm.url, verify=str(lab_ca.ca_bundle))


@pytest.fixture(scope="module", params=MODES)
def load_mode(request: pytest.FixtureRequest, load_admin: ArmAdmin, load_states: NsgStates) -> str:
    """The concurrency mode of this run: the ARM world reset, its writes slow enough to overlap."""
    mode = str(request.param)
    load_admin.reset()
    load_admin.set_knobs(concurrency=mode, lro_ms=LRO_MS)
    load_admin.clear_requests()
    load_states.reset()
    return mode


@pytest.fixture(scope="module")
def load_env(
    load_mode: str,
    *,
    scenario: Scenario,
    lab_ca: LabCA,
    issuer: TokenIssuer,
    load_arm: ArmEmulator,
    azurite: Azurite,
) -> dict[str, str]:
    """Settings shared by the three brokers of one mode: one store (the mode's own tables), one ARM, Azure's
    caller-address trust."""
    return lab_broker_settings(
        scenario,
        ca=lab_ca,
        issuer=issuer,
        arm_url=load_arm.url,
        azurite=azurite,
        allowed_scopes=scenarios.scope(),
        overrides={
            "JIT_CLIENT_ADDRESS_FROM": "x-forwarded-for",
            "JIT_TABLE_PREFIX": f"{LOAD_TABLE_PREFIX}{load_mode.replace('_', '')}",
            "JIT_ARM_POLL_SECONDS": "0.1",
        },
    )


@pytest.fixture(scope="module")
def load_brokers(
    load_mode: str, load_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[BrokerProcess]]:
    """Three broker processes on their own ports, started together; no background sweeper (the test runs
    the sweeps)."""
    processes = [
        BrokerProcess(
            load_env, sweep_interval=None, log_dir=tmp_path_factory.mktemp(f"load-{load_mode}-broker-{n}")
        )
        for n in range(BROKERS)
    ]
    try:
        with ThreadPoolExecutor(max_workers=BROKERS) as pool:
            list(pool.map(lambda p: p.start(), processes))
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def load_parts(
    load_env: dict[str, str], issuer: TokenIssuer
) -> Iterator[Callable[[Callable[[], datetime]], Broker]]:
    """`load_parts(clock)`: a broker's parts built in this process (own reconciler, own single flight) over
    the same tables and ARM, like one more broker instance; used for sweeps with a chosen clock."""
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


@pytest.fixture(scope="module")
def load_summary(request: pytest.FixtureRequest, load_mode: str) -> ModeSummary:
    """This mode's summary, printed at the end of the session."""
    summaries = request.config.stash.setdefault(SUMMARY, {})
    return summaries.setdefault(load_mode, ModeSummary(load_mode))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line per concurrency mode: what the run did, the longest HTTP answer, how long it took."""
    summaries = config.stash.get(SUMMARY, None)
    if not summaries:
        return
    terminalreporter.section("load runs (three brokers, one ARM, one store)")
    terminalreporter.write_line(
        f"{'mode':<11}{'people':>7}{'granted':>8}{'202':>5}{'refused':>8}{'longest':>9}"
        f"{'states':>8}{'PUTs':>6}{'409/412/429':>12}{'run':>7}"
    )
    for mode in MODES:
        s = summaries.get(mode)
        if s is None:
            continue
        terminalreporter.write_line(
            f"{s.mode:<11}{s.people:>7}{s.granted:>8}{s.accepted_202:>5}{s.refused:>8}"
            f"{s.longest_answer_s:>8.2f}s{s.states:>8}{s.nsg_puts:>6}{s.refused_puts:>12}{s.seconds:>6.1f}s"
        )
        for note in s.notes:
            terminalreporter.write_line(f"  {note}")
    longest = max(s.longest_answer_s for s in summaries.values())
    terminalreporter.write_line(f"longest HTTP answer in any mode: {longest:.2f}s (bound: 25s)")
