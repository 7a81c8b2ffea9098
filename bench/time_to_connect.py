"""Time to connect: from `jit ssh web-01` starting to the VM's ssh banner, beside the old fixed 45 s wait.

Everything runs for real in the network lab (`lab.demo.PacketLab`): `jit` in alice's namespace gets a token,
asks the broker, which writes the NSG rule through the ARM emulator; nftables in the VM's namespace follows;
`jit` probes the port and starts the system's ssh, whose `-o LogLevel=DEBUG1` line "Remote protocol version"
marks the banner.

The emulated latency is set to realistic values:
- ARM: reads 80 ms, writes and deletes 300 ms, operation polls 80 ms, and a rule write's long-running
  operation 2 s. A recorded azure-cli conversation (docs: /work/shared/reference, "CLI-REC") saw a rule PUT's
  operation succeed at its first poll, 10 s later, so 2-10 s; the same figures as bench/grants.py.
- Data plane: the rule reaches the VM's packet filter `PROPAGATION_S` (5 s) after ARM reports it written.
  Microsoft documents no figure for this; it is an assumption, printed with the result.
- The broker polls ARM's operations every 1 s (`JIT_ARM_POLL_SECONDS`, the deployed default).

The fixed-wait figure is what the original script did (write the rule, sleep 45 s, then ssh). It is computed,
not slept: the same run's time to the grant, plus 45 s, plus the same run's ssh handshake to the banner.
"""

from __future__ import annotations

import statistics
from typing import Any

from lab.demo import PacketLab, wait_until
from lab.netlab import NetlabError, can_run

RUNS = 3
FIXED_WAIT_S = 45.0
PROPAGATION_S = 5.0
REALISTIC_ARM: dict[str, Any] = {
    "latency_ms": {"read": 80, "write": 300, "delete": 300, "poll": 80},
    "lro_ms": 2000,
}
NAME = "time to connect: jit ssh start to ssh banner"
BANNER = "Remote protocol version"  # ssh's debug line once the server's banner arrived
TIMEOUT_S = 120.0


def one_run(lab: PacketLab) -> dict[str, float]:
    """One `jit ssh web-01 true` as alice: seconds from start to the grant, to ssh starting, to the banner."""
    options = ["-o", "LogLevel=DEBUG1", *lab.ssh_options()]  # the first LogLevel given wins
    run = lab.jit_session("alice", "ssh", "web-01", "--", *options, "true")
    try:
        granted = run.wait_for("Opened port 22", TIMEOUT_S)
        ssh_started = run.wait_for("$ ssh ", TIMEOUT_S)
        banner = run.wait_for(BANNER, TIMEOUT_S)
        code = run.finish(TIMEOUT_S)
    finally:
        run.close()
    if granted is None or ssh_started is None or banner is None or code != 0:
        raise RuntimeError(f"jit ssh did not connect (exit {run.proc.returncode}):\n{run.output()[-3000:]}")
    return {
        "grant": granted.at - run.started,
        "banner": banner.at - run.started,
        "handshake": banner.at - ssh_started.at,
    }


def measure(runs: int = RUNS, propagation_s: float = PROPAGATION_S) -> dict[str, object]:
    """Run the flow `runs` times in a fresh packet lab; median seconds for jit and for a fixed 45 s wait."""
    reason = can_run()
    if reason:
        return {"name": NAME, "unit": "s", "ok": None, "skipped": reason}
    results = []
    with PacketLab(
        knobs=REALISTIC_ARM, propagation_s=propagation_s, broker_overrides={"JIT_ARM_POLL_SECONDS": "1"}
    ) as lab:
        web = lab.net.topology.vm("web-01").public_ips[0]
        for _ in range(runs):
            # Each run starts with the door shut: the last run's revoke has reached the packet filter.
            if not wait_until(lambda: lab.net.probe("alice", web, 22, 1.0) == "filtered", TIMEOUT_S):
                raise NetlabError("web-01's port stayed open after the previous run's revoke")
            results.append(one_run(lab))
    jit = [r["banner"] for r in results]
    fixed = [r["grant"] + FIXED_WAIT_S + r["handshake"] for r in results]
    median, fixed_median = statistics.median(jit), statistics.median(fixed)
    return {
        "name": NAME,
        "unit": "s",
        "runs": runs,
        "median": round(median, 2),
        "min": round(min(jit), 2),
        "max": round(max(jit), 2),
        "grant_median": round(statistics.median(r["grant"] for r in results), 2),
        "fixed_wait_median": round(fixed_median, 2),
        "fixed_wait_note": f"grant time + {FIXED_WAIT_S:.0f} s + ssh handshake, computed, not slept",
        "latency": {**REALISTIC_ARM, "data_plane_propagation_s": propagation_s, "broker_arm_poll_s": 1},
        "goal": "jit connects sooner than the fixed 45 s wait",
        "ok": median < fixed_median,
    }


def report(result: dict[str, object]) -> str:
    """The result as a few readable lines."""
    if "skipped" in result:
        return f"{result['name']}: skipped ({result['skipped']})"
    latency: Any = result["latency"]
    arm = latency["latency_ms"]
    return "\n".join(
        [
            f"Time to connect, `jit ssh web-01` start -> ssh banner ({result['runs']} runs, median):",
            f"  jit (probes, connects when the port answers)  {result['median']:>6.2f} s",
            f"    min {result['min']:.2f}, max {result['max']:.2f}; the grant answered after "
            f"{result['grant_median']} s",
            f"  fixed {FIXED_WAIT_S:.0f} s wait (the original script)    "
            f"{result['fixed_wait_median']:>6.2f} s",
            f"    {result['fixed_wait_note']}",
            f"Emulated: ARM reads {arm['read']} ms, writes {arm['write']} ms, deletes {arm['delete']} ms, "
            f"polls {arm['poll']} ms, rule operation {latency['lro_ms'] / 1000:.0f} s; broker polls every "
            f"{latency['broker_arm_poll_s']} s; data plane {latency['data_plane_propagation_s']:.0f} s "
            "after ARM (an assumption: Azure documents no figure)",
        ]
    )


if __name__ == "__main__":
    print(report(measure()))
