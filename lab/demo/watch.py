"""Counting real SYNs inside a lab VM: how many arrived at its NIC, and how many its NSGs let through.

    with SynCounter(lab.net, "prod-01", 22, {"bob": "203.0.113.11"}) as syns:
        lab.net.probe("bob", "198.51.100.19", 22)   # "filtered"
        syns.counts()["bob"]                       # Syns(arrived=2, passed=0)

The network lab renders a VM's NSGs into the table `inet jitlab` on the input hook of the VM's namespace at
the `filter` priority (lab/netlab/render.py). This adds a table of its own (`inet jitwatch`) with two base
chains on the same hook that only count: one at a priority before the NSGs (every SYN that reached the VM),
one after them (every SYN the NSGs let through to the socket — a dropped packet never reaches a later chain).
The network lab replaces only its own table when it re-renders, so the counters live through NSG changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from lab.netlab import NetLab
from lab.netlab.netns import in_netns, run

TABLE = "jitwatch"
BEFORE_NSGS = -10  # the NSGs' chain runs at priority `filter` (0)
AFTER_NSGS = 10


@dataclass(frozen=True)
class Syns:
    """SYNs from one caller to the watched port: `arrived` at the VM, `passed` its NSGs."""

    arrived: int
    passed: int


class SynCounter:
    """Counts TCP SYNs (no ACK) from each caller's IPv4 address to `port` on `vm`, before and after the NSGs.

    `callers` maps a name to an address (default: the network lab's callers of those names, their IPv4
    address). A context manager; `stop()` removes the table.
    """

    def __init__(
        self, net: NetLab, vm: str, port: int, callers: Mapping[str, str] | tuple[str, ...] = ()
    ) -> None:
        self.net = net
        self.vm = net.topology.vm(vm)
        self.port = port
        if isinstance(callers, Mapping):
            self.callers = dict(callers)
        else:
            self.callers = {name: net.topology.caller(name).addresses[0] for name in callers}
        self._started = False

    def start(self) -> SynCounter:
        """Install the counters (replacing any left by an earlier counter on this VM)."""
        lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
        for chain, priority, what in (("before", BEFORE_NSGS, "arrived"), ("after", AFTER_NSGS, "passed")):
            lines.append(f"\tchain {chain} {{")
            lines.append(f"\t\ttype filter hook input priority {priority}; policy accept;")
            for name, address in self.callers.items():
                lines.append(
                    f"\t\tip saddr {address} tcp dport {self.port} tcp flags & (syn | ack) == syn "
                    f'counter comment "{what} {name}"'
                )
            lines.append("\t}")
        lines.append("}")
        run(in_netns(self.vm.namespace, ["nft", "-f", "-"]), input_text="\n".join(lines) + "\n")
        self._started = True
        return self

    def counts(self) -> dict[str, Syns]:
        """Each caller's SYNs so far."""
        listed = run(in_netns(self.vm.namespace, ["nft", "-j", "list", "table", "inet", TABLE])).stdout
        seen: dict[str, dict[str, int]] = {name: {"arrived": 0, "passed": 0} for name in self.callers}
        for item in json.loads(listed).get("nftables", []):
            rule: dict[str, Any] | None = item.get("rule")
            if not rule or " " not in str(rule.get("comment", "")):
                continue
            what, name = str(rule["comment"]).split(" ", 1)
            packets = sum(int(e["counter"]["packets"]) for e in rule.get("expr", []) if "counter" in e)
            if name in seen and what in seen[name]:
                seen[name][what] += packets
        return {name: Syns(**numbers) for name, numbers in seen.items()}

    def stop(self) -> None:
        """Remove the counters (idempotent; nothing to do once the lab is gone)."""
        if self._started:
            self._started = False
            run(in_netns(self.vm.namespace, ["nft", "delete", "table", "inet", TABLE]), check=False)

    def __enter__(self) -> SynCounter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
