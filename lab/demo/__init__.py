"""`make demo` and the lab it runs in: real packets from callers' namespaces through NSGs the broker opens.

`PacketLab` (stack.py) builds the network lab with every Azure stand-in and the broker, runs `jit` on a
caller's machine and calls the broker's API from there; `JitRun` (session.py) follows a running `jit`;
`SynCounter` (watch.py) counts the SYNs that reach a VM and those its NSGs let through; story.py tells the
demo's story (`python -m lab.demo`). The end-to-end tests and the time-to-connect benchmark use the same
`PacketLab`.
"""

from lab.demo.session import JitRun, Line
from lab.demo.stack import (
    DEMO_VMS,
    ApiAnswer,
    Approval,
    DelayedNsgFeed,
    PacketLab,
    jit_command,
    wait_until,
)
from lab.demo.watch import SynCounter, Syns

__all__ = [
    "DEMO_VMS",
    "ApiAnswer",
    "Approval",
    "DelayedNsgFeed",
    "JitRun",
    "Line",
    "PacketLab",
    "SynCounter",
    "Syns",
    "jit_command",
    "wait_until",
]
