"""Fixtures of the fault matrix: the Table Storage proxy, a trigger on ARM's NSG changes, the printed matrix.

The matrix is written by `pytest_terminal_summary`, so it shows in `make test` output with or without `-s`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.reliability.matrix import Matrix
from tests.reliability.table_proxy import TableProxy

if TYPE_CHECKING:
    from lab.arm import ArmEmulator
    from lab.azurite import Azurite

MATRIX = pytest.StashKey[Matrix]()


class NsgChangeTrigger:
    """Runs an action once, right after ARM took a write that changed one NSG in the wanted way.

    Subscribed once per session (the emulator has no unsubscribe); `arm()` sets the next action, `reset()`
    drops it. Called from the emulator's request thread before it answers the write.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted: tuple[str, Callable[[dict[str, Any]], bool], Callable[[], None]] | None = None

    def arm(self, nsg_name: str, when: Callable[[dict[str, Any]], bool], action: Callable[[], None]) -> None:
        """Run `action` after the first change of NSG `nsg_name` whose new state satisfies `when`."""
        with self._lock:
            self._wanted = (nsg_name.lower(), when, action)

    @property
    def armed(self) -> bool:
        """True while an action waits for its NSG change."""
        with self._lock:
            return self._wanted is not None

    def reset(self) -> None:
        """Drop the pending action."""
        with self._lock:
            self._wanted = None

    def __call__(self, nsg_id: str, nsg_json: dict[str, Any]) -> None:
        with self._lock:
            wanted = self._wanted
            if wanted is None or not nsg_id.lower().endswith(f"/{wanted[0]}") or not wanted[1](nsg_json):
                return
            self._wanted = None
        wanted[2]()


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
