"""Durations as people write them: ISO 8601 (`PT30M`), short forms (`30m`, `2h`, `90s`), or seconds."""

from __future__ import annotations

import re
from datetime import timedelta

from jitbroker.errors import InvalidRequest

_ISO = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$",
    re.IGNORECASE | re.ASCII,
)
_SHORT = re.compile(r"^(?P<value>\d+)\s*(?P<unit>[smhd])$", re.IGNORECASE | re.ASCII)
_DIGITS = re.compile(r"^\d+$", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Far beyond any policy, small enough that datetime arithmetic can never overflow.
_LONGEST = timedelta(days=366)


def parse_duration(value: str | int, *, what: str = "duration") -> timedelta:
    """Read a positive duration in any of the accepted forms; `InvalidRequest` names the forms otherwise."""
    if isinstance(value, bool):
        raise InvalidRequest(_explain(what, value))
    try:
        result = timedelta(seconds=value) if isinstance(value, int) else _parse_text(value.strip(), what)
    except OverflowError:
        raise InvalidRequest(f"{what} {value!r} is longer than any policy allows") from None
    if result <= timedelta(0):
        raise InvalidRequest(f"{what} must be longer than zero, got {value!r}")
    if result > _LONGEST:
        raise InvalidRequest(f"{what} {value!r} is longer than any policy allows")
    return result


def format_duration(value: timedelta) -> str:
    """Write a duration as ISO 8601 (`PT1H30M`), the form error messages and the API use."""
    seconds = int(value.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    text = "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")
    return text if text != "P" else "PT0S"


def _parse_text(text: str, what: str) -> timedelta:
    if _DIGITS.match(text):
        return timedelta(seconds=int(text))
    short = _SHORT.match(text)
    if short:
        return timedelta(seconds=int(short["value"]) * _UNIT_SECONDS[short["unit"].lower()])
    iso = _ISO.match(text)
    if iso and text.upper() not in ("P", "PT"):
        parts = {k: int(v) for k, v in iso.groupdict().items() if v is not None}
        if parts:
            return timedelta(**parts)
    raise InvalidRequest(_explain(what, text))


def _explain(what: str, value: object) -> str:
    return (
        f"{what} {value!r} is not a duration: use ISO 8601 (PT30M, PT2H), a short form (30m, 2h, 90s) "
        "or a whole number of seconds"
    )
