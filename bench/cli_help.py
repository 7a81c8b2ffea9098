"""`jit --help` wall time: the CLI must start fast (goal: under 150 ms); heavy imports wait until needed."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_MS = 150.0
RUNS = 15


def _command() -> list[str]:
    """The console script next to this interpreter (as users run it), else `python -m jitcli.main`."""
    script = Path(sys.executable).parent / "jit"
    if script.exists():
        return [str(script)]
    found = shutil.which("jit")
    return [found] if found else [sys.executable, "-m", "jitcli.main"]


def measure(runs: int = RUNS) -> dict[str, object]:
    """Run `jit --help` `runs` times (after one warm-up) and report wall times in milliseconds."""
    command = [*_command(), "--help"]
    subprocess.run(command, capture_output=True, check=True)  # warm the OS file cache
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append((time.perf_counter() - started) * 1000)
    median = statistics.median(times)
    return {
        "name": "jit --help wall time",
        "unit": "ms",
        "runs": runs,
        "median": round(median, 1),
        "p90": round(sorted(times)[int(0.9 * (runs - 1))], 1),
        "min": round(min(times), 1),
        "goal": GOAL_MS,
        "ok": median < GOAL_MS,
    }


if __name__ == "__main__":
    result = measure()
    print(
        f"{result['name']}: median {result['median']} ms, p90 {result['p90']} ms, min {result['min']} ms "
        f"over {result['runs']} runs (goal < {result['goal']} ms: {'met' if result['ok'] else 'MISSED'})"
    )
