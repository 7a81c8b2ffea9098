"""A `jit` command running on a caller's machine in the network lab, read line by line as it happens.

stdout and stderr come merged (the CLI's progress, ssh's own messages and the remote command's output), each
line stamped with `time.monotonic()` when it arrived, so a story can echo them and a benchmark can time them.
The process leads its own process group: `kill()` ends `jit` and the ssh it started, as a crash would.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO


@dataclass(frozen=True)
class Line:
    """One line of output and when it arrived (`time.monotonic()`)."""

    at: float
    text: str


class JitRun:
    """`JitRun(argv)`: start a command with piped stdin and merged output; `wait_for`, `send`, `finish`."""

    def __init__(self, argv: Sequence[str], *, echo: Callable[[str], None] | None = None) -> None:
        self.started = time.monotonic()
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(  # noqa: S603 - argv, no shell
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[Line] = []
        self._echo = echo
        self._ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="jit-run-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream: IO[bytes] | None = self.proc.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = Line(time.monotonic(), raw.decode(errors="replace").rstrip("\r\n"))
            if self._echo is not None:
                self._echo(line.text)  # before anyone waiting for it sees it, so what they print comes after
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, needle: str | re.Pattern[str], timeout: float, *, after: int = 0) -> Line | None:
        """The first line (from index `after` on) containing `needle` (or matching it, a pattern); None when
        none came in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if needle.search(line.text) if isinstance(needle, re.Pattern) else needle in line.text:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    return None
                self._changed.wait(left)

    def settle(self, quiet: float = 0.3, timeout: float = 3.0) -> None:
        """Wait until no new line came for `quiet` seconds (at most `timeout`): a message printed whole."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._ended:
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(min(quiet, left))
                if len(self.lines) == seen:
                    return

    def ask(self, text: str, timeout: float = 5.0) -> bool:
        """Send a line to a session echoing `echo:<line>` back; whether the echo came within `timeout` s."""
        mark = len(self.lines)
        return self.send(text) and self.wait_for(f"echo:{text}", timeout, after=mark) is not None

    def send(self, text: str) -> bool:
        """Write a line to the command's stdin; False when it no longer reads."""
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(text.encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    def finish(self, timeout: float = 60.0) -> int:
        """Close stdin (the remote command sees end of input), wait for the exit code, collect the output."""
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (jit and its ssh): nothing runs `jit`'s cleanup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)

    def close(self) -> None:
        """Make sure nothing of this run is left (idempotent)."""
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def output(self) -> str:
        """Everything printed so far."""
        with self._changed:
            return "\n".join(line.text for line in self.lines)
