"""Ctrl-C, SIGTERM and SIGHUP during a session: forward to the running client, otherwise unwind to cleanup.

Either way `jit` reaches its `finally` and revokes the grant; only SIGKILL skips that, and then the broker's
expiry closes the door.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

_FORWARD_GRACE_S = 0.5


def _forward(child: subprocess.Popen[Any], signum: int) -> None:
    """Send `signum` to the client unless it has ended meanwhile."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)


class Interrupted(Exception):
    """A signal arrived while no client was running; carries the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _session_signals() -> list[signal.Signals]:
    wanted = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"]
    return [getattr(signal, name) for name in wanted if hasattr(signal, name)]


class SignalGuard:
    """Installs the session's signal handlers (main thread only) and restores the old ones on exit."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[Any] | None = None
        self.received: int | None = None
        self.client_started = False
        self._deferring = False
        self._deferred = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        for sig in _session_signals():
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        child = self.child
        if child is not None and child.poll() is None:
            # The client decides how to end (ssh closes its channel); its exit code becomes ours. A terminal
            # sends Ctrl-C (and a hangup) to the client too, so pass the signal on only if the client is
            # still running a moment later: a second signal could cut its own clean exit short.
            forward = threading.Timer(_FORWARD_GRACE_S, _forward, (child, signum))
            forward.daemon = True
            forward.start()
            return
        if self._deferring:
            # A step that must not be cut in half (the grant request, starting the lease, revoking): the first
            # signal waits for it to finish, a second one abandons it.
            self._deferred += 1
            if self._deferred < 2:
                return
        if self.client_started:
            # The client has ended (or is ending): let the session finish and revoke, keeping its exit code.
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Let the step finish despite one signal (kept in `received`); a second one raises Interrupted."""
        self._deferring, self._deferred = True, 0
        try:
            yield
        finally:
            self._deferring = False

    def run(self, argv: list[str]) -> int:
        """Run the client in the foreground and return its exit code (128 + N when a signal N ended it)."""
        self.client_started = True
        self.child = subprocess.Popen(argv)  # noqa: S603 - argv is built by clients.py, never through a shell
        try:
            code = self.child.wait()
        finally:
            child, self.child = self.child, None
            if child.poll() is None:
                child.terminate()
                child.wait()
        return 128 - code if code < 0 else code

    def exit_code(self) -> int:
        """128 + the signal that interrupted us, for when no client ran."""
        return 128 + (self.received or signal.SIGINT)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C raises `KeyboardInterrupt` inside the block even when `jit` started with SIGINT ignored (a
    background job of a shell without job control): a wait Ctrl-C ends must clean up, as a session does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
