"""Cold import of `function_app` in a fresh interpreter: what the Functions host pays on every cold start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.table import Figure

GOAL_S = 1.0
RUNS = 5
_PROBE = "import time; t = time.perf_counter(); import function_app; print(time.perf_counter() - t)"


def cold_import() -> Figure:
    """Best of RUNS fresh interpreters importing `function_app` (settings are not read at import)."""
    root = Path(__file__).resolve().parent.parent
    times = []
    for _ in range(RUNS):
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], cwd=root, capture_output=True, text=True, check=True
        )
        times.append(float(done.stdout.strip().splitlines()[-1]))
    best = min(times)
    return Figure(
        "Cold import of function_app",
        f"best {best:.2f} s of {RUNS} (worst {max(times):.2f} s)",
        f"≤ {GOAL_S:g} s",
        best <= GOAL_S,
    )
