"""Per-person limits on open grants: how many at once, and from how many distinct sources.

A refusal says when the person may ask again (the soonest end of what they hold), as `Retry-After` and in
words. Concurrent requests by one person may each pass before either is recorded: the limits hold to within
the requests in flight.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from datetime import datetime

from jitbroker.errors import TooManyGrants, TooManySources
from jitbroker.model import Opening


def require_within_limits(
    held: Iterable[Opening], source: str, now: datetime, *, max_open: int, max_sources: int
) -> None:
    """A new grant for `source` must keep its requester, who holds `held`, within both limits (a re-request
    that extends an open grant never gets here)."""
    mine = [o for o in held if o.expires_at > now]
    if len(mine) >= max_open:
        soonest = min(g.expires_at for g in mine)
        raise TooManyGrants(
            f"you already hold {len(mine)} open grants, the most one person may hold at once; revoke one "
            f"you no longer need or ask again when the next one ends, at {_hhmmss(soonest)}",
            retry_after=_seconds_until(soonest, now),
        )
    ends: dict[str, datetime] = {}  # each distinct source -> when the last open grant for it ends
    for g in mine:
        key = _source_key(g.source)
        ends[key] = max(ends.get(key, g.expires_at), g.expires_at)
    if _source_key(source) not in ends and len(ends) >= max_sources:
        soonest = min(ends.values())
        raise TooManySources(
            f"your open grants already let in {len(ends)} different sources ("
            + ", ".join(sorted(ends))
            + "), the most one person may have at once; revoke the grants of a source you no longer use "
            f"or ask again when one source's grants end, at {_hhmmss(soonest)}",
            retry_after=_seconds_until(soonest, now),
        )


def _source_key(source: str) -> str:
    try:
        return str(ipaddress.ip_network(source, strict=False))
    except ValueError:
        return source


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def _hhmmss(moment: datetime) -> str:
    return moment.strftime("%H:%M:%SZ")
