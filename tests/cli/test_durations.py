"""Durations and timestamps read the way the broker writes them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from jitcli.durations import human_duration, parse_seconds, parse_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("PT30M", 1800),
        ("PT1H2M3S", 3723),
        ("P1D", 86400),
        ("0.5s", 0.5),
    ],
)
def test_accepted_duration_forms(text: str, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "PT", "P", "5x", "m"])
def test_rejected_duration_forms_name_the_accepted_ones(text: str) -> None:
    with pytest.raises(ValueError, match="30m"):
        parse_seconds(text)


def test_broker_timestamps_are_timezone_aware() -> None:
    assert parse_time("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (12.4, "12s"), (270, "4m30s"), (3900, "1h05m")])
def test_human_durations_are_short(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
