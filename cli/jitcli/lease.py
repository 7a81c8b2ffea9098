"""The lease heartbeat: renew a grant before it expires for as long as the session runs.

A short grant thus lives exactly as long as the session: if `jit` is killed outright, renewals stop and the
broker's expiry closes the door. A renewal that fails transiently (no answer, 5xx, 429) is retried. One the
broker refuses (403, 409, 400…: it will not keep this door open) ends the grant there and then: the lease
revokes it and says why, in the broker's words. The running client is never killed for either.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from jitcli.api import Answer, BrokerClient
from jitcli.errors import BrokerError, CliError, GrantFailed, GrantPending
from jitcli.models import Grant, door_after_revoke

#: The broker's Date header has one-second resolution: assume up to this much less time is left.
_CLOCK_SLACK_S = 1.0
_MIN_WAIT_S = 0.2
_RETRY_WAIT_S = 5.0


class _Stopped(Exception):
    """`stop()` was called while a renewal waited on the broker."""


def seconds_left(grant: Grant, answer: Answer) -> float:
    """Seconds until the grant expires, by the broker's clock when it sent its Date header."""
    now = answer.server_time or datetime.now(UTC)
    return (grant.expires_at - now).total_seconds()


def renew_after(left: float) -> float:
    """When to renew: halfway through what is left, allowing for clock granularity."""
    return max(_MIN_WAIT_S, (left - _CLOCK_SLACK_S) / 2)


class Lease:
    """Renews a grant in a background thread until `stop()`; reports failures through `warn`."""

    def __init__(
        self,
        client: BrokerClient,
        grant: Grant,
        answer: Answer,
        duration: str | int | None,
        *,
        warn: Callable[[str], None],
        note: Callable[[str], None] | None = None,
        grant_wait_s: float = 300.0,
    ) -> None:
        self.grant = grant
        self.renewals = 0
        #: True once the lease revoked the grant itself, after the broker refused a renewal.
        self.revoked = False
        self._grant_wait_s = grant_wait_s
        self._client = client
        self._duration = duration
        self._left = seconds_left(grant, answer)
        self._warn = warn
        self._note = note or (lambda _msg: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"jit-lease-{grant.id}", daemon=True)

    def start(self) -> None:
        """Begin renewing in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (before revoking); waits for an in-flight renewal to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def _run(self) -> None:
        wait = renew_after(self._left)
        failing_since_ok = False
        while not self._stop.wait(wait):
            try:
                grant, answer = self._renew()
            except _Stopped:
                return
            except GrantFailed as exc:
                self.grant = exc.grant
                self._warn(f"{exc.message}; renewals stop")
                return
            except BrokerError as exc:
                if exc.status < 500 and exc.status not in (408, 429):
                    self._refused(exc)
                    return
                wait = self._after_failure(exc, failing_since_ok)
                failing_since_ok = True
                continue
            except CliError as exc:
                wait = self._after_failure(exc, failing_since_ok)
                failing_since_ok = True
                continue
            if failing_since_ok:
                self._warn(f"grant {self.grant.id} renewed again")
            failing_since_ok = False
            self.grant = grant
            self.renewals += 1
            self._left = seconds_left(grant, answer)
            self._note(f"renewed grant {grant.id} until {grant.expires_at:%H:%M:%SZ}")
            wait = renew_after(self._left)

    def _renew(self) -> tuple[Grant, Answer]:
        """One extension; an accepted one (202, `pending`) is polled until it settles, or `stop()`."""
        from jitcli.pending import settle

        grant, answer = self._client.extend(self.grant.id, self._duration)
        if grant.status != "pending":
            return grant, answer

        def sleep(seconds: float) -> None:
            if self._stop.wait(seconds):
                raise _Stopped

        try:
            return settle(self._client, grant, answer, timeout=self._grant_wait_s, sleep=sleep)
        except GrantPending as exc:
            raise CliError(f"the broker has not finished extending grant {grant.id}") from exc

    def _refused(self, exc: BrokerError) -> None:
        """The broker will not renew: revoke the grant now rather than leave it open, and say why."""
        why = f"the broker refused to renew grant {self.grant.id} ({exc.status} {exc.code}: {exc.message})"
        try:
            body = self._client.revoke(self.grant.id)
        except CliError as revoke_error:
            self._warn(
                f"{why}; revoking it failed too ({revoke_error.message}): it closes by itself at "
                f"{self.grant.expires_at:%H:%M:%SZ}"
            )
            return
        self.revoked = True
        with contextlib.suppress(KeyError, ValueError):
            self.grant = Grant.from_json(body)
        self._warn(
            f"{why}; revoked it: {door_after_revoke(body, self.grant.port, self.grant.vm)}. "
            "The session already running is left alone; new connections are refused"
        )

    def _after_failure(self, exc: CliError, already_failing: bool) -> float:
        if not already_failing:
            self._warn(
                f"could not renew grant {self.grant.id}: {exc.message}; it expires at "
                f"{self.grant.expires_at:%H:%M:%SZ} unless a retry succeeds (the session keeps running)"
            )
        left = (self.grant.expires_at - datetime.now(UTC)).total_seconds()
        return max(_MIN_WAIT_S, min(_RETRY_WAIT_S, left / 4))
