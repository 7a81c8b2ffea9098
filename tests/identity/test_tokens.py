"""What the broker accepts as proof of identity: one tenant's Entra ID tokens for this API, nothing else.

Every token here is signed by (or forged against) a real issuer serving its keys over HTTPS.
"""

from __future__ import annotations

import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from jitbroker.errors import NotAuthenticated
from jitbroker.identity import Principal, TokenVerifier, bearer_token
from tests.identity.conftest import MakeClaims, MakeVerifier
from tests.identity.minissuer import (
    ALICE_OID,
    APP_ID_URI,
    CLIENT_ID,
    OTHER_APP_ID,
    OTHER_TENANT,
    TENANT,
    FakeClock,
    MiniIssuer,
    b64url,
    b64url_json,
)


def refused(verifier: TokenVerifier, token: str) -> str:
    """The message of the NotAuthenticated the verifier raises for `token`."""
    with pytest.raises(NotAuthenticated) as caught:
        verifier.verify(token)
    assert caught.value.status == 401
    return caught.value.message


# --- what is accepted --------------------------------------------------------------------------------------


def test_valid_v2_token_yields_the_callers_principal(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    principal = verifier.verify(mini_issuer.sign(v2_claims()))

    assert principal == Principal(
        oid=ALICE_OID,
        name="Alice",
        upn="alice@contoso.test",
        tenant_id=TENANT,
        roles=frozenset({"JIT.Requester"}),
    )
    assert principal.has_role("JIT.Requester")
    assert not principal.has_role("JIT.Admin")


def test_admin_role_comes_from_the_roles_claim(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    principal = verifier.verify(mini_issuer.sign(v2_claims(roles=["JIT.Requester", "JIT.Admin"])))

    assert principal.roles == frozenset({"JIT.Requester", "JIT.Admin"})
    assert principal.has_role("JIT.Admin")


def test_valid_token_without_roles_verifies_and_the_principal_says_it_has_none(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    principal = verifier.verify(mini_issuer.sign(v2_claims(roles=None)))

    assert principal.oid == ALICE_OID
    assert principal.roles == frozenset()
    assert not principal.has_role("JIT.Requester")


def test_principal_is_keyed_by_oid_not_by_mutable_names(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    renamed = verifier.verify(
        mini_issuer.sign(v2_claims(name="Alice Renamed", preferred_username="a@new.test"))
    )
    original = verifier.verify(mini_issuer.sign(v2_claims()))

    assert renamed.oid == original.oid == ALICE_OID
    assert renamed.upn == "a@new.test"


def test_v1_token_is_refused_unless_v1_is_configured(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims
) -> None:
    message = refused(verifier, mini_issuer.sign(v1_claims()))

    assert "v1.0" in message


@pytest.mark.parametrize("versions", [frozenset({"1"}), frozenset({"1", "2"}), frozenset({1, 2})])
def test_v1_token_is_accepted_when_v1_is_configured(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims, versions: frozenset[str]
) -> None:
    principal = make_verifier(token_versions=versions).verify(mini_issuer.sign(v1_claims()))

    assert principal.oid == ALICE_OID
    assert principal.upn == "alice@contoso.test"


def test_v2_token_is_refused_when_only_v1_is_configured(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    message = refused(make_verifier(token_versions=frozenset({"1"})), mini_issuer.sign(v2_claims()))

    assert "v2.0" in message


def test_lab_can_name_its_own_v1_issuer(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims
) -> None:
    lab_v1_issuer = f"{mini_issuer.url}/{TENANT}/"
    verifier = make_verifier(token_versions=frozenset({"1", "2"}), v1_issuer=lab_v1_issuer)

    assert verifier.verify(mini_issuer.sign(v1_claims(iss=lab_v1_issuer))).oid == ALICE_OID
    refused(verifier, mini_issuer.sign(v1_claims()))  # the real sts.windows.net form is no longer trusted


def test_each_token_version_must_carry_its_own_audience(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims, v2_claims: MakeClaims
) -> None:
    verifier = make_verifier(token_versions=frozenset({"1", "2"}))

    assert "another application" in refused(verifier, mini_issuer.sign(v1_claims(aud=CLIENT_ID)))
    assert "another application" in refused(verifier, mini_issuer.sign(v2_claims(aud=APP_ID_URI)))


def test_version_claim_must_agree_with_the_issuer(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims, v2_claims: MakeClaims
) -> None:
    verifier = make_verifier(token_versions=frozenset({"1", "2"}))

    refused(verifier, mini_issuer.sign(v2_claims(ver="1.0")))
    refused(verifier, mini_issuer.sign(v1_claims(ver="2.0")))


# --- what is refused ---------------------------------------------------------------------------------------


def test_missing_token_is_refused(verifier: TokenVerifier) -> None:
    assert "no access token" in refused(verifier, "")


def test_alg_none_is_refused(verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims) -> None:
    header = b64url_json({"alg": "none", "typ": "JWT", "kid": mini_issuer.current_kid})
    unsigned = f"{header}.{b64url_json(v2_claims())}."

    assert "RS256" in refused(verifier, unsigned)


def test_hs256_signed_with_the_issuers_public_key_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    forged = mini_issuer.hs256_with_public_key(v2_claims())

    assert "RS256" in refused(verifier, forged)


def test_other_rsa_algorithms_are_refused_even_with_the_real_key(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    kid = mini_issuer.current_kid
    for algorithm in ("RS512", "PS256"):
        token = jwt.encode(v2_claims(), mini_issuer.keys[kid], algorithm=algorithm, headers={"kid": kid})
        refused(verifier, token)


def test_expired_token_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    token = mini_issuer.sign(v2_claims(iat=clock.epoch - 7200, nbf=clock.epoch - 7200, exp=clock.epoch - 61))

    assert "expired" in refused(verifier, token)


def test_expiry_allows_the_configured_leeway_and_no_more(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    token = mini_issuer.sign(v2_claims(exp=clock.epoch + 10))

    clock.advance(10 + 60)
    assert verifier.verify(token).oid == ALICE_OID
    clock.advance(1)
    assert "expired" in refused(verifier, token)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_token_not_yet_valid_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock, claim: str
) -> None:
    token = mini_issuer.sign(v2_claims(**{claim: clock.epoch + 61}))

    assert "not valid yet" in refused(verifier, token)
    clock.advance(1)
    assert verifier.verify(token).oid == ALICE_OID


@pytest.mark.parametrize("claim", ["exp", "iat", "oid"])
def test_token_missing_a_required_claim_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, claim: str
) -> None:
    refused(verifier, mini_issuer.sign(v2_claims(**{claim: None})))


@pytest.mark.parametrize("value", ["soon", True, [1]])
def test_expiry_that_is_not_a_number_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, value: object
) -> None:
    refused(verifier, mini_issuer.sign(v2_claims(exp=value)))


def test_wrong_audience_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    assert "another application" in refused(
        verifier, mini_issuer.sign(v2_claims(aud="https://graph.microsoft.com"))
    )
    refused(verifier, mini_issuer.sign(v2_claims(aud=[CLIENT_ID, "https://graph.microsoft.com"])))


def test_token_for_another_app_in_the_same_tenant_is_refused(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims, v2_claims: MakeClaims
) -> None:
    verifier = make_verifier(token_versions=frozenset({"1", "2"}))

    refused(verifier, mini_issuer.sign(v2_claims(aud=OTHER_APP_ID)))
    refused(verifier, mini_issuer.sign(v1_claims(aud=f"api://{OTHER_APP_ID}")))
    refused(verifier, mini_issuer.sign(v1_claims(aud="https://management.azure.com/")))


@pytest.mark.parametrize(
    "issuer",
    [
        "https://login.microsoftonline.com/{tenant}/v2.0",  # the real cloud, not the configured authority
        "{url}/{tenant}/v2.0/",  # trailing slash: not exactly the configured form
        "{url}/{tenant}",
        "{url}/common/v2.0",
        "https://evil.example/{tenant}/v2.0",
        "",
    ],
)
def test_wrong_issuer_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, issuer: str
) -> None:
    iss = issuer.format(url=mini_issuer.url, tenant=TENANT)

    assert "not issued by" in refused(verifier, mini_issuer.sign(v2_claims(iss=iss)))


def test_token_from_another_tenant_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    other_tenant_issuer = f"{mini_issuer.url}/{OTHER_TENANT}/v2.0"

    refused(verifier, mini_issuer.sign(v2_claims(iss=other_tenant_issuer, tid=OTHER_TENANT)))
    assert "another Entra ID tenant" in refused(verifier, mini_issuer.sign(v2_claims(tid=OTHER_TENANT)))
    refused(verifier, mini_issuer.sign(v2_claims(tid=None)))


def test_tampered_payload_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    header, _, signature = mini_issuer.sign(v2_claims()).split(".")
    promoted = b64url_json(v2_claims(roles=["JIT.Requester", "JIT.Admin"]))

    assert "signature" in refused(verifier, f"{header}.{promoted}.{signature}")


def test_token_signed_by_another_key_under_a_published_kid_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    attacker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        v2_claims(), attacker_key, algorithm="RS256", headers={"kid": mini_issuer.current_kid}
    )

    assert "signature" in refused(verifier, forged)


def test_token_without_a_kid_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    token = jwt.encode(v2_claims(), mini_issuer.keys[mini_issuer.current_kid], algorithm="RS256")

    assert "kid" in refused(verifier, token)


@pytest.mark.parametrize("oid", ["", "alice", "a11ce000-0000-4000-8000-00000000000", 42])
def test_oid_must_be_an_object_id(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, oid: object
) -> None:
    assert "oid" in refused(verifier, mini_issuer.sign(v2_claims(oid=oid)))


@pytest.mark.parametrize("roles", ["JIT.Admin", [["JIT.Admin"]], {"JIT.Admin": True}])
def test_malformed_roles_claim_is_refused_not_guessed(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, roles: object
) -> None:
    refused(verifier, mini_issuer.sign(v2_claims(roles=roles)))


@pytest.mark.parametrize(
    "garbage",
    [
        "abc",
        "a.b.c",
        "...",
        "Bearer",
        b64url_json({"alg": "RS256"}),
        f"{b64url_json({'alg': 'RS256', 'kid': 'k'})}.{b64url(b'not json')}.{b64url(b'sig')}",
        f"{b64url(b'[1,2]')}.{b64url_json({})}.",
        "\x00\x01\x02",
        "eyJ" + "A" * 20_000,
    ],
)
def test_garbage_is_refused(verifier: TokenVerifier, garbage: str) -> None:
    refused(verifier, garbage)


def test_payload_that_is_not_an_object_is_refused(verifier: TokenVerifier, mini_issuer: MiniIssuer) -> None:
    kid = mini_issuer.current_kid
    token = jwt.api_jws.encode(
        json.dumps([1, 2]).encode(), mini_issuer.keys[kid], "RS256", headers={"kid": kid}
    )

    refused(verifier, token)


# --- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"authority_host": "http://127.0.0.1:1"},
        {"token_versions": frozenset()},
        {"token_versions": frozenset({"3"})},
        {"tenant_id": ""},
        {"api_client_id": " x"},
        {"leeway_seconds": -1},
    ],
)
def test_verifier_refuses_unsafe_or_incomplete_configuration(
    make_verifier: MakeVerifier, overrides: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        make_verifier(**overrides)


def test_v1_issuer_may_not_equal_the_v2_issuer(make_verifier: MakeVerifier, mini_issuer: MiniIssuer) -> None:
    with pytest.raises(ValueError):
        make_verifier(token_versions=frozenset({"1", "2"}), v1_issuer=mini_issuer.v2_issuer)


# --- the Authorization header -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("BEARER   abc.def.ghi  ", "abc.def.ghi"),
        ("Bearer abc.def.", "abc.def."),
    ],
)
def test_bearer_token_is_taken_from_the_authorization_header(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "abc.def.ghi",
        "Bearer a b",
        "Bearer a\nb",
    ],
)
def test_authorization_header_without_a_bearer_token_is_refused(header: str | None) -> None:
    with pytest.raises(NotAuthenticated):
        bearer_token(header)


def test_oversized_bearer_token_is_refused_before_parsing() -> None:
    with pytest.raises(NotAuthenticated):
        bearer_token("Bearer " + "a" * 20_000)
