"""Grants the broker accepted but has not finished (`202 Accepted`): poll until they settle.

The broker answers every request within 25 s; a grant (or an extension) whose NSG write takes longer is
answered 202 with the grant, a Location to poll and a Retry-After. `GET` on the grant then answers 200 while
it is `pending`, and `active` once the door is open; `failed` (with a `reason`) or any other closed status
means it will never open.

On a VM tagged `jit-approval: required` the 202 carries the grant in status `awaiting_approval` and an
`approval` object (who may approve, `wait_until`). The same polling then waits for an approver: approved, the
grant goes `pending`/`active` (its clock started at the approval) and the wait goes on as above with its
usual bound; `denied`, `withdrawn` or `expired` (nobody answered before `wait_until`) end it. That wait is
bounded by `wait_until` plus a margin for the broker's sweeper, not by `grant_wait`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from jitcli.api import Answer, BrokerClient
from jitcli.durations import human_duration
from jitcli.errors import (
    ApprovalDenied,
    BrokerError,
    BrokerUnreachable,
    CliError,
    GrantFailed,
    GrantPending,
    NotApproved,
)
from jitcli.models import AWAITING_APPROVAL, UNAPPROVED_ENDS, WAITING_STATUSES, Grant, closed_line
from jitcli.output import iso_as_human, printable, until
from jitcli.probe import Spinner

#: Poll after this long when the broker sends no Retry-After; never wait longer than the cap between polls.
DEFAULT_POLL_S = 2.0
MAX_POLL_S = 10.0
#: A Retry-After of 0 would poll in a tight loop.
MIN_POLL_S = 0.5
#: Redraw the spinner at least this often while waiting for the next poll.
_TICK_S = 0.5
#: A request still awaiting approval at its `wait_until` is ended (`expired`) by the broker's sweeper, which
#: runs every minute: wait this much longer for that word before giving up.
APPROVAL_MARGIN_S = 120.0


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


def approval_bound(grant: Grant, answer: Answer) -> float:
    """Seconds to wait for an approver: until the request's `wait_until` by the broker's clock (its Date
    header), plus APPROVAL_MARGIN_S. A grant without `approval.wait_until` waits until its `expires_at`, which
    the broker sets to the same moment while a request waits."""
    end = grant.approval.wait_until if grant.approval and grant.approval.wait_until else grant.expires_at
    now = answer.server_time or datetime.now(UTC)
    return max(0.0, (end - now).total_seconds() + APPROVAL_MARGIN_S)


def ended(grant: Grant) -> GrantFailed:
    """The error for a grant that closed instead of becoming active: denied by an approver (exit 12),
    never approved (expired, withdrawn: exit 13), or failed or closed once approved or without approval
    (exit 8)."""
    approval = grant.approval
    if approval is not None and grant.status in UNAPPROVED_ENDS:
        if grant.status == "denied":
            return ApprovalDenied(grant)
        if grant.status == "withdrawn" or approval.decided_at is None:
            return NotApproved(grant)
    return GrantFailed(grant)


def settle(
    client: BrokerClient,
    grant: Grant,
    answer: Answer,
    *,
    timeout: float,
    tick: Callable[[float], None] | None = None,
    seen: Callable[[Grant, Answer], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Grant, Answer]:
    """Poll a grant the broker accepted until it is active; `ended(grant)` (GrantFailed or a subclass) when it
    closed instead. A `pending` grant is given `timeout` seconds (GrantPending after), counted from when it
    became pending; one `awaiting_approval` is given until its `wait_until` plus a margin (NotApproved after).
    A poll that fails transiently (5xx, 429, no answer) is repeated within the bound. `seen` hears every
    answer, so a caller knows the grant's last status when it is interrupted."""
    started = clock()
    bound = approval_bound(grant, answer) if grant.status == AWAITING_APPROVAL else timeout
    location = answer.location
    delay = poll_delay(answer.retry_after)
    while grant.status in WAITING_STATUSES:
        if not _pause(delay, started=started, timeout=bound, tick=tick, clock=clock, sleep=sleep):
            if grant.status == AWAITING_APPROVAL:
                end = grant.approval.wait_until if grant.approval else None
                raise NotApproved(grant, gave_up=_moment(end or grant.expires_at))
            raise GrantPending(grant, human_duration(timeout))
        try:
            polled, answer = client.poll_grant(grant.id, location)
        except CliError as exc:
            if not _transient(exc):
                raise
            delay = DEFAULT_POLL_S
            continue
        if seen is not None:
            seen(polled, answer)
        if polled.status != grant.status and polled.status == "pending":
            started, bound = clock(), timeout  # approved: the broker now opens the door, as after any 202
        grant = polled
        location = answer.location or location
        delay = poll_delay(answer.retry_after)
    if grant.status != "active":
        raise ended(grant)
    return grant, answer


def _moment(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%SZ}"


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


class Latest:
    """The grant as the broker last showed it while `jit` waited (a `seen` callback for `wait_active`): what
    to close when the wait is interrupted."""

    def __init__(self, grant: Grant) -> None:
        self.grant = grant

    def __call__(self, grant: Grant, _answer: Answer) -> None:
        self.grant = grant


def wait_active(
    client: BrokerClient,
    grant: Grant,
    answer: Answer,
    *,
    timeout: float,
    label: str,
    pending_hint: str | None = None,
    seen: Callable[[Grant, Answer], None] | None = None,
) -> tuple[Grant, Answer]:
    """`settle` with the spinner `jit` shows while probing a port; the final line says how it ended. While the
    grant awaits approval the spinner says so; once approved, a line names the approver and `label` takes
    over for the rest of the wait."""
    waiting_for_approval = grant.status == AWAITING_APPROVAL
    approved = False
    spinner = Spinner(approval_label(grant) if waiting_for_approval else label)
    spinner.start()
    started = time.monotonic()

    def on_answer(polled: Grant, polled_answer: Answer) -> None:
        nonlocal spinner, started, waiting_for_approval, approved
        if seen is not None:
            seen(polled, polled_answer)
        if not waiting_for_approval or polled.status == AWAITING_APPROVAL:
            return
        waiting_for_approval = False
        if polled.status in UNAPPROVED_ENDS and not (polled.approval and polled.approval.decided_at):
            return  # never approved: the final line below says how it ended
        if polled.status == "denied":
            return
        spinner.stop(
            f"grant {polled.id} approved by {_decider(polled)} after {_took(started)}{_because(polled)}"
        )
        approved = True
        spinner = Spinner(label)
        started = time.monotonic()
        if polled.status == "pending":
            spinner.start()  # the broker is opening the door: the usual wait follows

    def tick(elapsed: float) -> None:
        spinner.tick(elapsed)  # the spinner of the moment: a new one follows the approval

    try:
        grant, answer = settle(client, grant, answer, timeout=timeout, tick=tick, seen=on_answer)
    except ApprovalDenied as exc:
        spinner.stop(f"grant {exc.grant.id} was denied by {_decider(exc.grant)}{_because(exc.grant)}")
        raise
    except NotApproved as exc:
        if exc.code == "approval_timeout":
            spinner.stop(f"grant {exc.grant.id} is still waiting for an approver after {_took(started)}")
        else:
            spinner.stop(f"grant {exc.grant.id} was not approved: it is {_closed_status(exc.grant)}")
        raise
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
    if approved:  # its clock started at the approval: say until when it lasts
        spinner.stop(
            f"grant {grant.id} is active: port {grant.port} on {grant.vm} until {until(grant.expires_at)}"
        )
    else:
        spinner.stop(f"grant {grant.id} is active after {_took(started)}")
    return grant, answer


def approval_label(grant: Grant) -> str:
    """The spinner's words while a request waits for an approver."""
    return f"waiting for approval of port {grant.port} on {grant.vm} (grant {grant.id})"


def approval_notice(grant: Grant, answer: Answer) -> str:
    """What `jit` says when a VM needs approval: who can approve, what to pass on, until when it waits."""
    approval = grant.approval
    role = approval.approver_role if approval else None
    lasting = approval.requested_duration if approval else None
    asked = f" for {iso_as_human(lasting)}, counted from the approval" if lasting else ""
    end = approval.wait_until if approval and approval.wait_until else grant.expires_at
    now = answer.server_time or datetime.now(UTC)
    since = ""
    if grant.created_at is not None and (now - grant.created_at).total_seconds() > 10:
        since = f" (your request of {_moment(grant.created_at)}, still waiting)"
    who = f"anyone with the app role {role}, except you" if role else "an approver (not you)"
    return "\n".join(
        [
            f"{grant.vm} needs approval: grant {grant.id} asks for port {grant.port}{asked}{since}.",
            f"  who can approve  {who}",
            f"  pass on          jit approve {grant.id}",
            f"  waits until      {_moment(end)} (in {human_duration((end - now).total_seconds())}); "
            "Ctrl-C withdraws the request",
        ]
    )


def abandon(client: BrokerClient, grant: Grant) -> tuple[dict[str, Any], str]:
    """Close a grant nobody will use now: withdraw a request still awaiting approval (revoke it instead if an
    approver approved it a moment ago), revoke one the broker opened or is opening. The broker's answer, and
    a line that says what happened."""
    if grant.status == AWAITING_APPROVAL:
        try:
            body = client.withdraw(grant.id)
        except BrokerError as exc:
            if exc.code != "not_awaiting_approval":
                raise
            body = client.revoke(grant.id)  # approved meanwhile: its door is (being) opened, so close it
    else:
        body = client.revoke(grant.id)
    return body, closed_line(body, grant.port, grant.vm)


def _decider(grant: Grant) -> str:
    return grant.approval.decider if grant.approval else "an approver"


def _because(grant: Grant) -> str:
    reason = grant.approval.reason if grant.approval else None
    return f": {printable(reason)}" if reason else ""


def _closed_status(grant: Grant) -> str:
    reason = grant.raw.get("reason")
    return (
        f"{grant.status} ({printable(str(reason))})"
        if reason and grant.status != "withdrawn"
        else grant.status
    )


def _took(started: float) -> str:
    return f"{time.monotonic() - started:.1f}s"
