"""`make demo` and the lab it runs in: real packets from callers' namespaces through NSGs the broker opens.

`PacketLab` (stack.py) builds the network lab with every Azure stand-in and the broker, and runs `jit` on a
caller's machine; `JitRun` (session.py) follows a running `jit`; story.py tells the demo's story
(`python -m lab.demo`). The end-to-end tests and the time-to-connect benchmark use the same `PacketLab`.
"""

from lab.demo.session import JitRun, Line
from lab.demo.stack import DEMO_VMS, DelayedNsgFeed, PacketLab, jit_command, wait_until

__all__ = ["DEMO_VMS", "DelayedNsgFeed", "JitRun", "Line", "PacketLab", "jit_command", "wait_until"]
