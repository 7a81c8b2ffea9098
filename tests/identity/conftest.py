"""Fixtures for the identity tests: a real HTTPS issuer, a controllable clock, verifiers built on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jitbroker.identity import TokenVerifier
from lab.tls import LabCA
from tests.identity.minissuer import (
    ALICE_OID,
    APP_ID_URI,
    AZURE_CLI,
    CLIENT_ID,
    DAEMON_APP_ID,
    DAEMON_SP_OID,
    TENANT,
    FakeClock,
    MiniIssuer,
)

MakeVerifier = Callable[..., TokenVerifier]
MakeClaims = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def identity_tls(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA(Path(tmp_path_factory.mktemp("identity-tls")))


@pytest.fixture
def trust_test_ca(identity_tls: LabCA, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier trusts the system store; point it at the test CA the way the lab does."""
    monkeypatch.setenv("SSL_CERT_FILE", str(identity_tls.ca_bundle))


@pytest.fixture
def mini_issuer(identity_tls: LabCA, trust_test_ca: None) -> Iterator[MiniIssuer]:
    with MiniIssuer(identity_tls).running() as issuer:
        yield issuer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_verifier(mini_issuer: MiniIssuer, clock: FakeClock) -> MakeVerifier:
    """A verifier for the mini issuer's tenant and the test app; keyword arguments override the defaults."""

    def make(**overrides: Any) -> TokenVerifier:
        settings: dict[str, Any] = {
            "authority_host": mini_issuer.url,
            "tenant_id": TENANT,
            "api_client_id": CLIENT_ID,
            "app_id_uri": APP_ID_URI,
            "token_versions": frozenset({"2"}),
            "clock": clock,
            **overrides,
        }
        return TokenVerifier(**settings)

    return make


@pytest.fixture
def verifier(make_verifier: MakeVerifier) -> TokenVerifier:
    return make_verifier()


@pytest.fixture
def v2_claims(mini_issuer: MiniIssuer, clock: FakeClock) -> MakeClaims:
    """Claims of a valid v2 access token for Alice, issued now; keyword arguments override or (None) drop."""

    def claims(**overrides: Any) -> dict[str, Any]:
        now = clock.epoch
        base: dict[str, Any] = {
            "iss": mini_issuer.v2_issuer,
            "aud": CLIENT_ID,
            "tid": TENANT,
            "oid": ALICE_OID,
            "sub": "alice-subject",
            "name": "Alice",
            "preferred_username": "alice@contoso.test",
            "roles": ["JIT.Requester"],
            "scp": "user_impersonation",
            "azp": AZURE_CLI,
            "ver": "2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    return claims


@pytest.fixture
def v1_claims(v2_claims: MakeClaims) -> MakeClaims:
    """Claims of a valid v1 access token (`sts.windows.net` issuer, app id URI audience)."""

    def claims(**overrides: Any) -> dict[str, Any]:
        v1: dict[str, Any] = {
            "iss": f"https://sts.windows.net/{TENANT}/",
            "aud": APP_ID_URI,
            "ver": "1.0",
            "preferred_username": None,
            "azp": None,
            "upn": "alice@contoso.test",
            "unique_name": "alice@contoso.test",
            "appid": AZURE_CLI,
        }
        v1.update(overrides)
        return v2_claims(**v1)

    return claims


@pytest.fixture
def app_claims(v2_claims: MakeClaims) -> MakeClaims:
    """Claims of a v2 app-only token (client credentials) for the broker's API, as Entra issues them: the
    client's service principal is both `oid` and `sub`, application permissions come as `roles`, there is no
    `scp`, and `idtyp` is `app` when the API asks for that optional claim."""

    def claims(**overrides: Any) -> dict[str, Any]:
        app: dict[str, Any] = {
            "oid": DAEMON_SP_OID,
            "sub": DAEMON_SP_OID,
            "azp": DAEMON_APP_ID,
            "azpacr": "1",
            "idtyp": "app",
            "roles": ["JIT.Admin"],
            "scp": None,
            "name": None,
            "preferred_username": None,
        }
        app.update(overrides)
        return v2_claims(**app)

    return claims
