"""The whole lab with real packets: the network lab, every Azure stand-in and the broker, wired for callers.

    with PacketLab() as lab:
        lab.jit("alice", "grant", "web-01", "--port", "22", "--json")        # inside alice's namespace
        run = lab.jit_session("alice", "ssh", "web-01", "--", *lab.ssh_options(), "hostname")
        lab.api("bob", "POST", "/api/v1/grants", {"vm": "prod-01"})         # 202 awaiting_approval
        lab.approve("carol", grant_id, "change CHG-42")                      # `jit approve` on her machine

What `make demo`, the end-to-end tests and the time-to-connect benchmark share. Callers live in network
namespaces (203.0.113.x), so everything they talk to binds `HOST_V4` (198.51.100.1), the root namespace's
address on the lab's router: the broker (`JIT_CLIENT_ADDRESS_FROM=peer` sees each caller's real address) and
the token issuer (whose certificate therefore names HOST_V4 too). The ARM emulator and Azurite stay on
loopback: only the broker talks to them.

Callers resolve the VMs' DNS names (`web-01.westeurope.cloudapp.azure.com`, the host the broker says to
connect to) through `/etc/netns/<namespace>/hosts`, which `ip netns exec` mounts over /etc/hosts; their
resolv.conf names no server, so no lookup leaves the lab. Every NSG change the emulator commits is rendered
into nftables, optionally `propagation_s` later, standing in for Azure's data-plane delay.

`api(user, …)` calls the broker's HTTP API as a user from their machine (a socket in their namespace, so the
broker sees their address) with a token the lab's issuer signs for them. With `webhooks=True` a local webhook
receiver (`.receiver`, lab/webhooks.py) gets every event the broker publishes, through Azurite's queue and
the lab's delivery loop.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import os
import queue
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from lab.azurite import Azurite
from lab.broker import BrokerProcess
from lab.demo.session import JitRun
from lab.issuer import TokenIssuer
from lab.netlab import HOST_V4, NetLab, NetlabError, can_run
from lab.netlab.netns import socket_in
from lab.scenario import Scenario, load_scenario
from lab.settings import lab_broker_settings
from lab.tls import LabCA
from lab.webhooks import WebhookReceiver

DEMO_VMS = ("web-01", "db-01", "win-01", "prod-01")
NETNS_ETC = Path("/etc/netns")
NsgCallback = Callable[[str, dict[str, Any]], None]
DELIVER_INTERVAL_S = 0.5  # how often the lab's delivery loop reads the events queue when webhooks are on
OPEN_OR_WAITING = ("awaiting_approval", "pending", "active")


@dataclass(frozen=True)
class ApiAnswer:
    """An answer of the broker's API: status, headers (lower-case names) and the JSON body (None if none)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def error(self) -> str:
        """The broker's error code and message, or the status line's number."""
        err = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(err, dict):
            return f"{self.status} {err.get('code')}: {err.get('message')}"
        return f"HTTP {self.status}"


@dataclass(frozen=True)
class Approval:
    """How an approver said yes: what they ran, and what came back."""

    command: str  # `jit approve …` as typed
    ok: bool
    said: str  # what `jit approve` printed


class _CallerHTTPS(http.client.HTTPSConnection):
    """HTTPS whose socket lives in a caller's network namespace: their address, their routes."""

    def __init__(
        self, namespace: str, host: str, port: int, *, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._namespace = namespace
        self._tls = context

    def connect(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket_in(self._namespace, family)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class DelayedNsgFeed:
    """Hands the emulator's NSG changes on `delay` seconds after they happened, in order (data-plane lag)."""

    def __init__(self, emulator: Any, delay: float) -> None:
        self._emulator = emulator
        self._delay = delay
        self._callbacks: list[NsgCallback] = []
        self._queue: queue.Queue[tuple[float, str, dict[str, Any]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._deliver, name="nsg-propagation", daemon=True)
        self._worker.start()

    def subscribe(self, callback: NsgCallback) -> None:
        """What `NetLab.attach` calls: from now on `callback` gets each change, late."""
        if not self._callbacks:
            self._emulator.subscribe(self._enqueue)
        self._callbacks.append(callback)

    def stop(self) -> None:
        """End the delivery thread (changes still queued are dropped)."""
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _enqueue(self, nsg_id: str, nsg_json: dict[str, Any]) -> None:
        self._queue.put((time.monotonic() + self._delay, nsg_id, copy.deepcopy(nsg_json)))

    def _deliver(self) -> None:
        while (item := self._queue.get()) is not None:
            due, nsg_id, nsg_json = item
            time.sleep(max(0.0, due - time.monotonic()))
            for callback in self._callbacks:
                callback(nsg_id, nsg_json)


class PacketLab:
    """Builds the network lab, CA, token issuer, ARM emulator, Azurite and broker; tears all down on `stop()`.

    `knobs` are the ARM emulator's (latency, LRO time) from construction on, surviving `reset()`;
    `sweep_interval` is the lab sweeper's period in seconds; `broker_overrides` replace broker settings;
    `webhooks` turns notifications on: `.receiver` records what the delivery loop posts.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        vms: Iterable[str] = DEMO_VMS,
        sweep_interval: float = 2.0,
        knobs: Mapping[str, Any] | None = None,
        propagation_s: float = 0.0,
        broker_overrides: Mapping[str, str] | None = None,
        webhooks: bool = False,
    ) -> None:
        self.scenario = scenario or load_scenario()
        self.vms = tuple(vms)
        self.sweep_interval = sweep_interval
        self.knobs = dict(knobs or {})
        self.propagation_s = propagation_s
        self.broker_overrides = dict(broker_overrides or {})
        self.webhooks = webhooks
        self.receiver: WebhookReceiver | None = None
        self.folder = Path()
        self._parts = contextlib.ExitStack()

    def start(self) -> PacketLab:
        """Build everything (NetlabError when this machine cannot: not root, or another lab runs)."""
        reason = can_run()
        if reason:
            raise NetlabError(reason)
        from lab.arm import ArmEmulator
        from lab.arm.admin import ArmAdmin

        parts = self._parts
        try:
            self.folder = Path(tempfile.mkdtemp(prefix="jitlab-packets-"))
            parts.callback(shutil.rmtree, self.folder, ignore_errors=True)
            self.net = parts.enter_context(NetLab(self.scenario, vms=self.vms))
            self.ca = LabCA(self.folder / "ca", extra_addresses=(HOST_V4,))
            self.issuer = parts.enter_context(TokenIssuer(self.scenario, self.ca, host=HOST_V4))
            self.arm = parts.enter_context(
                ArmEmulator(
                    self.scenario, self.ca, token_validator=self.issuer.arm_token_validator, knobs=self.knobs
                )
            )
            self.azurite = parts.enter_context(Azurite(self.folder / "azurite"))
            parts.callback(self._remove_caller_files)
            self._write_caller_files()
            self.known_hosts = self.folder / "known_hosts"
            self._write_known_hosts()
            if self.propagation_s > 0:
                feed = DelayedNsgFeed(self.arm, self.propagation_s)
                parts.callback(feed.stop)
                self.net.attach(feed, self.arm.service.all_nsgs)
            else:
                self.net.follow(self.arm)
            overrides = dict(self.broker_overrides)
            deliver_interval = None
            if self.webhooks:
                self.receiver = parts.enter_context(WebhookReceiver(secrets.token_hex(16)))
                overrides = {**self.receiver.settings(), **overrides}
                deliver_interval = DELIVER_INTERVAL_S
            self.settings = lab_broker_settings(
                self.scenario,
                ca=self.ca,
                issuer=self.issuer,
                arm_url=self.arm.url,
                azurite=self.azurite,
                overrides=overrides,
            )
            self.broker = parts.enter_context(
                BrokerProcess(
                    self.settings,
                    host=HOST_V4,
                    sweep_interval=self.sweep_interval,
                    log_dir=self.folder / "broker",
                    tls=(self.ca.certfile, self.ca.keyfile),
                    deliver_interval=deliver_interval,
                )
            )
            self.admin = ArmAdmin(self.arm.url, verify=str(self.ca.ca_bundle))
        except BaseException:
            parts.close()
            raise
        return self

    def stop(self) -> None:
        """Stop every part this lab started, in reverse order, and remove its folder."""
        self._parts.close()

    def __enter__(self) -> PacketLab:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- the callers' machines ----

    def vm_names(self) -> dict[str, str]:
        """Each lab VM's public DNS name -> its public IP (as Azure's DNS would answer)."""
        built = {vm.name.lower() for vm in self.net.topology.vms}
        names = {}
        for place in self.scenario.azure.vms():
            if place.vm.name.lower() not in built:
                continue
            for nic in place.vm.nics:
                for ipc in nic.ip_configs:
                    pip = ipc.public_ip
                    if pip is not None and pip.dns_label and pip.address:
                        names[f"{pip.dns_label}.{place.location}.cloudapp.azure.com"] = pip.address
        return names

    def _write_known_hosts(self) -> None:
        """The network lab's known_hosts, each VM's line also naming its DNS names (what `jit ssh` dials)."""
        names_of: dict[str, list[str]] = {}
        for name, address in self.vm_names().items():
            names_of.setdefault(address, []).append(name)
        lines = []
        for line in self.net.keys.known_hosts.read_text().splitlines():
            hosts, _, key = line.partition(" ")
            listed = hosts.split(",")
            extra = [n for address in listed for n in names_of.get(address, [])]
            lines.append(f"{','.join([*listed, *extra])} {key}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _caller_dirs(self) -> list[Path]:
        return [NETNS_ETC / caller.namespace for caller in self.net.topology.callers]

    def _write_caller_files(self) -> None:
        hosts = "127.0.0.1 localhost\n::1 localhost\n"
        hosts += "".join(f"{address} {name}\n" for name, address in self.vm_names().items())
        for folder in self._caller_dirs():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(hosts)
            (folder / "resolv.conf").write_text("# the network lab: no DNS server, names come from hosts\n")

    def _remove_caller_files(self) -> None:
        for folder in self._caller_dirs():
            shutil.rmtree(folder, ignore_errors=True)

    # ---- running `jit` as a caller ----

    def cli_env(self, user: str) -> dict[str, str]:
        """All of `jit`'s environment on a user's machine: the lab's broker, issuer and CA, nothing else."""
        home = self.folder / "home" / user
        home.mkdir(parents=True, exist_ok=True)
        bundle = str(self.ca.ca_bundle)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "JIT_CONFIG": str(home / "jit.toml"),
            "JIT_BROKER_URL": self.broker.url,
            "JIT_AUTH": "lab",
            "JIT_LAB_ISSUER": self.issuer.url,
            "JIT_LAB_USER": user,
            "JIT_TENANT_ID": self.scenario.tenant.tenant_id,
            "JIT_SCOPE": self.scenario.tenant.app_id_uri,
            "REQUESTS_CA_BUNDLE": bundle,
            "SSL_CERT_FILE": bundle,
        }

    def jit_argv(self, user: str, *args: str) -> list[str]:
        """The argv that runs `jit args…` on `user`'s machine (their namespace, their address)."""
        env = [f"{name}={value}" for name, value in self.cli_env(user).items()]
        return self.net.caller_argv(user, ["env", "-i", *env, *jit_command(), *args])

    def jit(self, user: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `jit args…` as `user` to the end; stdout and stderr captured apart (`--json` on stdout)."""
        return subprocess.run(  # noqa: S603 - argv, no shell
            self.jit_argv(user, *args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def jit_session(self, user: str, *args: str, echo: Callable[[str], None] | None = None) -> JitRun:
        """Start `jit args…` as `user` (e.g. `jit ssh`), reading its output as it comes."""
        return JitRun(self.jit_argv(user, *args), echo=echo)

    # ---- the broker's API, as a user on their machine ----

    def api(self, user: str, method: str, path: str, body: Any = None, *, timeout: float = 60.0) -> ApiAnswer:
        """Call the broker's API as `user` from their namespace (the broker sees their address)."""
        url = urlsplit(self.broker.url)
        assert url.hostname is not None and url.port is not None
        context = ssl.create_default_context(cafile=str(self.ca.ca_bundle))
        namespace = self.net.topology.caller(user).namespace
        connection = _CallerHTTPS(namespace, url.hostname, url.port, context=context, timeout=timeout)
        headers = {"Authorization": f"Bearer {self.issuer.token(user)}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            answer_headers = {name.lower(): value for name, value in response.getheaders()}
        finally:
            connection.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return ApiAnswer(response.status, parsed, answer_headers)

    def grants(self, user: str) -> list[dict[str, Any]]:
        """Every grant of `user`'s, newest first (every page)."""
        found: list[dict[str, Any]] = []
        path: str | None = "/api/v1/grants"
        while path:
            page = self.api(user, "GET", path)
            if page.status != 200:
                raise RuntimeError(f"listing {user}'s grants: {page.error()}")
            found.extend(page.body["grants"])
            link = page.body.get("nextLink")
            path = None
            if link:
                parts = urlsplit(link)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
        return found

    def grant(self, user: str, grant_id: str) -> dict[str, Any]:
        """One grant as its owner reads it."""
        answer = self.api(user, "GET", f"/api/v1/grants/{grant_id}")
        if answer.status != 200:
            raise RuntimeError(f"reading grant {grant_id} as {user}: {answer.error()}")
        return dict(answer.body)

    def approve(self, approver: str, grant_id: str, reason: str) -> Approval:
        """`approver` runs `jit approve ID --reason …` on their machine."""
        done = self.jit(approver, "approve", grant_id, "--reason", reason)
        said = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if line.strip())
        return Approval(f"jit approve {grant_id} --reason {reason!r}", done.returncode == 0, said)

    def ssh_options(self) -> list[str]:
        """Options for `jit ssh … -- OPTIONS [command]`: the lab's key, host keys also under DNS names."""
        known = f"UserKnownHostsFile={self.net.keys.known_hosts}"
        return [f"UserKnownHostsFile={self.known_hosts}" if o == known else o for o in self.net.ssh_options()]

    # ---- looking at the world ----

    def broker_rules(self, nsg: str) -> list[dict[str, Any]]:
        """The rules the broker wrote in an NSG right now (ARM JSON)."""
        from jitbroker.rules import is_broker_rule

        rules = self.admin.nsg(nsg)["properties"].get("securityRules", [])
        return [rule for rule in rules if is_broker_rule(rule)]

    def close_grants(self, user: str) -> list[str]:
        """Revoke `user`'s open grants and withdraw their waiting requests (DELETE does both); their ids."""
        closed = []
        for grant in self.grants(user):
            if grant["status"] in OPEN_OR_WAITING:
                answer = self.api(user, "DELETE", f"/api/v1/grants/{grant['id']}")
                if answer.status != 200:
                    raise RuntimeError(f"closing {user}'s grant {grant['id']}: {answer.error()}")
                closed.append(str(grant["id"]))
        return closed

    def reset(self, users: Iterable[str] = ()) -> None:
        """Close `users`' grants and requests (so the broker forgets them), then restore the scenario's ARM
        world; a webhook receiver forgets what it got."""
        for user in users:
            self.close_grants(user)
        self.admin.reset()
        if self.receiver is not None:
            self.receiver.clear()


def jit_command() -> list[str]:
    """How to start the `jit` CLI installed beside this Python (the console script, else the module)."""
    script = Path(sys.executable).with_name("jit")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "jitcli.main"]


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
