"""The port probe: it waits for a real listener, and gives up cleanly on one that never comes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from jitcli.probe import port_answers, wait_for_port


@pytest.fixture
def closed_port() -> Iterator[socket.socket]:
    """A bound TCP port on 127.0.0.1 that is not listening yet: connections are refused until `listen()`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_waits_until_the_port_starts_listening(closed_port: socket.socket) -> None:
    port = closed_port.getsockname()[1]
    assert not port_answers("127.0.0.1", port, 1.0)
    ticks: list[float] = []

    def tick(elapsed: float) -> None:
        ticks.append(elapsed)
        if len(ticks) == 3:  # the port opens only after the probe has failed a few times
            closed_port.listen()

    took = wait_for_port("127.0.0.1", port, 30.0, tick=tick)
    assert took is not None
    assert len(ticks) == 3
    assert ticks == sorted(ticks)


def test_listener_started_by_another_thread_is_found(closed_port: socket.socket) -> None:
    port = closed_port.getsockname()[1]
    opener = threading.Timer(0.6, closed_port.listen)
    opener.start()
    try:
        assert wait_for_port("127.0.0.1", port, 30.0) is not None
    finally:
        opener.cancel()


def test_gives_up_after_the_timeout_on_a_port_that_never_answers(closed_port: socket.socket) -> None:
    port = closed_port.getsockname()[1]
    now = [0.0]

    def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    assert wait_for_port("127.0.0.1", port, 5.0, clock=lambda: now[0], sleep=fake_sleep) is None
    assert now[0] == pytest.approx(5.0)
