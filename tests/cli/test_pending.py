"""Polling a grant the broker accepted (202): how long between polls, what ends the wait, and the bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from jitcli.api import Answer, retry_after_seconds
from jitcli.errors import BrokerError, BrokerUnreachable, GrantFailed, GrantPending
from jitcli.models import Grant
from jitcli.pending import poll_delay, settle


def grant_json(status: str, **changes: Any) -> dict[str, Any]:
    body = {
        "id": "g-1",
        "status": status,
        "vm": "web-01",
        "port": 22,
        "source": "203.0.113.10/32",
        "expires_at": "2030-01-01T00:00:00Z",
    }
    return {**body, **changes}


def reply(status: str, retry_after: float | None = None, **changes: Any) -> tuple[Grant, Answer]:
    body = grant_json(status, **changes)
    return Grant.from_json(body), Answer(200, body, None, retry_after=retry_after)


class ScriptedClient:
    """`poll_grant` answers from a list (an exception is raised); records where it was asked."""

    def __init__(self, *answers: tuple[Grant, Answer] | Exception) -> None:
        self.answers = list(answers)
        self.polled: list[str | None] = []

    def poll_grant(self, grant_id: str, location: str | None = None) -> tuple[Grant, Answer]:
        self.polled.append(location)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def accepted(retry_after: float | None = 1.0) -> tuple[Grant, Answer]:
    body = grant_json("pending")
    answer = Answer(
        202, body, None, location="https://jit.example/api/v1/grants/g-1", retry_after=retry_after
    )
    return Grant.from_json(body), answer


def run(client: ScriptedClient, time: FakeTime, timeout: float = 300.0) -> tuple[Grant, Answer]:
    grant, answer = accepted()
    return settle(
        client,  # type: ignore[arg-type]
        grant,
        answer,
        timeout=timeout,
        clock=time.clock,
        sleep=time.sleep,
    )


@pytest.mark.parametrize(
    ("retry_after", "delay"), [(None, 2.0), (3.0, 3.0), (60.0, 10.0), (0.0, 0.5), (10.0, 10.0)]
)
def test_poll_delay_honours_retry_after_with_a_default_and_a_cap(
    retry_after: float | None, delay: float
) -> None:
    assert poll_delay(retry_after) == delay


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 5, 4, 10, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_polls_at_the_location_until_active_waiting_as_told() -> None:
    time = FakeTime()
    client = ScriptedClient(reply("pending", retry_after=4.0), reply("active"))
    grant, _ = run(client, time)
    assert grant.status == "active"
    assert client.polled == ["https://jit.example/api/v1/grants/g-1"] * 2
    assert time.now == pytest.approx(1.0 + 4.0)  # Retry-After of the 202, then of the pending poll


@pytest.mark.parametrize("status", ["failed", "revoked", "expired"])
def test_a_closed_status_is_a_failure_with_the_reason(status: str) -> None:
    client = ScriptedClient(reply(status, reason="NSG write failed: quota"))
    with pytest.raises(GrantFailed) as caught:
        run(client, FakeTime())
    assert "NSG write failed: quota" in caught.value.message
    assert caught.value.grant.status == status
    assert int(caught.value.exit_code) == 8


def test_gives_up_at_the_bound_with_the_grant_still_pending() -> None:
    time = FakeTime()
    client = ScriptedClient(reply("pending", retry_after=3.0))
    with pytest.raises(GrantPending) as caught:
        run(client, time, timeout=10.0)
    assert time.now == pytest.approx(10.0)  # never sleeps past the bound
    assert "still pending after 10s" in caught.value.message
    assert int(caught.value.exit_code) == 11


def test_transient_poll_failures_are_retried_within_the_bound() -> None:
    time = FakeTime()
    client = ScriptedClient(
        BrokerUnreachable("connection reset"),
        BrokerError(503, "upstream_throttled", "busy"),
        reply("active"),
    )
    assert run(client, time)[0].status == "active"
    assert len(client.polled) == 3


def test_other_poll_errors_end_the_wait() -> None:
    client = ScriptedClient(BrokerError(404, "not_found", "no grant g-1"))
    with pytest.raises(BrokerError):
        run(client, FakeTime())
