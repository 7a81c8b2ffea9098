"""Durations in the broker's grammar, from the table the broker's tests read too (tests/duration_cases.json);
timestamps read the way the broker writes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jitcli.durations import human_duration, iso_duration, parse_seconds, parse_time

from tests.cli.conftest import Jit
from tests.cli.fakebroker import GRANTS, FakeBroker

CASES: dict[str, Any] = json.loads((Path(__file__).parents[1] / "duration_cases.json").read_text("utf-8"))
ACCEPTED = [(c["text"], c["seconds"]) for c in CASES["accepted"]]
REFUSED = [(c["text"], c["mentions"]) for c in CASES["refused"]]


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED, ids=[repr(t) for t, _ in ACCEPTED])
def test_every_accepted_form_gives_its_seconds(text: str, seconds: int) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize(("text", "mentions"), REFUSED, ids=[repr(t) for t, _ in REFUSED])
def test_every_refused_form_says_why(text: str, mentions: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_seconds(text)
    assert mentions.lower() in str(refused.value).lower()
    if mentions == "not a duration":
        assert "1h30m" in str(refused.value)  # the accepted forms, by example


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED, ids=[repr(t) for t, _ in ACCEPTED])
def test_what_jit_sends_is_iso_8601_and_reads_back_the_same(text: str, seconds: int) -> None:
    sent = iso_duration(parse_seconds(text))
    assert sent.startswith("P")
    assert parse_seconds(sent) == seconds


def test_jitcli_does_not_import_the_broker() -> None:
    source = (Path(__file__).parents[2] / "cli" / "jitcli" / "durations.py").read_text("utf-8")
    assert "jitbroker" not in source.replace("jitbroker/durations.py", "")


def test_broker_timestamps_are_timezone_aware() -> None:
    assert parse_time("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (12.4, "12s"), (270, "4m30s"), (3900, "1h05m")])
def test_human_durations_are_short(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


# -- what `jit` does with them -------------------------------------------------------------------------------


def test_a_combined_duration_reaches_the_broker_as_iso_8601(jit: Jit, fake_broker: FakeBroker) -> None:
    fake = fake_broker
    fake.on("POST", GRANTS, fake.answer("active", 201))
    fake.on("POST", f"{fake.grant_path}/extend", fake.answer("active"))
    done = jit.run(
        "grant", "web-01", "--port", "22", "--duration", "1h30m", "--json", JIT_BROKER_URL=fake.url
    )
    assert done.returncode == 0, done.stderr
    (posted,) = fake.requests("POST", GRANTS)
    assert posted.body["duration"] == "PT1H30M"
    done = jit.run("extend", fake.grant_id, "--duration", "90m", "--json", JIT_BROKER_URL=fake.url)
    assert done.returncode == 0, done.stderr
    (extended,) = fake.requests("POST", f"{fake.grant_path}/extend")
    assert extended.body == {"duration": "PT1H30M"}


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (("grant", "web-01", "--port", "22", "--duration", "1.5h"), "whole numbers"),
        (("ssh", "web-01", "--duration", "soon"), "not a duration"),
        (("extend", "g-fake0001", "--duration", "0s"), "longer than zero"),
    ],
)
def test_a_refused_duration_stops_jit_before_it_asks_the_broker(
    jit: Jit, fake_broker: FakeBroker, args: tuple[str, ...], mentions: str
) -> None:
    done = jit.run(*args, "--json", JIT_BROKER_URL=fake_broker.url)
    assert done.returncode == 10, done.stderr  # as if the broker had answered 400
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "invalid_request"
    assert mentions in error["message"]
    assert fake_broker.seen == []


def test_a_refused_duration_setting_is_refused_the_same_way(jit: Jit, fake_broker: FakeBroker) -> None:
    done = jit.run("grant", "web-01", "--port", "22", JIT_BROKER_URL=fake_broker.url, JIT_DURATION="PT1.5H")
    assert done.returncode == 10
    assert "whole numbers" in done.stderr
    assert fake_broker.seen == []
