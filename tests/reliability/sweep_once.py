"""One sweep, as the timer runs it, with the broker's clock set to a given moment: the process the expiry
crash cells kill mid-step. `python -m tests.reliability.sweep_once 2030-01-01T00:00:00+00:00`; the broker's
settings come from the environment, as in Azure.
"""

from __future__ import annotations

import sys
from datetime import datetime

from jitbroker.config import SweepSettings
from jitbroker.runtime import build_backend


def main(argv: list[str]) -> int:
    """Run one sweep at the moment `argv[0]` (ISO 8601 with an offset)."""
    at = datetime.fromisoformat(argv[0])
    backend, _ = build_backend(SweepSettings.from_env(), clock=lambda: at)
    backend.sweeper.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
