"""docs/design.md §5: a caller who reaches the broker over IPv6 asks for an IPv4-only VM; `jit` retries
over IPv4.

The broker listens on ::1 and on 127.0.0.1; its name resolves to ::1 first and 127.0.0.1 second (as a hostname
with AAAA and A records does), so the first request arrives over IPv6.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from jitcli.api import BrokerClient

from lab.broker import BrokerProcess

DUAL_STACK_NAME = "broker.dual-stack.test"


class StaticToken:
    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str:
        return self._token


def _port_free_on_both_loopbacks() -> int:
    for _ in range(20):
        with socket.socket(socket.AF_INET) as v4:
            v4.bind(("127.0.0.1", 0))
            port = int(v4.getsockname()[1])
            with socket.socket(socket.AF_INET6) as v6:
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    v6.bind(("::1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


@pytest.fixture(scope="module")
def dual_stack_broker(broker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The broker on ::1 and 127.0.0.1 at one port (two instances of one app, as behind one hostname)."""
    port = _port_free_on_both_loopbacks()
    logs = tmp_path_factory.mktemp("dual-stack-broker")
    with (
        BrokerProcess(broker_env, host="::1", port=port, sweep_interval=None, log_dir=logs / "v6"),
        BrokerProcess(broker_env, host="127.0.0.1", port=port, sweep_interval=None, log_dir=logs / "v4"),
    ):
        yield port


@pytest.fixture
def dual_stack_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """`broker.dual-stack.test` resolves to ::1 then 127.0.0.1 in this process."""
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, family: int = 0, *args: Any, **kwargs: Any) -> Any:
        if host != DUAL_STACK_NAME:
            return real(host, port, family, *args, **kwargs)
        answers: list[tuple[Any, ...]] = []
        if family in (0, socket.AF_INET6):
            answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)))
        if family in (0, socket.AF_INET):
            answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)))
        return answers

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return DUAL_STACK_NAME


def test_an_ipv6_caller_is_retried_over_ipv4_for_an_ipv4_only_vm(
    dual_stack_broker: int, dual_stack_name: str, token_for: Any
) -> None:
    trace = io.StringIO()
    client = BrokerClient(
        f"http://{dual_stack_name}:{dual_stack_broker}",
        StaticToken(token_for("alice")),
        verbose=True,
        trace=trace,
    )
    assert client.whoami()["address"] == "::1"  # the broker sees the caller over IPv6 first
    grant, _ = client.create_grant({"vm": "web-01", "protocol": "ssh", "duration": "5m"})
    try:
        assert grant.source == "127.0.0.1/32"
        assert "409 Conflict" in trace.getvalue()
        assert "address_family_mismatch" in trace.getvalue()
        assert "retrying over IPv4" in trace.getvalue()
        assert client.whoami()["address"] == "127.0.0.1"  # and keeps using IPv4 afterwards
    finally:
        client.revoke(grant.id)
