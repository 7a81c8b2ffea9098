"""A throw-away certificate authority so every lab server speaks real, verified HTTPS.

azure-core refuses to send a bearer token over plain HTTP, and the broker must run its production code path
in the lab, so the ARM emulator and the token issuer serve HTTPS with a certificate from this CA. Clients
trust it through `REQUESTS_CA_BUNDLE` (requests, hence azure-core) and `SSL_CERT_FILE` (OpenSSL's default
paths, hence urllib and PyJWT's JWKS fetch); `LabCA.client_env()` gives both.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1", "::1")
_VALIDITY = dt.timedelta(days=7)


class LabCA:
    """A CA and one server certificate (127.0.0.1, ::1, localhost), written as PEM files in `directory`.

    Files: `ca.pem` (the bundle clients trust), `server.pem` (server cert followed by the CA cert),
    `server-key.pem`. Extra addresses (e.g. a network-lab address the broker binds) can be added to the server
    certificate with `extra_addresses`.
    """

    def __init__(self, directory: Path | str, *, extra_addresses: tuple[str, ...] = ()) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_bundle = self.directory / "ca.pem"
        self.certfile = self.directory / "server.pem"
        self.keyfile = self.directory / "server-key.pem"
        self._issue(extra_addresses)

    def _issue(self, extra_addresses: tuple[str, ...]) -> None:
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jit-broker lab CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        server_key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in (*SERVER_ADDRESSES, *extra_addresses)]
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        self.ca_bundle.write_bytes(ca_pem)
        self.certfile.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
        self.keyfile.touch(mode=0o600)
        self.keyfile.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context with the lab's server certificate, for servers built on `ssl`."""
        return server_context(self.certfile, self.keyfile)

    def client_env(self) -> dict[str, str]:
        """The environment that makes requests/azure-core and urllib/OpenSSL trust this CA."""
        bundle = str(self.ca_bundle)
        return {"REQUESTS_CA_BUNDLE": bundle, "SSL_CERT_FILE": bundle}


def server_context(certfile: Path | str, keyfile: Path | str) -> ssl.SSLContext:
    """A TLS 1.2+ server context for a certificate chain and key (shared by every lab server)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), str(keyfile))
    return context
