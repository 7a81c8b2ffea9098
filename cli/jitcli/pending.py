"""Grants the broker accepted but has not finished (`202 Accepted`, status `pending`): poll until they settle.

The broker answers every request within 25 s; a grant (or an extension) whose NSG write takes longer is
answered 202 with the grant, a Location to poll and a Retry-After. `GET` on the grant then answers 200 while
it is `pending`, and `active` once the door is open; `failed` (with a `reason`) or any other closed status
means it will never open.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from jitcli.api import Answer, BrokerClient
from jitcli.durations import human_duration
from jitcli.errors import BrokerError, BrokerUnreachable, CliError, GrantFailed, GrantPending
from jitcli.models import Grant
from jitcli.probe import Spinner

#: Poll after this long when the broker sends no Retry-After; never wait longer than the cap between polls.
DEFAULT_POLL_S = 2.0
MAX_POLL_S = 10.0
#: A Retry-After of 0 would poll in a tight loop.
MIN_POLL_S = 0.5
#: Redraw the spinner at least this often while waiting for the next poll.
_TICK_S = 0.5


def poll_delay(retry_after: float | None) -> float:
    """Seconds until the next poll: the broker's Retry-After (default 2 s), between 0.5 s and 10 s."""
    if retry_after is None:
        return DEFAULT_POLL_S
    return min(MAX_POLL_S, max(MIN_POLL_S, retry_after))


def _transient(exc: CliError) -> bool:
    """A poll that may well work next time: no answer, throttled, or the broker failing upstream."""
    if isinstance(exc, BrokerUnreachable):
        return True
    return isinstance(exc, BrokerError) and (exc.status >= 500 or exc.status in (408, 429))


def settle(
    client: BrokerClient,
    grant: Grant,
    answer: Answer,
    *,
    timeout: float,
    tick: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Grant, Answer]:
    """Poll a pending grant until it is active; GrantFailed when it closed instead, GrantPending after
    `timeout` seconds. A poll that fails transiently (5xx, 429, no answer) is repeated within the bound."""
    started = clock()
    location = answer.location
    delay = poll_delay(answer.retry_after)
    while grant.status == "pending":
        if not _pause(delay, started=started, timeout=timeout, tick=tick, clock=clock, sleep=sleep):
            raise GrantPending(grant, human_duration(timeout))
        try:
            grant, answer = client.poll_grant(grant.id, location)
        except CliError as exc:
            if not _transient(exc):
                raise
            delay = DEFAULT_POLL_S
            continue
        location = answer.location or location
        delay = poll_delay(answer.retry_after)
    if grant.status != "active":
        raise GrantFailed(grant)
    return grant, answer


def _pause(
    delay: float,
    *,
    started: float,
    timeout: float,
    tick: Callable[[float], None] | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> bool:
    """Wait `delay` seconds (ticking the spinner), cut short by the bound; False when the bound has passed."""
    until = clock() + delay
    while True:
        now = clock()
        if now - started >= timeout:
            return False
        if now >= until:
            return True
        if tick:
            tick(now - started)
        sleep(min(_TICK_S, until - now, timeout - (now - started)))


def wait_active(
    client: BrokerClient,
    grant: Grant,
    answer: Answer,
    *,
    timeout: float,
    label: str,
    pending_hint: str | None = None,
) -> tuple[Grant, Answer]:
    """`settle` with the spinner `jit` shows while probing a port; the final line says how it ended."""
    spinner = Spinner(label)
    spinner.start()
    started = time.monotonic()
    try:
        grant, answer = settle(client, grant, answer, timeout=timeout, tick=spinner.tick)
    except GrantFailed as exc:
        spinner.stop(f"grant {exc.grant.id} is {exc.grant.status or 'closed'}")
        raise
    except GrantPending as exc:
        spinner.stop(f"grant {exc.grant.id} is still pending after {human_duration(timeout)}")
        if pending_hint:
            exc.hint = pending_hint
        raise
    except BaseException:
        spinner.stop(f"stopped waiting for grant {grant.id}")
        raise
    spinner.stop(f"grant {grant.id} is active after {time.monotonic() - started:.1f}s")
    return grant, answer
