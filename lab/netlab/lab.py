"""The network lab: VMs as network namespaces running sshd, NSGs in nftables, callers as namespaces.

    with NetLab(load_scenario(), vms=["web-01"]) as net:
        net.attach(emulator)                                  # renders on every NSG change from now on
        net.tcp_reachable("alice", "198.51.100.10", 22)       # False until a rule lets alice in
        net.run("alice", net.ssh_argv("web-01", "hostname"))  # ssh from 203.0.113.10, as in life

Picture (all names start with `jl-`):

    jl-c-alice (203.0.113.10) ─┐                      ┌─ jlb-0 192.0.2.1/28 ── jl-vm-web-01 (192.0.2.4)
    jl-c-mallory (…66) ────────┴ jlb-callers ─ jl-router ─ jlb-1 192.0.2.17/28 ── jl-vm-db-01 (192.0.2.21)
    root namespace: jl-host 198.51.100.1 ───────┘   (DNAT 198.51.100.x -> private IP, then the NSG)

The router DNATs each VM's public IP to its private IP before anything else, like Azure, so NSG rules see
the private IP as destination; it drops caller traffic to private addresses that was not DNATed (the internet
cannot reach a VNet's private addresses). Services in the root namespace that callers must reach (the broker)
bind `HOST_V4` (198.51.100.1); callers reach them with their own source address. Everything is torn down on
exit, and leftovers of a killed run (namespaces named `jl-*`, the `jl-host` link) are removed at start.
One lab at a time per machine: a lock file says so instead of tearing down another run's namespaces.
"""

from __future__ import annotations

import fcntl
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol

from lab.netlab import netns
from lab.netlab.netns import NetlabError, in_netns, run, socket_in
from lab.netlab.nsg import ServiceTags, parse_nsg
from lab.netlab.render import PathNsg, render_ruleset
from lab.netlab.services import LabKeys, VmServices, check_sshd, generate_key, lab_user_id
from lab.netlab.topology import (
    CALLER_GATEWAY_V4,
    CALLER_GATEWAY_V6,
    CALLER_V4_NET,
    CALLER_V6_NET,
    HOST_LINK_V4_PREFIX,
    HOST_LINK_V6_PREFIX,
    HOST_V4,
    HOST_V6,
    PREFIX,
    ROUTER_NS,
    ROUTER_UPLINK_V4,
    ROUTER_UPLINK_V6,
    Topology,
    build_topology,
)
from lab.scenario import Scenario

if TYPE_CHECKING:
    from lab.arm import ArmEmulator

HOST_LINK = "jl-host"
CALLER_BRIDGE = "jlb-callers"
LOCK_FILE = Path("/run/jitlab-netlab.lock")
NEEDED_COMMANDS = {
    "ip": "iproute2",
    "nft": "nftables",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "unshare": "util-linux",
}


class SupportsSubscribe(Protocol):
    """What the lab needs from the ARM emulator: a callback after every NSG change."""

    def subscribe(self, callback: Callable[[str, dict[str, Any]], None]) -> Any:
        """Call `callback(nsg_id, nsg_json)` after each NSG change."""


def ensure_tools() -> None:
    """Install the Debian packages the lab needs when a command is missing (root only, which the lab is)."""
    missing = sorted({pkg for cmd, pkg in NEEDED_COMMANDS.items() if shutil.which(cmd) is None})
    if cmd_sshd_missing():
        missing = sorted({*missing, "openssh-server"})
    if not missing:
        return
    run(["apt-get", "update", "-qq"])
    run(
        [
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            *missing,
        ]
    )


def cmd_sshd_missing() -> bool:
    """sshd lives in /usr/sbin, which is not always on PATH."""
    return not Path("/usr/sbin/sshd").exists()


def remove_leftovers() -> None:
    """Remove what a killed lab left behind: its namespaces (ending their processes) and the root link."""
    for name in netns.namespaces():
        if name.startswith(PREFIX):
            for pid in netns.pids_in(name):
                run(["kill", "-9", str(pid)], check=False)
            run(["ip", "netns", "del", name], check=False)
    run(["ip", "link", "del", HOST_LINK], check=False)


class NetLab:
    """Builds the namespaces on `start()`, renders NSGs into them on every change, removes all on `stop()`."""

    def __init__(
        self, scenario: Scenario, *, vms: Iterable[str] | None = None, workdir: Path | None = None
    ) -> None:
        self.topology: Topology = build_topology(scenario, vms)
        self.tags = ServiceTags.for_vnets(self.topology.vnet_prefixes)
        self._workdir_given = workdir
        self.folder = Path()
        self.keys = LabKeys(Path(), Path())
        self._services: list[VmServices] = []
        self._nsgs: dict[str, dict[str, Any]] = {k.lower(): v for k, v in self.topology.initial_nsgs.items()}
        self._generations: dict[str, int] = {}
        self._lock = threading.RLock()
        self._lock_file: IO[str] | None = None
        self._changed_since_attach: set[str] | None = None
        self._started = False

    # ---- lifecycle ----

    def start(self) -> NetLab:
        """Build everything; on any failure, remove what was built and raise."""
        reason = netns.can_run()
        if reason:
            raise NetlabError(reason)
        ensure_tools()
        check_sshd()
        self._take_lock()
        try:
            remove_leftovers()
            self.folder = self._workdir_given or Path(tempfile.mkdtemp(prefix="jitlab-netlab-"))
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o755)  # the VMs' admin users read their authorized_keys from here
            self._started = True
            self._build_network()
            self._start_services()
            with self._lock:
                for vm in self.topology.vms:
                    self._render(vm.name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End every process the lab started, delete every namespace and link it made, release the lock."""
        for services in self._services:
            services.stop()
        self._services = []
        if self._started:
            remove_leftovers()
            if self._workdir_given is None and self.folder != Path():
                shutil.rmtree(self.folder, ignore_errors=True)
            self._started = False
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> NetLab:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- NSG state ----

    def apply_nsg(self, nsg_id: str, nsg_json: Mapping[str, Any]) -> None:
        """The emulator's callback: keep the NSG's new state, re-render every VM whose path includes it."""
        key = nsg_id.lower()
        with self._lock:
            if not self._started:
                return  # the emulator outlives this lab and keeps calling
            if self._changed_since_attach is not None:
                self._changed_since_attach.add(key)
            self._store(key, nsg_json)
            for vm in self.topology.vms:
                if key in vm.nsg_path:
                    self._render(vm.name)

    def sync(self, nsgs: Iterable[Mapping[str, Any]]) -> None:
        """Take a full snapshot of NSG state (e.g. `GET /_lab/nsgs`) and re-render every VM."""
        with self._lock:
            for nsg_json in nsgs:
                key = str(nsg_json.get("id", "")).lower()
                if self._changed_since_attach is not None and key in self._changed_since_attach:
                    continue  # a callback already brought something newer than this snapshot
                self._store(key, nsg_json)
            for vm in self.topology.vms:
                self._render(vm.name)

    def attach(
        self, emulator: SupportsSubscribe, snapshot: Callable[[], Iterable[Mapping[str, Any]]]
    ) -> None:
        """Follow an ARM emulator: subscribe to its NSG changes, then render once from `snapshot()`."""
        with self._lock:
            self._changed_since_attach = set()
        emulator.subscribe(self.apply_nsg)
        self.sync(snapshot())
        with self._lock:
            self._changed_since_attach = None

    def follow(self, emulator: ArmEmulator) -> None:
        """`attach` to an in-process ARM emulator, taking its current NSGs as the first snapshot."""
        self.attach(emulator, emulator.service.all_nsgs)

    def ruleset(self, vm: str) -> str:
        """The nftables ruleset in force inside a VM's namespace right now (for logs and debugging)."""
        return run(
            in_netns(self.topology.vm(vm).namespace, ["nft", "list", "table", "inet", "jitlab"])
        ).stdout

    def _store(self, key: str, nsg_json: Mapping[str, Any]) -> None:
        self._nsgs[key] = dict(nsg_json)
        if (nsg_json.get("properties") or {}).get("flushConnection"):
            # Every change of a flushing NSG re-evaluates its live flows (render.py).
            self._generations[key] = self._generations.get(key, 1) + 1

    def _render(self, vm_name: str) -> None:
        vm = self.topology.vm(vm_name)
        path = []
        for key in vm.nsg_path:
            nsg_json = self._nsgs.get(key)
            if nsg_json is None:
                raise NetlabError(f"{vm.name}: no state for NSG {key}")
            path.append(PathNsg(parse_nsg(nsg_json, self.tags), self._generations.get(key, 1)))
        text = render_ruleset(vm.name, path)
        run(in_netns(vm.namespace, ["nft", "-f", "-"]), input_text=text)

    # ---- callers ----

    def caller_argv(self, caller: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` on a caller's machine (inside its namespace, with its addresses)."""
        return in_netns(self.topology.caller(caller).namespace, argv)

    def run(
        self, caller: str, argv: Sequence[str], *, timeout: float = 30.0, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on a caller's machine and wait for it (output captured as text)."""
        return subprocess.run(  # noqa: S603 - argv built by the lab, no shell
            self.caller_argv(caller, argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, caller: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command on a caller's machine (e.g. an ssh session the test keeps open)."""
        return subprocess.Popen(self.caller_argv(caller, argv), **kwargs)  # noqa: S603 - argv, no shell

    def ssh_options(self, *, connect_timeout: int = 3) -> list[str]:
        """ssh options that use the lab's key and known_hosts and give up on a dead path within seconds."""
        return [
            "-F",
            "/dev/null",
            "-i",
            str(self.keys.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.keys.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={connect_timeout}",
            "-o",
            "ServerAliveInterval=1",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "LogLevel=ERROR",
        ]

    def ssh_argv(
        self, vm: str, *command: str, address: str | None = None, connect_timeout: int = 3
    ) -> list[str]:
        """`ssh admin@public-ip command…` for a VM, as a caller would run it (use with `run`/`popen`)."""
        target = self.topology.vm(vm)
        host = address or target.public_ips[0]
        return [
            "ssh",
            *self.ssh_options(connect_timeout=connect_timeout),
            f"{target.admin_username}@{host}",
            *command,
        ]

    def connect(self, caller: str, host: str, port: int, timeout: float = 2.0) -> socket.socket | None:
        """A TCP connection from a caller's machine, or None when nothing answered within `timeout` s."""
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        sock = socket_in(self.topology.caller(caller).namespace, family)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            sock.close()
            return None
        return sock

    def probe(self, caller: str, host: str, port: int, timeout: float = 2.0) -> str:
        """What a caller sees of host:port: "open", "refused" (let through, nothing listens) or "filtered"."""
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        sock = socket_in(self.topology.caller(caller).namespace, family)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        except OSError:
            return "filtered"
        finally:
            sock.close()
        return "open"

    def tcp_reachable(self, caller: str, host: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a caller completes a TCP handshake with host:port within `timeout` seconds."""
        sock = self.connect(caller, host, port, timeout)
        if sock is None:
            return False
        sock.close()
        return True

    def banner(self, caller: str, host: str, port: int, timeout: float = 2.0) -> bytes | None:
        """The first bytes a service sends a caller (an sshd's `SSH-2.0-…`), or None when unreachable."""
        sock = self.connect(caller, host, port, timeout)
        if sock is None:
            return None
        with sock:
            try:
                return sock.recv(256)
            except OSError:
                return None

    # ---- building ----

    def _take_lock(self) -> None:
        handle = LOCK_FILE.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise NetlabError(
                f"another network lab is running on this machine ({LOCK_FILE} is locked)"
            ) from None
        self._lock_file = handle

    def _build_network(self) -> None:
        topo = self.topology
        ip = ["ip", "-n", ROUTER_NS]
        run(["ip", "netns", "add", ROUTER_NS])
        run([*ip, "link", "set", "lo", "up"])
        _sysctl(ROUTER_NS, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        for subnet in topo.subnets:
            run([*ip, "link", "add", subnet.bridge, "type", "bridge"])
            for gateway in subnet.gateways:
                run([*ip, "addr", "add", gateway, "dev", subnet.bridge, *_nodad(gateway)])
            run([*ip, "link", "set", subnet.bridge, "up"])
        run([*ip, "link", "add", CALLER_BRIDGE, "type", "bridge"])
        run([*ip, "addr", "add", f"{CALLER_GATEWAY_V4}/{CALLER_V4_NET.prefixlen}", "dev", CALLER_BRIDGE])
        run(
            [
                *ip,
                "addr",
                "add",
                f"{CALLER_GATEWAY_V6}/{CALLER_V6_NET.prefixlen}",
                "dev",
                CALLER_BRIDGE,
                "nodad",
            ]
        )
        run([*ip, "link", "set", CALLER_BRIDGE, "up"])
        for vm in topo.vms:
            addrs = [(f"{a.private_ip}/{a.prefixlen}", a.gateway) for a in vm.addresses]
            self._add_host(vm.namespace, vm.router_link, vm.subnet.bridge, addrs)
        for caller in topo.callers:
            addrs = [
                (f"{caller.addresses[0]}/{CALLER_V4_NET.prefixlen}", CALLER_GATEWAY_V4),
                (f"{caller.addresses[1]}/{CALLER_V6_NET.prefixlen}", CALLER_GATEWAY_V6),
            ]
            self._add_host(caller.namespace, caller.router_link, CALLER_BRIDGE, addrs)
        # The root namespace's link to the router: where the broker listens for callers, no NAT on the way.
        run(["ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "jl-uplink", "netns", ROUTER_NS])
        run(["ip", "addr", "add", f"{HOST_V4}/{HOST_LINK_V4_PREFIX}", "dev", HOST_LINK])
        run(["ip", "addr", "add", f"{HOST_V6}/{HOST_LINK_V6_PREFIX}", "dev", HOST_LINK, "nodad"])
        run(["ip", "link", "set", HOST_LINK, "up"])
        run([*ip, "addr", "add", f"{ROUTER_UPLINK_V4}/{HOST_LINK_V4_PREFIX}", "dev", "jl-uplink"])
        run([*ip, "addr", "add", f"{ROUTER_UPLINK_V6}/{HOST_LINK_V6_PREFIX}", "dev", "jl-uplink", "nodad"])
        run([*ip, "link", "set", "jl-uplink", "up"])
        run(["ip", "route", "add", str(CALLER_V4_NET), "via", ROUTER_UPLINK_V4, "dev", HOST_LINK])
        run(["ip", "-6", "route", "add", str(CALLER_V6_NET), "via", ROUTER_UPLINK_V6, "dev", HOST_LINK])
        run(in_netns(ROUTER_NS, ["nft", "-f", "-"]), input_text=self._router_ruleset())

    def _add_host(self, namespace: str, router_end: str, bridge: str, addrs: list[tuple[str, str]]) -> None:
        run(["ip", "netns", "add", namespace])
        run(
            [
                "ip",
                "-n",
                ROUTER_NS,
                "link",
                "add",
                router_end,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                namespace,
            ]
        )
        run(["ip", "-n", ROUTER_NS, "link", "set", router_end, "master", bridge, "up"])
        own = ["ip", "-n", namespace]
        run([*own, "link", "set", "lo", "up"])
        for cidr, _ in addrs:
            run([*own, "addr", "add", cidr, "dev", "eth0", *_nodad(cidr)])
        run([*own, "link", "set", "eth0", "up"])
        for cidr, gateway in addrs:
            family = "-6" if ipaddress.ip_interface(cidr).version == 6 else "-4"
            run([*own, family, "route", "replace", "default", "via", gateway, "dev", "eth0"])

    def _router_ruleset(self) -> str:
        dnat = []
        for vm in self.topology.vms:
            for a in vm.addresses:
                if a.public_ip is None:
                    continue
                pub = ipaddress.ip_address(a.public_ip)
                priv = ipaddress.ip_address(a.private_ip)
                kw = "ip" if pub.version == 4 else "ip6"
                if pub.version == priv.version:
                    dnat.append(f"\t\t{kw} daddr {pub} dnat {kw} to {priv}")
        drops = []
        for prefix in self.topology.vnet_prefixes:
            kw = "ip" if ipaddress.ip_network(prefix).version == 4 else "ip6"
            drops.append(f'\t\tiifname "{CALLER_BRIDGE}" {kw} daddr {prefix} drop')
        return "\n".join(
            [
                "table inet jitlab_router",
                "delete table inet jitlab_router",
                "table inet jitlab_router {",
                "\tchain prerouting {",
                "\t\ttype nat hook prerouting priority dstnat; policy accept;",
                *dnat,
                "\t}",
                "\tchain forward {",
                "\t\ttype filter hook forward priority filter; policy accept;",
                "\t\tct status dnat accept",
                *drops,
                "\t}",
                "}",
                "",
            ]
        )

    def _start_services(self) -> None:
        key = self.folder / "client_ed25519"
        generate_key(key, "jit-broker lab client")
        key.chmod(0o600)
        uid = lab_user_id(Path("/etc/passwd").read_text())
        self._services = [
            VmServices(vm, self.folder / vm.name, key.with_suffix(".pub"), uid) for vm in self.topology.vms
        ]
        for services in self._services:
            services.start()
        for services in self._services:
            services.wait_ready()
        known_hosts = self.folder / "known_hosts"
        known_hosts.write_text(
            "".join(
                f"{','.join((*s.vm.public_ips, *s.vm.private_ips))} {s.host_public_key}\n"
                for s in self._services
            )
        )
        self.keys = LabKeys(client_key=key, known_hosts=known_hosts)


def _sysctl(namespace: str, *settings: str) -> None:
    run(in_netns(namespace, ["sysctl", "-q", "-w", *settings]))


def _nodad(cidr: str) -> list[str]:
    return ["nodad"] if ipaddress.ip_interface(cidr).version == 6 else []
