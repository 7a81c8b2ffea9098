"""Durations as people write them, in one grammar the `jit` CLI shares (cli/jitcli/durations.py).

Accepted, case-insensitive, surrounding blanks ignored, whole numbers only:

- ISO 8601: `PT30M`, `PT1H30M`, `P1DT2H`, `P1D` (days, hours, minutes, seconds; no years, months or weeks);
- compact: `30m`, `2h`, `45s`, `1d`, and combinations in descending order, each unit once: `1h30m`, `1d12h`;
- a whole number of seconds: `90`.

Decimals (`1.5h`, `PT0.5H`) are refused on purpose: a grant's length is whole seconds, and `1h30m` says the
same without rounding. The result must be longer than zero and at most 366 days. The two copies are kept
identical by one table of cases (tests/duration_cases.json) that the broker's and the CLI's tests both read.
"""

from __future__ import annotations

import re
from datetime import timedelta

from jitbroker.errors import InvalidRequest

_NUMBER = r"(?:\d+)"
_ISO = re.compile(
    rf"P(?:(?P<d>{_NUMBER})D)?(?:T(?:(?P<h>{_NUMBER})H)?(?:(?P<m>{_NUMBER})M)?(?:(?P<s>{_NUMBER})S)?)?",
    re.IGNORECASE | re.ASCII,
)
_COMPACT = re.compile(
    rf"(?:(?P<d>{_NUMBER})d)?(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m)?(?:(?P<s>{_NUMBER})s)?",
    re.IGNORECASE | re.ASCII,
)
_SECONDS = re.compile(_NUMBER, re.ASCII)
_DECIMAL = re.compile(r"\d[.,]\d|[.,]\d", re.ASCII)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
#: Far beyond any policy, small enough that datetime arithmetic can never overflow.
LONGEST_SECONDS = 366 * 86400
#: Digits a number may have before it is certainly too long (and before int() could be slow).
_MAX_DIGITS = 12
FORMS = "ISO 8601 (PT30M, PT1H30M), a short form (30m, 2h, 1h30m, 90s) or a whole number of seconds"


def parse_duration(value: str | int, *, what: str = "duration") -> timedelta:
    """Read a positive duration in any of the accepted forms; `InvalidRequest` names the forms otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"{what} {value!r} is not a duration: use {FORMS}")
    seconds = value if isinstance(value, int) else _seconds(value, what)
    if seconds <= 0:
        raise InvalidRequest(f"{what} must be longer than zero, got {value!r}")
    if seconds > LONGEST_SECONDS:
        raise InvalidRequest(f"{what} {value!r} is longer than any policy allows (at most 366 days)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Write a duration as ISO 8601 (`PT1H30M`), the form error messages and the API use."""
    seconds = int(value.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    text = "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")
    return text if text != "P" else "PT0S"


def _seconds(value: str, what: str) -> int:
    """The whole seconds `value` spells (possibly zero or too long: the caller checks the bounds)."""
    text = value.strip()
    if _SECONDS.fullmatch(text):
        return _number(text)
    iso = _ISO.fullmatch(text)
    # `P` alone, or a `T` with no hours, minutes or seconds after it, says nothing.
    if iso and any(iso.groups()) and ("T" not in text.upper() or any(iso.group("h", "m", "s"))):
        return _total(iso.groupdict())
    compact = _COMPACT.fullmatch(text)
    if compact and any(compact.groups()):
        return _total(compact.groupdict())
    if _DECIMAL.search(text):
        raise InvalidRequest(
            f"{what} {value!r} is not a duration: use whole numbers (1h30m rather than 1.5h, 90s rather than "
            f"1.5m), in {FORMS}"
        )
    raise InvalidRequest(f"{what} {value!r} is not a duration: use {FORMS}")


def _total(parts: dict[str, str | None]) -> int:
    return sum(_number(n) * _UNIT_SECONDS[unit] for unit, n in parts.items() if n is not None)


def _number(digits: str) -> int:
    """An int, or one certainly beyond the longest duration when it has too many digits to bother."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= _MAX_DIGITS else LONGEST_SECONDS + 1
