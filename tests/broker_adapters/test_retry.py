"""The one retry helper: backoff, Retry-After, and which errors it gives up on at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.core.rest._requests_basic import RestRequestsTransportResponse

from jitbroker.retry import backoff_delay, retry, retry_after_seconds


class Flaky:
    """Fails `failures` times with `error`, then returns "done"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def http_error(status: int, headers: dict[str, str]) -> HttpResponseError:
    """A real azure-core HttpResponseError carrying a real response with these headers."""
    import requests

    raw = requests.Response()
    raw.status_code = status
    raw.headers.update(headers)
    raw._content = b"{}"
    request = HttpRequest("PUT", "https://127.0.0.1/x")
    response = RestRequestsTransportResponse(request=request, internal_response=raw)  # type: ignore[no-untyped-call]
    return HttpResponseError(response=response)


def test_succeeds_after_transient_failures_and_sleeps_between_attempts():
    sleeps: list[float] = []
    fn = Flaky(2, RuntimeError("boom"))
    assert (
        retry(fn, attempts=3, base_delay=1, max_delay=10, sleep=sleeps.append, jitter=lambda: 0.0) == "done"
    )
    assert fn.calls == 3
    assert sleeps == [0.5, 1.0]


def test_gives_up_after_the_last_attempt_and_raises_the_last_error():
    sleeps: list[float] = []
    fn = Flaky(10, RuntimeError("still broken"))
    with pytest.raises(RuntimeError, match="still broken"):
        retry(fn, attempts=4, base_delay=1, max_delay=10, sleep=sleeps.append)
    assert fn.calls == 4
    assert len(sleeps) == 3


def test_errors_not_selected_by_retry_on_are_raised_at_once():
    fn = Flaky(5, KeyError("no"))
    with pytest.raises(KeyError):
        retry(fn, attempts=5, retry_on=ValueError, sleep=lambda _: None)
    assert fn.calls == 1


def test_retry_on_may_be_a_predicate():
    fn = Flaky(1, ValueError("retry me"))
    assert retry(fn, attempts=2, retry_on=lambda e: "retry" in str(e), sleep=lambda _: None) == "done"


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [(1, 0.0, 0.5), (1, 1.0, 1.0), (2, 0.0, 1.0), (3, 1.0, 4.0), (10, 1.0, 8.0), (10, 0.0, 4.0)],
)
def test_backoff_grows_exponentially_with_equal_jitter_and_a_ceiling(attempt, jitter, expected):
    assert backoff_delay(attempt, base_delay=1, max_delay=8, jitter=lambda: jitter) == expected


def test_a_longer_retry_after_from_the_server_wins_over_backoff():
    sleeps: list[float] = []
    fn = Flaky(1, http_error(429, {"Retry-After": "7"}))
    retry(fn, attempts=2, base_delay=0.1, max_delay=1, sleep=sleeps.append)
    assert sleeps == [7.0]


def test_retry_after_is_bounded_so_a_hostile_header_cannot_stall_a_request():
    sleeps: list[float] = []
    fn = Flaky(1, http_error(429, {"Retry-After": "86400"}))
    retry(fn, attempts=2, base_delay=0.1, max_delay=1, sleep=sleeps.append, max_retry_after=30)
    assert sleeps == [30.0]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_azure_core_error_headers(headers, expected):
    assert retry_after_seconds(http_error(429, headers)) == expected


def test_retry_after_as_an_http_date_counts_from_now():
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    err = http_error(503, {"Retry-After": format_datetime(now + timedelta(seconds=20), usegmt=True)})
    assert retry_after_seconds(err, now=lambda: now) == 20.0


def test_plain_errors_carry_no_retry_after():
    assert retry_after_seconds(RuntimeError("x")) is None
