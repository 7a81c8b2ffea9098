"""A tiny OpenID Connect issuer over real HTTPS for the identity tests: v2 and v1 discovery, rotatable JWKS,
and a request log, so tests can count exactly how often the verifier goes to the issuer.

It is deliberately separate from `lab/issuer.py` (the lab's full Entra stand-in): these tests need to sign
arbitrary, deliberately broken tokens and to count and fail requests: test machinery, not lab behaviour.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from lab.tls import LabCA

TENANT = "7d3c2f6e-0a1b-4c5d-8e9f-0123456789ab"
OTHER_TENANT = "0ddba11e-0000-4000-8000-00000000beef"
CLIENT_ID = "0b8f5c4e-6d7a-4b3c-9e2f-a1b2c3d4e5f6"
APP_ID_URI = "api://jit-broker-test"
OTHER_APP_ID = "0a0a0a0a-1111-4222-8333-444444444444"
ALICE_OID = "a11ce000-0000-4000-8000-000000000001"
AZURE_CLI = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
DAEMON_APP_ID = "da3e0000-0000-4000-8000-00000000da01"
DAEMON_SP_OID = "da3e0000-0000-4000-8000-00000000da02"


_KEY_POOL: list[rsa.RSAPrivateKey] = []


def _pooled_key(index: int) -> rsa.RSAPrivateKey:
    """The index-th of a few RSA keys generated once per test session (key generation is the slow part)."""
    while len(_KEY_POOL) <= index:
        _KEY_POOL.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEY_POOL[index]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass
class MiniIssuer:
    """HTTPS issuer on 127.0.0.1 serving v2 discovery (`/{tenant}/v2.0/.well-known/openid-configuration`), v1
    discovery (`/{tenant}/.well-known/openid-configuration`) and their JWKS.

    Both key sets publish `published` unless `published_v1` names the v1 set's own keys. `gate`, when set,
    holds every JWKS answer until it is opened, so a test can keep a fetch in flight; `on_fetch` runs as a
    JWKS answer is served (a test's clock can move while a fetch takes its time).
    """

    tls: LabCA
    tenant: str = TENANT
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    published_v1: list[str] | None = None
    requests: list[str] = field(default_factory=list)
    failing: bool = False
    gate: threading.Event | None = None
    on_fetch: Callable[[], None] | None = None
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def v2_issuer(self) -> str:
        return f"{self.url}/{self.tenant}/v2.0"

    @property
    def metadata_path(self) -> str:
        return f"/{self.tenant}/v2.0/.well-known/openid-configuration"

    @property
    def jwks_path(self) -> str:
        return f"/{self.tenant}/discovery/v2.0/keys"

    @property
    def v1_metadata_path(self) -> str:
        return f"/{self.tenant}/.well-known/openid-configuration"

    @property
    def v1_jwks_path(self) -> str:
        return f"/{self.tenant}/discovery/keys"

    def hold_key_fetches(self) -> threading.Event:
        """From now on every JWKS answer waits until the returned event is set."""
        self.gate = threading.Event()
        return self.gate

    def count(self, path: str) -> int:
        """How many GETs of `path` the issuer has answered (or failed) so far."""
        with self._lock:
            return sum(1 for p in self.requests if p == path)

    def add_key(self, *, publish: bool = True) -> str:
        """A new RSA signing key; published in the JWKS unless told otherwise. Returns its kid."""
        kid = uuid.uuid4().hex
        self.keys[kid] = _pooled_key(len(self.keys))
        if publish:
            self.published.append(kid)
        return kid

    def retire(self, kid: str) -> None:
        """Stop publishing `kid` (tokens it signed stop verifying once verifiers refresh)."""
        self.published.remove(kid)

    @property
    def current_kid(self) -> str:
        return self.published[-1]

    def sign(
        self, claims: dict[str, Any], *, kid: str | None = None, headers: dict[str, Any] | None = None
    ) -> str:
        """An RS256 token over `claims` with the given (default: newest published) key."""
        kid = kid or self.current_kid
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid, **(headers or {})})

    def public_pem(self, kid: str) -> bytes:
        return (
            self.keys[kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The classic key-confusion forgery: HMAC-SHA256 keyed with the issuer's public key PEM."""
        kid = self.current_kid
        signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64url_json(claims)}"
        mac = hmac.new(self.public_pem(kid), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"

    def jwks(self, kids: list[str] | None = None) -> dict[str, Any]:
        entries = []
        for kid in self.published if kids is None else kids:
            jwk = RSAAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
            entries.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": entries}

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(path)
        if self.failing:
            return 500, {"error": "temporarily_unavailable"}
        if path == self.metadata_path:
            return 200, {
                "issuer": self.v2_issuer,
                "jwks_uri": f"{self.url}{self.jwks_path}",
                "token_endpoint": f"{self.url}/{self.tenant}/oauth2/v2.0/token",
            }
        if path == self.v1_metadata_path:
            return 200, {
                "issuer": f"https://sts.windows.net/{self.tenant}/",
                "jwks_uri": f"{self.url}{self.v1_jwks_path}",
                "token_endpoint": f"{self.url}/{self.tenant}/oauth2/token",
            }
        if path in (self.jwks_path, self.v1_jwks_path):
            if self.gate is not None:
                self.gate.wait(timeout=30)
            if self.on_fetch is not None:
                self.on_fetch()
            v1 = path == self.v1_jwks_path and self.published_v1 is not None
            return 200, self.jwks(self.published_v1 if v1 else None)
        return 404, {"error": "not_found"}

    def start(self) -> MiniIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = issuer._answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.certfile, self.tls.keyfile)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="mini-issuer", daemon=True
        ).start()
        if not self.published:
            self.add_key()
        return self

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @contextmanager
    def running(self) -> Iterator[MiniIssuer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


class FakeClock:
    """A controllable UTC clock (the verifier's `clock`): tests move time instead of sleeping."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime.now(dt.UTC).replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    @property
    def epoch(self) -> int:
        return int(self.now.timestamp())
