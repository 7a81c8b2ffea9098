"""`python -m bench` (`make bench`): run every benchmark against a throw-away lab and print one table.

Takes a few minutes on 2 cores (the realistic-latency bursts, seeding 20 000 historical grants and the time
to connect dominate). Nothing leaves loopback. A benchmark that fails is a `MISSED` row naming its error; the
others still run. Below the table: one warm grant's round trips, and the machine's load (other work on the
same cores skews every time measured here).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import cli_help, grants, imports, orphans, overhead, sweep, time_to_connect
from bench.table import Figure, render


def _cli_figure() -> Figure:
    result = cli_help.measure()
    return Figure(
        "jit --help",
        f"median {result['median']} ms, p90 {result['p90']} ms ({result['runs']} runs)",
        f"≤ {result['goal']:g} ms",
        bool(result["ok"]),
    )


def _time_to_connect_figure() -> Figure:
    name = "Time to connect, jit ssh -> ssh banner (realistic latency, 5 s data plane)"
    result = time_to_connect.measure()
    if "skipped" in result:
        return Figure(name, f"skipped: {result['skipped']}", "report", None)
    return Figure(
        name,
        f"median {result['median']} s ({result['runs']} runs); "
        f"fixed 45 s wait: {result['fixed_wait_median']} s",
        "sooner than the fixed 45 s wait",
        bool(result["ok"]),
    )


def _failed(name: str, err: BaseException) -> Figure:
    """A benchmark that could not run is a missed goal, with the end of its error."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    reason = " / ".join(lines[:2] if len(lines) < 3 else [lines[0], lines[-2], lines[-1]])
    return Figure(f"{name} (failed)", f"{type(err).__name__}: {reason}"[:300], "runs", False)


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"


def _code() -> str:
    """The commit measured, and whether the broker's or the lab's code had uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "jitbroker", "lab", "function_app.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {head}" + (f" + {len(dirty)} uncommitted files in jitbroker/ and lab/" if dirty else "")


def main() -> int:
    """Run every benchmark, print the table; exit 1 when a goal was missed."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # seeding outruns the pool: harmless
    started = time.monotonic()
    load_before = _load()
    workdir = Path(tempfile.mkdtemp(prefix="jit-bench-"))
    figures: list[Figure] = []
    details: list[str] = []

    def where_time_goes() -> list[Figure]:
        found, lines = overhead.where_time_goes()
        details.extend(lines)
        return found

    steps: list[tuple[str, Callable[[], list[Figure]]]] = [
        ("concurrent grants", lambda: grants.concurrent_grants(workdir)),
        ("sweep", lambda: sweep.sweep_figures(workdir)),
        ("orphans", lambda: orphans.orphan_figures(workdir)),
        ("ARM requests per grant", grants.arm_requests_per_grant),
        ("broker overhead", lambda: [grants.broker_overhead()]),
        ("where a grant's time goes", where_time_goes),
        ("a grant at Table Storage's latency", overhead.at_table_latency),
        ("cold import", lambda: [imports.cold_import()]),
        ("jit --help", lambda: [_cli_figure()]),
        ("time to connect (root: network lab)", lambda: [_time_to_connect_figure()]),
    ]
    for name, step in steps:
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        step_started = time.monotonic()
        try:
            figures.extend(step())
        except Exception as err:
            traceback.print_exc(file=sys.stderr)
            figures.append(_failed(name, err))
        print(f"bench: {name}: {time.monotonic() - step_started:.0f} s", file=sys.stderr, flush=True)
    print(render(figures))
    if details:
        print("\n" + "\n".join(details))
    print(
        f"\n({time.monotonic() - started:.0f} s; realistic latency: {grants.REALISTIC}; "
        f"before: {load_before}; after: {_load()}; {_code()})"
    )
    return 1 if any(f.met is False for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
