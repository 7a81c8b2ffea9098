"""Fixtures for the network lab's packet tests: a lab following the session's ARM emulator, and SDK writers.

Packet tests need root and `ip netns`; without them they are skipped with the reason (CI runs as root).
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from lab.netlab import NetLab, can_run
from lab.scenario import Scenario

SUBSCRIPTION = "00000000-0000-4000-8000-0000000000a1"
RG = "rg-jit-demo"
LAB_VMS = ["web-01", "db-01", "win-01", "v6-01"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    for item in items:
        if item.get_closest_marker("netlab") is None or "tests/netlab" not in str(item.path):
            continue
        reason = reason or can_run() or "ok"
        if reason != "ok":
            item.add_marker(pytest.mark.skip(reason=reason))


class IssuerCredential:
    """The broker's managed identity as an azure-core TokenCredential: ARM tokens from the lab's issuer."""

    def __init__(self, issuer: Any) -> None:
        self._issuer = issuer

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._issuer.managed_identity_token(), int(time.time()) + 3600)


@pytest.fixture(scope="module")
def netlab(scenario: Scenario, arm: Any) -> Iterator[NetLab]:
    """The network lab for a few demo VMs, rendering from the session's ARM emulator."""
    with NetLab(scenario, vms=LAB_VMS) as lab:
        lab.follow(arm)
        yield lab


@pytest.fixture
def net(netlab: NetLab, arm_admin: Any) -> NetLab:
    """The network lab after the ARM world was reset to the scenario's (the reset re-renders every VM)."""
    return netlab


@pytest.fixture(scope="module")
def network(arm: Any, issuer: Any, lab_ca: Any) -> Any:
    """`NetworkManagementClient` against the emulator, as the broker would hold it."""
    from azure.mgmt.network import NetworkManagementClient

    return NetworkManagementClient(
        IssuerCredential(issuer), SUBSCRIPTION, base_url=arm.url, connection_verify=str(lab_ca.ca_bundle)
    )


class Rules:
    """Writes and deletes security rules through the real SDK, waiting for ARM's operation to finish."""

    def __init__(self, network: Any) -> None:
        self._network = network

    def allow(self, nsg: str, name: str, *, priority: int, source: str, port: int, dest: str = "*") -> None:
        self.put(nsg, name, priority=priority, source=source, port=port, dest=dest, access="Allow")

    def deny(self, nsg: str, name: str, *, priority: int, source: str, port: int, dest: str = "*") -> None:
        self.put(nsg, name, priority=priority, source=source, port=port, dest=dest, access="Deny")

    def put(
        self, nsg: str, name: str, *, priority: int, source: str, port: int, dest: str, access: str
    ) -> None:
        from azure.mgmt.network.models import SecurityRule

        rule = SecurityRule(
            {
                "properties": {
                    "protocol": "Tcp",
                    "sourceAddressPrefix": source,
                    "sourcePortRange": "*",
                    "destinationAddressPrefix": dest,
                    "destinationPortRange": str(port),
                    "access": access,
                    "priority": priority,
                    "direction": "Inbound",
                }
            }
        )
        self._network.security_rules.begin_create_or_update(RG, nsg, name, rule, polling_interval=0).result()

    def delete(self, nsg: str, name: str) -> None:
        self._network.security_rules.begin_delete(RG, nsg, name, polling_interval=0).result()


@pytest.fixture
def rules(network: Any, net: NetLab) -> Rules:
    """Rule writer for this test (the world was reset before it)."""
    return Rules(network)


class LiveSession:
    """An ssh session kept open: each line sent comes back as `echo:<line>` from the VM."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._buffer = b""

    def ask(self, text: str, timeout: float = 5.0) -> str | None:
        """Send a line; the VM's answer, or None when none came within `timeout` seconds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return None
                chunk = os.read(fd, 4096)
                if not chunk:
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def open_session(net: NetLab) -> Iterator[Any]:
    """`open_session(caller, vm)`: a live ssh session from a caller's machine (ended after the test)."""
    sessions: list[LiveSession] = []

    def start(caller: str, vm: str) -> LiveSession:
        argv = net.ssh_argv(vm, 'while read line; do echo "echo:$line"; done')
        proc = net.popen(
            caller, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        session = LiveSession(proc)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()
