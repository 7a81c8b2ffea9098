"""`python -m bench` (`make bench`): run every benchmark against a throw-away lab and print one table.

Takes a few minutes (seeding 10 000 grants and the realistic-latency runs dominate). Nothing leaves loopback.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

from bench import cli_help, grants, imports, sweep, time_to_connect
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
    result = time_to_connect.measure()
    if "skipped" in result:
        name = "Time to connect, jit ssh -> ssh banner"
        return Figure(name, f"skipped: {result['skipped']}", "report", None)
    return Figure(
        "Time to connect, jit ssh -> ssh banner (realistic latency, 5 s data plane)",
        f"median {result['median']} s ({result['runs']} runs); "
        f"fixed 45 s wait: {result['fixed_wait_median']} s",
        "sooner than the fixed 45 s wait",
        bool(result["ok"]),
    )


def main() -> int:
    """Run every benchmark, print the table; exit 1 when a goal was missed."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # seeding outruns the pool: harmless
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="jit-bench-"))
    figures: list[Figure] = []
    steps = [
        ("ARM requests per grant", grants.arm_requests_per_grant),
        ("broker overhead", lambda: [grants.broker_overhead()]),
        ("concurrent grants", lambda: grants.concurrent_grants(workdir)),
        ("sweep", lambda: sweep.sweep_figures(workdir)),
        ("cold import", lambda: [imports.cold_import()]),
        ("jit --help", lambda: [_cli_figure()]),
        ("time to connect (root: network lab)", lambda: [_time_to_connect_figure()]),
    ]
    for name, step in steps:
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        figures.extend(step())
    print(render(figures))
    print(f"\n({time.monotonic() - started:.0f} s; realistic latency: {grants.REALISTIC})")
    return 1 if any(f.met is False for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
