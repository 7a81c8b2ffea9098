"""The story `make demo` tells with real packets: alice gets in, mallory does not, the door closes by itself.

Each step prints what happens and checks it; the summary lists the checks and the time taken. The steps:
the port starts closed; alice runs `jit ssh web-01` and a command runs on the VM; the broker's rule names
alice's address only; mallory, from another address, times out meanwhile; alice's session ends and the rule
is gone; a `jit` killed mid-session leaves its grant behind, and the sweeper closes it at expiry.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lab.demo.session import JitRun
from lab.demo.stack import PacketLab, wait_until
from lab.netlab import NetlabError, can_run

VM = "web-01"
NSG = "web-01-nsg"
LEFT_BEHIND_DURATION = "8s"  # the grant the killed `jit` leaves; the sweeper runs every SWEEP_S seconds
SWEEP_S = 2.0
CLOSED_WAIT = 1.5  # seconds a dropped SYN is given before the port counts as closed
WAIT = 60.0  # generous bound on anything that should take a second or two


class Story:
    """Runs the steps against a started `PacketLab`, printing as it goes and keeping every check."""

    def __init__(self, lab: PacketLab, say: Callable[[str], None] = print) -> None:
        self.lab = lab
        self.say = say
        self.checks: list[tuple[bool, str]] = []
        self.session: JitRun | None = None
        self._steps = 0

    def run(self) -> bool:
        """Tell the whole story; True when every check held."""
        for step in (self.closed, self.alice_connects, self.session_ends, self.killed_cli):
            step()
        return all(ok for ok, _ in self.checks)

    def check(self, ok: bool, what: str) -> bool:
        """Record and print one check."""
        self.checks.append((ok, what))
        self.say(f"   {'✔' if ok else '✘ FAILED:'} {what}")
        return ok

    def step(self, title: str) -> None:
        """Print a step's heading."""
        self._steps += 1
        self.say("")
        self.say(f"{self._steps}. {title}")

    # ---- the steps ----

    def closed(self) -> None:
        """Nobody reaches the SSH port before a grant."""
        self.step(f"Before anyone asks, {VM}'s SSH port ({self.public_ip}:22) is closed to everyone")
        with ThreadPoolExecutor(2) as pool:
            seen = list(pool.map(self._probe, ("alice", "mallory")))
        self.check(seen == ["filtered", "filtered"], f"alice and mallory both get no answer: {seen}")

    def alice_connects(self) -> None:
        """`jit ssh` opens the port for alice's address only; mallory times out meanwhile."""
        self.step(f"alice ({self._address('alice')}) runs `jit ssh {VM}` and a command on the VM")
        command = 'echo "hello from $(hostname), logged in as $(whoami)"; read _; echo bye'
        self.say(f"   alice$ jit ssh {VM} -- [the lab's key and known_hosts] '{command}'")
        self.session = self.lab.jit_session(
            "alice", "ssh", VM, "--", *self.lab.ssh_options(), command, echo=self._echo
        )
        hello = self.session.wait_for(f"hello from {VM}", WAIT)
        self.check(hello is not None, f"the ssh session ran a command on {VM} as its admin user")

        self.step(f"The rule the broker wrote in {NSG}")
        rules = self.lab.broker_rules(NSG)
        for rule in rules:
            p = rule["properties"]
            self.say(
                f"   {rule['name']}: priority {p['priority']}, allow TCP from "
                f"{', '.join(p.get('sourceAddressPrefixes') or [p.get('sourceAddressPrefix')])} "
                f"to {p['destinationAddressPrefix']}:{p['destinationPortRange']}"
            )
            self.say(f"   description: {p.get('description', '')}")
        alice_only = [r["properties"].get("sourceAddressPrefixes") for r in rules]
        self.check(alice_only == [[f"{self._address('alice')}/32"]], "one rule, for alice's address only")

        self.step(f"Meanwhile mallory ({self._address('mallory')}) tries the same port")
        tried = self.lab.net.run("mallory", self.lab.net.ssh_argv(VM, "hostname", connect_timeout=3))
        self.say(f"   mallory$ ssh azureuser@{self.public_ip}  →  {_last_line(tried.stderr)}")
        self.check(tried.returncode == 255 and "timed out" in tried.stderr, "mallory's connection times out")

    def session_ends(self) -> None:
        """Ending the ssh session makes `jit` revoke; the rule is gone and new connections are dropped."""
        self.step("alice ends her session; jit revokes the grant")
        session = self.session
        assert session is not None, "alice_connects starts the session"
        session.send("exit")
        code = session.finish(WAIT)
        self.check(code == 0 and "Revoked grant" in session.output(), "jit exited 0 after revoking")
        self.check(self.lab.broker_rules(NSG) == [], f"{NSG} holds no broker rule any more")
        self.check(self._probe("alice") == "filtered", "a new connection from alice gets no answer")

    def killed_cli(self) -> None:
        """A `jit` killed outright leaves its grant; the sweeper closes it at expiry."""
        self.step(f"alice's jit is killed mid-session (SIGKILL) holding a grant for {LEFT_BEHIND_DURATION}")
        run = self.lab.jit_session(
            "alice",
            "ssh",
            VM,
            "--duration",
            LEFT_BEHIND_DURATION,
            "--",
            *self.lab.ssh_options(),
            'echo "session open on $(hostname)"; read _',
            echo=self._echo,
        )
        connected = run.wait_for(f"session open on {VM}", WAIT)
        run.kill()
        self.say("   (jit and its ssh killed: no revoke, no renewal)")
        left = self.lab.broker_rules(NSG)
        self.check(connected is not None and len(left) == 1, f"the rule is left behind: {_names(left)}")
        killed_at = time.monotonic()
        gone = wait_until(lambda: self.lab.broker_rules(NSG) == [], timeout=WAIT + 30)
        took = time.monotonic() - killed_at
        self.check(gone, f"the sweeper removed it {took:.1f}s after the kill (expiry + one sweep at most)")
        grant = _grant_id(run.output())
        status = self._status("alice", grant) if grant else None
        self.check(status == "expired", f"the grant {grant} is recorded as {status}")
        self.check(self._probe("alice") == "filtered", "a new connection from alice gets no answer")
        run.close()

    # ---- helpers ----

    @property
    def public_ip(self) -> str:
        """web-01's public address, what callers dial."""
        return self.lab.net.topology.vm(VM).public_ips[0]

    def _address(self, caller: str) -> str:
        return self.lab.net.topology.caller(caller).addresses[0]

    def _probe(self, caller: str) -> str:
        return self.lab.net.probe(caller, self.public_ip, 22, CLOSED_WAIT)

    def _echo(self, line: str) -> None:
        shown = line if len(line) <= 100 else line[:99] + "…"
        self.say(f"     │ {shown}")

    def _status(self, user: str, grant_id: str) -> str | None:
        listed = self.lab.jit(user, "ls", "--json")
        grants: list[dict[str, Any]] = json.loads(listed.stdout or "{}").get("grants", [])
        return next((str(g["status"]) for g in grants if g["id"] == grant_id), None)


def _grant_id(output: str) -> str | None:
    found = re.search(r"\(grant (\S+)\)", output)
    return found[1] if found else None


def _names(rules: list[dict[str, Any]]) -> str:
    return ", ".join(str(r["name"]) for r in rules) or "none"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing)"


def main() -> int:
    """`make demo`: build the lab, tell the story, print the summary; non-zero when something failed."""
    reason = can_run()
    if reason:
        print(f"make demo: {reason}.", file=sys.stderr)
        print(
            "The demo builds network namespaces, nftables rules and sshd servers, which needs root on Linux\n"
            "(with iproute2, nftables and openssh-server, which it installs with apt-get when missing).\n"
            "Run it as root: sudo make demo",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    print("jit-broker demo: just-in-time SSH with real packets")
    print("Building the lab: namespaces with sshd, NSGs in nftables, ARM, token issuer, Azurite, broker …")
    try:
        with PacketLab(sweep_interval=SWEEP_S) as lab:
            ready = time.monotonic() - started
            print(f"Lab ready in {ready:.1f}s: broker {lab.broker.url}, token issuer {lab.issuer.url}")
            story = Story(lab)
            ok = story.run()
    except NetlabError as exc:
        print(f"make demo: the network lab could not start: {exc}", file=sys.stderr)
        return 1
    print("")
    print("Summary")
    for passed, what in story.checks:
        print(f"  {'✔' if passed else '✘'} {what}")
    verdict = "every check held" if ok else "SOME CHECKS FAILED"
    print(f"  {verdict}; {time.monotonic() - started:.0f}s in all, lab torn down")
    return 0 if ok else 1
