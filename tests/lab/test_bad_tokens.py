"""Every bad-token helper yields a token that fails verification for exactly the reason it names.

Verification here is the reference check the broker must do (Entra's guidance, with PyJWT): keys from the
served JWKS, RS256 only, exact issuer, audience and tenant, times with leeway, an access token (one that names
its client in `azp`). Each bad token is also shown to pass once the one check it targets is relaxed, so it
fails for that reason and no other. Forbidden tokens pass all of that and fail only the reference
authorization: a user's delegated token (`scp`, no `idtyp: app`) granting the broker's scope.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import jwt
import pytest

from lab import tokens
from lab.issuer import LAB_DAEMON_APP, TokenIssuer


class WrongTenant(jwt.InvalidTokenError):
    """The token's `tid` is not the broker's tenant."""


class NotAnAccessToken(jwt.InvalidTokenError):
    """The token names no client application (`azp`): an ID token, not an access token."""


class NotAUserToken(Exception):
    """A valid token an application obtained for itself, not one a user delegated."""


class MissingScope(Exception):
    """A user's valid token that does not grant the broker's delegated scope."""


def reference_verify(
    issuer: TokenIssuer, token: str, *, relax: frozenset[str] = frozenset()
) -> dict[str, Any]:
    key = jwt.PyJWKClient(issuer.jwks_uri).get_signing_key_from_jwt(token).key
    options = {
        "require": ["exp", "iat", "nbf", "iss", "aud"],
        "verify_exp": "exp" not in relax,
        "verify_nbf": "nbf" not in relax,
        "verify_iat": "nbf" not in relax,
        "verify_aud": "aud" not in relax,
        "verify_iss": "iss" not in relax,
    }
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience=issuer.scenario.tenant.api_client_id,
        issuer=issuer.issuer_v2,
        options=options,  # type: ignore[arg-type]
        leeway=60,
    )
    if "tid" not in relax and claims.get("tid") != issuer.tenant_id:
        raise WrongTenant(f"token is for tenant {claims.get('tid')}")
    if "azp" not in relax and not claims.get("azp"):
        raise NotAnAccessToken("token names no client application")
    return claims


def reference_authorize(issuer: TokenIssuer, claims: dict[str, Any]) -> None:
    """Only a user's delegated token granting the broker's scope is acted on."""
    if claims.get("idtyp") == "app" or "scp" not in claims or claims.get("sub") == claims.get("oid"):
        raise NotAUserToken("an application's own token")
    if issuer.api_scope not in claims["scp"].split():
        raise MissingScope(f"scp is {claims['scp']!r}")


# name -> (the error a correct verifier raises, the checks that, relaxed, let it through; None: never)
EXPECTED: dict[str, tuple[type[Exception], frozenset[str] | None]] = {
    "expired": (jwt.ExpiredSignatureError, frozenset({"exp"})),
    "not_yet_valid": (jwt.ImmatureSignatureError, frozenset({"nbf"})),
    "wrong_audience": (jwt.InvalidAudienceError, frozenset({"aud"})),
    "another_app": (jwt.InvalidAudienceError, frozenset({"aud"})),
    "wrong_issuer": (jwt.InvalidIssuerError, frozenset({"iss"})),
    "wrong_tenant": (jwt.InvalidIssuerError, frozenset({"iss", "tid"})),
    "wrong_tid_claim": (WrongTenant, frozenset({"tid"})),
    "unknown_kid": (jwt.PyJWKClientError, None),
    "forged_signature": (jwt.InvalidSignatureError, None),
    "alg_none": (jwt.InvalidAlgorithmError, None),
    "hs256_with_public_key": (jwt.InvalidAlgorithmError, None),
    "tampered_payload": (jwt.InvalidSignatureError, None),
    "id_token": (NotAnAccessToken, frozenset({"azp"})),
}

FORBIDDEN: dict[str, type[Exception]] = {"app_only": NotAUserToken, "wrong_scope": MissingScope}


def test_every_bad_token_helper_has_an_expectation():
    assert set(EXPECTED) == set(tokens.BAD_TOKENS)


@pytest.mark.parametrize("name", sorted(tokens.BAD_TOKENS))
def test_bad_token_fails_verification_for_the_reason_it_names(issuer, name):
    error, relaxed = EXPECTED[name]
    token = tokens.BAD_TOKENS[name](issuer, "alice")

    with pytest.raises(error):
        reference_verify(issuer, token)

    if relaxed is not None:
        assert reference_verify(issuer, token, relax=relaxed)["oid"] == issuer.scenario.user("alice").oid


def test_a_good_token_passes_the_reference_verification(issuer):
    claims = reference_verify(issuer, issuer.token("alice"))

    assert claims["roles"] == ["JIT.Requester"]
    reference_authorize(issuer, claims)


def test_every_forbidden_token_helper_has_an_expectation():
    assert set(FORBIDDEN) == set(tokens.FORBIDDEN_TOKENS)
    assert not set(tokens.FORBIDDEN_TOKENS) & set(tokens.BAD_TOKENS)


@pytest.mark.parametrize("name", sorted(tokens.FORBIDDEN_TOKENS))
def test_forbidden_token_verifies_and_fails_only_authorization_for_the_reason_it_names(issuer, name):
    claims = reference_verify(issuer, tokens.FORBIDDEN_TOKENS[name].make(issuer, "alice"))

    with pytest.raises(FORBIDDEN[name]):
        reference_authorize(issuer, claims)


def test_app_only_token_carries_roles_but_no_user(issuer):
    claims = reference_verify(issuer, tokens.app_only(issuer))

    assert claims["idtyp"] == "app"
    assert claims["roles"] == ["JIT.Admin"]
    assert "scp" not in claims
    assert claims["sub"] == claims["oid"] == LAB_DAEMON_APP.principal_id
    assert claims["azp"] == LAB_DAEMON_APP.client_id


def test_no_role_token_verifies_but_carries_no_roles(issuer):
    claims = reference_verify(issuer, tokens.no_role(issuer, "carol"))

    assert claims["oid"] == issuer.scenario.user("carol").oid
    assert "roles" not in claims


def test_hs256_token_is_a_real_hmac_over_the_public_key(issuer):
    # The attack only means something if a verifier trusting the header would accept it: check the MAC.
    token = tokens.hs256_with_public_key(issuer, "alice")
    signing_input, _, signature = token.rpartition(".")
    expected = hmac.new(issuer.signing_key.public_pem(), signing_input.encode(), hashlib.sha256).digest()

    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": issuer.signing_key.kid}


def test_alg_none_token_has_no_signature_and_names_a_published_key(issuer):
    token = tokens.alg_none(issuer, "alice")

    assert token.endswith(".")
    assert jwt.get_unverified_header(token)["kid"] == issuer.signing_key.kid


def test_tampered_token_claims_an_admin_role_its_signature_does_not_cover(issuer):
    token = tokens.tampered_payload(issuer, "alice")

    claims = jwt.decode(token, options={"verify_signature": False})
    assert "JIT.Admin" in claims["roles"]
