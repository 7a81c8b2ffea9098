"""The story `make demo` tells with real packets: alice gets in, mallory does not, the door closes by itself;
then a production VM opens only when a second person says yes.

Each step prints what happens and checks it; the summary lists the checks and the time taken. The steps:
the port starts closed; alice runs `jit ssh web-01` and a command runs on the VM; the broker's rule names
alice's address only; mallory, from another address, times out meanwhile; alice's session ends and the rule
is gone; a `jit` killed mid-session leaves its grant behind, and the sweeper closes it at expiry. Then bob
asks for prod-01 (tagged `jit-approval: required`): his request waits with no rule, and none of his SYNs
get past prod-01's NSG; carol approves; the door opens for bob's address for the requested duration counted
from her approval, and his ssh runs a command; the webhook receiver shows what it was told; bob's session
ends and the rule goes.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from jitbroker.webhooks import summary
from lab.demo.session import JitRun
from lab.demo.stack import PacketLab, wait_until
from lab.demo.watch import SynCounter
from lab.netlab import NetlabError, can_run

VM = "web-01"
NSG = "web-01-nsg"
LEFT_BEHIND_DURATION = "8s"  # the grant the killed `jit` leaves; the sweeper runs every SWEEP_S seconds
SWEEP_S = 2.0
CLOSED_WAIT = 1.5  # seconds a dropped SYN is given before the port counts as closed
WAIT = 60.0  # generous bound on anything that should take a second or two

PROD = "prod-01"  # tagged `jit-approval: required`; carol holds JIT.Approver
PROD_NSG = "prod-01-nsg"
PROD_DURATION = timedelta(minutes=30)
PROD_DURATION_TEXT = "30m"
PROD_JUSTIFICATION = "roll out hotfix 4.2.1"
APPROVAL_REASON = "change CHG-1042 is approved for tonight"
NEEDS_APPROVAL = re.compile(r"approv", re.IGNORECASE)  # how `jit ssh` says it waits for an approver
MESSAGES = ("requested", "approved", "granted")  # what the webhook receiver must have got by then
MESSAGE_WAIT = 15.0


class Story:
    """Runs the steps against a started `PacketLab`, printing as it goes and keeping every check."""

    def __init__(self, lab: PacketLab, say: Callable[[str], None] = print) -> None:
        self.lab = lab
        self.say = say
        self.checks: list[tuple[bool, str]] = []
        self.session: JitRun | None = None
        self.bob: JitRun | None = None
        self.request: dict[str, Any] = {}
        self.approved: dict[str, Any] = {}
        self.syns: SynCounter | None = None
        self.approval_s = 0.0  # how long the approval scene took
        self._steps = 0

    def run(self) -> bool:
        """Tell the whole story; True when every check held."""
        for step in (self.closed, self.alice_connects, self.session_ends, self.killed_cli):
            step()
        approval_started = time.monotonic()
        self.syns = SynCounter(self.lab.net, PROD, 22, ("bob",)).start()
        try:
            for step in (self.bob_asks, self.bob_waits, self.carol_approves, self.bob_connects):
                step()
            self.messages()
            self.bob_exits()
        finally:
            self.syns.stop()
            if self.bob is not None:
                self.bob.close()
            self.approval_s = time.monotonic() - approval_started
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

    # ---- a VM that needs approval ----

    def bob_asks(self) -> None:
        """bob asks for prod-01; the broker records the request and opens nothing."""
        self.step(f"bob ({self._address('bob')}) asks for {PROD}, which opens only when an approver says yes")
        command = 'echo "hello from $(hostname), logged in as $(whoami)"; read _; echo bye'
        self.say(
            f"   bob$ jit ssh {PROD} --duration {PROD_DURATION_TEXT} --reason '{PROD_JUSTIFICATION}' "
            f"-- [the lab's key and known_hosts] '{command}'"
        )
        self.bob = self._bob_ssh(command)
        said = self.bob.wait_for(NEEDS_APPROVAL, WAIT)
        self.bob.settle()
        self.check(said is not None, "bob's jit says the request needs approval, and waits")
        self.request = self._awaiting_for_carol() or {}
        approval = self.request.get("approval") or {}
        self.say(
            f"   request {self.request.get('id')}: approver role {approval.get('approver_role')}, "
            f"waits until {approval.get('wait_until')}"
        )

    def bob_waits(self) -> None:
        """While bob waits: no rule, and none of his SYNs get past prod-01's NSG."""
        self.step(f"While bob waits, nothing from his address gets through to {PROD}:22")
        grant_id = self.request.get("id")
        waiting = [g["id"] for g in self._carol_awaiting()]
        self.say(f"   carol's queue (GET /api/v1/grants?awaiting=me): {', '.join(waiting) or 'empty'}")
        self.check(grant_id in waiting, f"bob's request {grant_id} waits for carol")
        rules = self.lab.broker_rules(PROD_NSG)
        self.check(rules == [], f"{PROD_NSG} holds no broker rule: {_names(rules)}")
        seen = self.lab.net.probe("bob", self._ip(PROD), 22, CLOSED_WAIT)
        assert self.syns is not None
        syns = self.syns.counts()["bob"]
        self.say(f"   bob's probe of {self._ip(PROD)}:22 → {seen}")
        self.check(
            seen == "filtered" and syns.arrived > 0 and syns.passed == 0,
            f"{syns.arrived} SYNs from bob reached {PROD}, {syns.passed} got past {PROD_NSG}",
        )
        status = self._bob_grant().get("status")
        self.check(status == "awaiting_approval", f"the request is still {status}")

    def carol_approves(self) -> None:
        """carol approves; the door's clock starts now."""
        grant_id = str(self.request.get("id"))
        self.step(f"carol ({self._address('carol')}) approves bob's request")
        approval = self.lab.approve("carol", grant_id, APPROVAL_REASON)
        self.say(f"   carol$ {approval.command}")
        for line in approval.said.splitlines():
            self._echo(line)
        self.check(approval.ok, "the broker took carol's approval")
        wait_until(lambda: self._bob_grant().get("status") != "pending", timeout=WAIT)
        self.approved = self._bob_grant()
        decided, expires = _when(self.approved, "approval", "decided_at"), _when(self.approved, "expires_at")
        asked = _when(self.request, "created_at")
        by = (self.approved.get("approval") or {}).get("decided_by_name")
        self.say(f"   asked {_clock(asked)}, approved {_clock(decided)} by {by}; until {_clock(expires)}")
        counted_from_approval = (
            decided is not None
            and expires is not None
            and asked is not None
            and expires == decided + PROD_DURATION
            and decided > asked
        )
        self.check(
            self.approved.get("status") == "active" and counted_from_approval,
            f"active until approval + {PROD_DURATION_TEXT}: the clock started at carol's yes, not bob's ask",
        )

    def bob_connects(self) -> None:
        """bob's ssh connects and runs a command; the rule names his address only."""
        self.step(f"bob's ssh connects to {PROD}")
        assert self.bob is not None, "bob_asks starts the session"
        hello = self.bob.wait_for(f"hello from {PROD}", WAIT)
        self.check(hello is not None, f"bob's ssh session ran a command on {PROD}")
        rules = self.lab.broker_rules(PROD_NSG)
        for rule in rules:
            p = rule["properties"]
            self.say(
                f"   {rule['name']}: allow TCP from {', '.join(p.get('sourceAddressPrefixes') or [])} "
                f"to {p['destinationAddressPrefix']}:{p['destinationPortRange']}"
            )
        expiry = _rule_expiry(rules[0]["name"]) if len(rules) == 1 else None
        self.check(
            [r["properties"].get("sourceAddressPrefixes") for r in rules] == [[f"{self._address('bob')}/32"]]
            and expiry is not None
            and expiry == _when(self.approved, "expires_at"),
            f"one rule in {PROD_NSG}, for bob's address only, expiring at approval + {PROD_DURATION_TEXT}",
        )
        assert self.syns is not None
        self.check(self.syns.counts()["bob"].passed > 0, f"bob's SYNs now get past {PROD_NSG}")

    def messages(self) -> None:
        """What the webhook receiver got, through the events queue and the delivery loop."""
        receiver = self.lab.receiver
        assert receiver is not None, "the demo's lab runs with webhooks"
        self.step("The webhook receiver's messages (signed, through the events queue)")
        grant_id = self.request.get("id")
        wanted = set(MESSAGES)

        def kinds() -> set[str]:
            return {
                str(d.json.get("event"))
                for d in list(receiver.received)
                if (d.json.get("grant") or {}).get("id") == grant_id
            }

        wait_until(lambda: wanted <= kinds(), timeout=MESSAGE_WAIT)
        got = [d for d in list(receiver.received) if (d.json.get("grant") or {}).get("id") == grant_id]
        for delivery in got:
            mark = {True: "signature ok", False: "BAD SIGNATURE", None: "unsigned"}[delivery.verified]
            self.say(f"   {delivery.json.get('event'):<10} ({mark}) {summary(delivery.json)}")
        self.check(
            wanted <= kinds() and all(d.verified for d in got),
            f"the receiver got {', '.join(MESSAGES)} for bob's grant, each signed",
        )

    def bob_exits(self) -> None:
        """bob ends his session; jit revokes and the rule goes."""
        self.step("bob ends his session; jit revokes the grant")
        run = self.bob
        assert run is not None, "bob_connects starts the session"
        run.send("exit")
        code = run.finish(WAIT)
        self.check(code == 0 and "Revoked grant" in run.output(), "bob's jit exited 0 after revoking")
        self.check(self.lab.broker_rules(PROD_NSG) == [], f"{PROD_NSG} holds no broker rule any more")
        assert self.syns is not None
        before = self.syns.counts()["bob"].passed
        seen = self.lab.net.probe("bob", self._ip(PROD), 22, CLOSED_WAIT)
        after = self.syns.counts()["bob"].passed
        self.check(seen == "filtered" and after == before, "a new connection from bob gets no answer")

    def _bob_ssh(self, command: str) -> JitRun:
        return self.lab.jit_session(
            "bob",
            "ssh",
            PROD,
            "--duration",
            PROD_DURATION_TEXT,
            "--reason",
            PROD_JUSTIFICATION,
            "--",
            *self.lab.ssh_options(),
            command,
            echo=self._echo,
        )

    def _carol_awaiting(self) -> list[dict[str, Any]]:
        answer = self.lab.api("carol", "GET", "/api/v1/grants?awaiting=me")
        return list(answer.body.get("grants", [])) if answer.status == 200 else []

    def _awaiting_for_carol(self) -> dict[str, Any] | None:
        """bob's request for prod-01 as carol's queue shows it (it may take a poll to appear)."""
        found: list[dict[str, Any]] = []

        def listed() -> bool:
            found[:] = [g for g in self._carol_awaiting() if g.get("vm") == PROD]
            return bool(found)

        wait_until(listed, timeout=WAIT)
        return found[0] if found else None

    def _bob_grant(self) -> dict[str, Any]:
        grant_id = self.request.get("id")
        return self.lab.grant("bob", str(grant_id)) if grant_id else {}

    # ---- helpers ----

    @property
    def public_ip(self) -> str:
        """web-01's public address, what callers dial."""
        return self._ip(VM)

    def _ip(self, vm: str) -> str:
        return self.lab.net.topology.vm(vm).public_ips[0]

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


def _when(grant: dict[str, Any], *keys: str) -> datetime | None:
    """A time field of a grant (nested keys), parsed; None when absent."""
    value: Any = grant
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None


def _clock(moment: datetime | None) -> str:
    return moment.strftime("%H:%M:%SZ") if moment else "?"


def _rule_expiry(name: str) -> datetime | None:
    """The expiry a broker rule's name carries (`…-x20261130T024337Z`)."""
    found = re.search(r"-x(\d{8}T\d{6}Z)$", name)
    return datetime.strptime(found[1], "%Y%m%dT%H%M%S%z") if found else None


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
        with PacketLab(sweep_interval=SWEEP_S, webhooks=True) as lab:
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
    print(
        f"  {verdict}; {time.monotonic() - started:.0f}s in all "
        f"({story.approval_s:.0f}s of them for prod-01's approval), lab torn down"
    )
    print("")
    print("The web page: `make lab` keeps a lab running and prints its page, http://127.0.0.1:<port>/;")
    print("open it in a browser and sign in as alice (the lab's sign-in lists every scenario user).")
    return 0 if ok else 1
