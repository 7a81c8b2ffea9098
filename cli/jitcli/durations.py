"""Durations and timestamps as the broker writes them (docs/api.md), read on the client side."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_ISO = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
_SHORT = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_seconds(text: str) -> float:
    """Seconds in `30m`, `1h30m`, `90s`, `PT30M` or `45`; ValueError names the accepted forms otherwise."""
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    iso = _ISO.match(value)
    if iso and value.upper() not in ("P", "PT") and any(iso.groupdict().values()):
        parts = iso.groupdict()
        return sum(float(parts[k] or 0) * _UNIT[k] for k in ("d", "h", "m", "s"))
    if value and _SHORT.sub("", value).strip() == "":
        return sum(float(n) * _UNIT[u.lower()] for n, u in _SHORT.findall(value))
    raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 2h, 90s, PT30M or seconds)")


def parse_time(text: str) -> datetime:
    """A timezone-aware datetime from the broker's ISO 8601 `...Z` timestamps."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """`1h05m`, `4m30s`, `12s`: short enough for a progress line."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
