"""The broker's duration grammar, from the table of cases the CLI's tests read too
(tests/duration_cases.json)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jitbroker import durations
from jitbroker.durations import format_duration, parse_duration
from jitbroker.errors import InvalidRequest

CASES: dict[str, Any] = json.loads((Path(__file__).parents[1] / "duration_cases.json").read_text("utf-8"))
ACCEPTED = [(c["text"], c["seconds"]) for c in CASES["accepted"]]
REFUSED = [(c["text"], c["mentions"]) for c in CASES["refused"]]


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED, ids=[repr(t) for t, _ in ACCEPTED])
def test_every_accepted_form_gives_its_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(("text", "mentions"), REFUSED, ids=[repr(t) for t, _ in REFUSED])
def test_every_refused_form_is_an_invalid_request_that_says_why(text: str, mentions: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_duration(text, what="duration")
    assert mentions.lower() in refused.value.message.lower()
    if mentions == "not a duration":
        assert "1h30m" in refused.value.message  # the accepted forms, by example


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED, ids=[repr(t) for t, _ in ACCEPTED])
def test_the_iso_form_the_api_writes_reads_back_the_same(text: str, seconds: int) -> None:
    written = format_duration(timedelta(seconds=seconds))
    assert written.startswith("P")
    assert parse_duration(written) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("value", "mentions"), [(60, None), (0, "longer than zero"), (-60, "longer than zero")]
)
def test_json_numbers_are_whole_seconds(value: int, mentions: str | None) -> None:
    if mentions is None:
        assert parse_duration(value) == timedelta(seconds=value)
        return
    with pytest.raises(InvalidRequest, match=mentions):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False, 1.5, None, 10**30, 366 * 86400 + 1])
def test_other_json_values_are_refused(value: Any) -> None:
    with pytest.raises(InvalidRequest):
        parse_duration(value)


def test_the_cli_copy_of_the_grammar_is_the_brokers() -> None:
    """The CLI installs without the broker, so it carries a copy; the table above keeps the behaviour equal,
    and this keeps the patterns themselves from drifting."""
    cli = pytest.importorskip("jitcli.durations")
    for name in ("_ISO", "_COMPACT", "_SECONDS", "_DECIMAL"):
        mine, theirs = getattr(durations, name), getattr(cli, name)
        assert (mine.pattern, mine.flags) == (theirs.pattern, theirs.flags), name
    assert (durations.LONGEST_SECONDS, durations.FORMS) == (cli.LONGEST_SECONDS, cli.FORMS)
    assert durations._UNIT_SECONDS == cli._UNIT_SECONDS
    for _, seconds in ACCEPTED:
        assert cli.iso_duration(seconds) == format_duration(timedelta(seconds=seconds))


# -- over HTTP -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "mentions"), REFUSED, ids=[repr(t) for t, _ in REFUSED])
def test_the_api_answers_400_for_every_refused_form(as_user, text: str, mentions: str) -> None:
    response = as_user("alice").post("/api/v1/grants", json={"vm": "web-01", "duration": text})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert mentions.lower() in error["message"].lower()


@pytest.mark.usefixtures("clean_lab")
@pytest.mark.parametrize("text", ["1h30m", "PT1H30M", "5400"])
def test_the_api_grants_a_compact_combined_duration(as_user, text: str) -> None:
    alice = as_user("alice")
    asked = datetime.now(UTC)
    response = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": text})
    assert response.status_code in (201, 202), response.text
    grant = response.json()
    try:
        expires = datetime.fromisoformat(grant["expires_at"])
        assert abs((expires - asked).total_seconds() - 5400) < 60
    finally:
        alice.delete(f"/api/v1/grants/{grant['id']}")
