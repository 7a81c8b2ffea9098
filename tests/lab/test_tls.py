"""The lab CA's server certificate is trusted for loopback names only, and only by clients given the CA."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from lab.tls import LabCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA(tmp_path_factory.mktemp("ca"))


def serve_once(ca: LabCA, family: socket.AddressFamily, address: str) -> tuple[int, threading.Thread]:
    """A TLS listener that completes one handshake (or gives up when the client rejects it)."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    context = ca.server_context()

    def accept() -> None:
        with listener:
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return port, thread


def handshake(
    server_ca: LabCA, trusted: Path | None, family: socket.AddressFamily, address: str, server_hostname: str
) -> None:
    """One TLS handshake with a server holding `server_ca`'s certificate, trusting `trusted` or the system."""
    port, thread = serve_once(server_ca, family, address)
    context = ssl.create_default_context(cafile=str(trusted)) if trusted else ssl.create_default_context()
    try:
        with (
            socket.create_connection((address, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=server_hostname),
        ):
            pass
    finally:
        thread.join(timeout=5)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("family", "address", "name"),
    [
        (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
        (socket.AF_INET, "127.0.0.1", "localhost"),
        pytest.param(
            socket.AF_INET6,
            "::1",
            "::1",
            marks=pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here"),
        ),
    ],
    ids=["ipv4", "localhost", "ipv6"],
)
def test_clients_trusting_the_lab_ca_verify_the_server(ca: LabCA, family, address, name):
    handshake(ca, ca.ca_bundle, family, address, name)


def test_the_certificate_is_not_valid_for_other_names(ca: LabCA):
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca, ca.ca_bundle, socket.AF_INET, "127.0.0.1", "management.azure.com")


def test_clients_without_the_lab_ca_refuse_the_server(ca: LabCA, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca, None, socket.AF_INET, "127.0.0.1", "127.0.0.1")


def test_each_lab_gets_its_own_ca(ca: LabCA, tmp_path: Path):
    other = LabCA(tmp_path)

    assert other.ca_bundle.read_bytes() != ca.ca_bundle.read_bytes()
    assert other.keyfile.stat().st_mode & 0o077 == 0
    assert ca.client_env() == {"REQUESTS_CA_BUNDLE": str(ca.ca_bundle), "SSL_CERT_FILE": str(ca.ca_bundle)}
