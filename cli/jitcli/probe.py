"""Wait until a TCP port answers: connect probes with a short backoff, and a spinner showing elapsed time.

An NSG rule takes effect some seconds after ARM reports it written; probing replaces the old fixed sleep.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from typing import TextIO

_FIRST_DELAY_S = 0.2
_MAX_DELAY_S = 2.0
_ATTEMPT_TIMEOUT_S = 3.0
_FRAMES = "|/-\\"


def port_answers(host: str, port: int, timeout: float) -> bool:
    """True when a TCP connection to host:port completes within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    *,
    tick: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """Probe until host:port answers; the seconds it took, or None when `timeout` passed first."""
    started = clock()
    delay = _FIRST_DELAY_S
    while True:
        elapsed = clock() - started
        left = timeout - elapsed
        if left <= 0:
            return None
        if port_answers(host, port, min(_ATTEMPT_TIMEOUT_S, left)):
            return clock() - started
        if tick:
            tick(clock() - started)
        left = timeout - (clock() - started)
        if left <= 0:
            return None
        sleep(min(delay, left))
        delay = min(delay * 2, _MAX_DELAY_S)


class Spinner:
    """Shows `waiting for HOST:PORT … 4s` on a terminal; on a pipe, a line every ten seconds instead."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._frame = 0
        self._last_line_at = -10.0

    def start(self) -> None:
        """Announce the wait."""
        if not self._tty:
            print(f"{self.label} …", file=self.stream, flush=True)
            self._last_line_at = 0.0

    def tick(self, elapsed: float) -> None:
        """Redraw with the elapsed time."""
        if self._tty:
            self._frame = (self._frame + 1) % len(_FRAMES)
            self.stream.write(f"\r{_FRAMES[self._frame]} {self.label} … {elapsed:.0f}s ")
            self.stream.flush()
        elif elapsed - self._last_line_at >= 10:
            print(f"{self.label} … still waiting ({elapsed:.0f}s)", file=self.stream, flush=True)
            self._last_line_at = elapsed

    def stop(self, message: str) -> None:
        """Replace the spinner with a final line."""
        if self._tty:
            self.stream.write("\r\033[K")
        print(message, file=self.stream, flush=True)
