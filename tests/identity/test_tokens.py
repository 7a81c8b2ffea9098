"""What the broker accepts as proof of identity: one tenant's Entra ID tokens for this API, nothing else.

Every token here is signed by (or forged against) a real issuer serving its keys over HTTPS.
"""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from jitbroker.config import Settings
from jitbroker.errors import JitError, NotAuthenticated
from jitbroker.identity import Principal, TokenVerifier, bearer_token
from tests.identity.conftest import MakeClaims, MakeVerifier
from tests.identity.minissuer import (
    ALICE_OID,
    APP_ID_URI,
    AZURE_CLI,
    CLIENT_ID,
    DAEMON_APP_ID,
    DAEMON_SP_OID,
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


def forbidden(verifier: TokenVerifier, token: str, code: str) -> str:
    """The message of the 403 the verifier raises for a verified token it may not accept; checks its code."""
    with pytest.raises(JitError) as caught:
        verifier.verify(token)
    assert (caught.value.status, caught.value.code) == (403, code), caught.value.message
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


def test_v2_tokens_carry_the_client_id_as_audience_and_nothing_else(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    verifier = make_verifier(token_versions=frozenset({"1", "2"}))

    assert "another application" in refused(verifier, mini_issuer.sign(v2_claims(aud=APP_ID_URI)))
    assert "another application" in refused(verifier, mini_issuer.sign(v2_claims(aud=f"{APP_ID_URI}/")))


@pytest.mark.parametrize("audience", [APP_ID_URI, f"{APP_ID_URI}/", CLIENT_ID])
def test_v1_tokens_may_carry_the_app_id_uri_or_the_client_id_as_audience(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims, audience: str
) -> None:
    # Entra's v1 `aud` is whatever the client asked for: an app ID URI (with or without a trailing slash) or
    # the API's client id (optional claims reference, `aud` additionalProperties).
    verifier = make_verifier(token_versions=frozenset({"1"}))

    assert verifier.verify(mini_issuer.sign(v1_claims(aud=audience))).oid == ALICE_OID


def test_v1_tokens_are_verified_against_the_v1_metadatas_keys(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims, v2_claims: MakeClaims
) -> None:
    v2_only = mini_issuer.current_kid
    v1_only = mini_issuer.add_key(publish=False)
    mini_issuer.published_v1 = [v1_only]
    verifier = make_verifier(token_versions=frozenset({"1", "2"}))

    assert verifier.verify(mini_issuer.sign(v1_claims(), kid=v1_only)).oid == ALICE_OID
    assert verifier.verify(mini_issuer.sign(v2_claims(), kid=v2_only)).oid == ALICE_OID
    # A key is trusted only for the issuer whose metadata publishes it.
    assert "does not publish" in refused(verifier, mini_issuer.sign(v1_claims(), kid=v2_only))
    assert "does not publish" in refused(verifier, mini_issuer.sign(v2_claims(), kid=v1_only))
    assert mini_issuer.count(mini_issuer.v1_jwks_path) >= 1


def test_only_the_configured_versions_keys_are_fetched(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims, v2_claims: MakeClaims
) -> None:
    verifier.verify(mini_issuer.sign(v2_claims()))
    refused(verifier, mini_issuer.sign(v1_claims()))

    assert mini_issuer.count(mini_issuer.v1_metadata_path) == 0
    assert mini_issuer.count(mini_issuer.v1_jwks_path) == 0


def test_version_claim_must_agree_with_the_issuer(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims, v2_claims: MakeClaims
) -> None:
    verifier = make_verifier(token_versions=frozenset({"1", "2"}))

    refused(verifier, mini_issuer.sign(v2_claims(ver="1.0")))
    refused(verifier, mini_issuer.sign(v1_claims(ver="2.0")))


# --- delegated user tokens only -----------------------------------------------------------------------------


def test_app_only_token_is_refused_even_with_the_admin_role(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, app_claims: MakeClaims
) -> None:
    message = forbidden(verifier, mini_issuer.sign(app_claims()), "user_token_required")

    assert "application" in message


@pytest.mark.parametrize(
    "overrides",
    [
        {"idtyp": None},  # the API did not ask for `idtyp`: no `scp` is what gives it away
        {"idtyp": None, "sub": "not-the-oid"},
        {"idtyp": None, "roles": None},
        {"scp": "user_impersonation"},  # `idtyp: app` wins over anything else the token says
        {"idtyp": None, "scp": "user_impersonation"},  # `sub` == `oid`: a service principal, not a user
        {"idtyp": "device"},
    ],
)
def test_app_only_tokens_are_recognised_in_every_shape(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, app_claims: MakeClaims, overrides: dict[str, object]
) -> None:
    forbidden(verifier, mini_issuer.sign(app_claims(**overrides)), "user_token_required")


def test_app_only_v1_token_is_refused(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims
) -> None:
    verifier = make_verifier(token_versions=frozenset({"1"}))
    token = v1_claims(
        oid=DAEMON_SP_OID, sub=DAEMON_SP_OID, appid=DAEMON_APP_ID, appidacr="2", idtyp="app", scp=None
    )

    forbidden(verifier, mini_issuer.sign(token), "user_token_required")


@pytest.mark.parametrize("scp", ["User.Read", "user_impersonation_all", "USER_IMPERSONATION", ""])
def test_user_token_without_the_brokers_scope_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, scp: str
) -> None:
    message = forbidden(verifier, mini_issuer.sign(v2_claims(scp=scp)), "insufficient_scope")

    assert "user_impersonation" in message


def test_scope_is_found_among_space_separated_scopes(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    token = mini_issuer.sign(v2_claims(scp="User.Read user_impersonation offline_access"))

    assert verifier.verify(token).oid == ALICE_OID


def test_the_delegated_scope_is_configurable(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    verifier = make_verifier(api_scope="access_as_user")

    assert verifier.verify(mini_issuer.sign(v2_claims(scp="access_as_user"))).oid == ALICE_OID
    forbidden(verifier, mini_issuer.sign(v2_claims()), "insufficient_scope")


@pytest.mark.parametrize("scope", ["", "two words", "api://jit-broker-test/user_impersonation"])
def test_the_delegated_scope_must_be_a_scope_value(make_verifier: MakeVerifier, scope: str) -> None:
    with pytest.raises(ValueError):
        make_verifier(api_scope=scope)


@pytest.mark.parametrize("role", ["JIT.Requester", "JIT.Admin"])
def test_a_user_token_may_carry_a_broker_role_instead_of_the_scope(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, role: str
) -> None:
    verifier = make_verifier(roles_instead_of_scope=("JIT.Requester", "JIT.Admin"))

    assert verifier.verify(mini_issuer.sign(v2_claims(scp="User.Read", roles=[role]))).roles == {role}
    explicit_user = v2_claims(scp=None, idtyp="user", roles=[role])
    assert verifier.verify(mini_issuer.sign(explicit_user)).oid == ALICE_OID
    forbidden(
        verifier, mini_issuer.sign(v2_claims(scp="User.Read", roles=["JIT.Other"])), "insufficient_scope"
    )
    forbidden(verifier, mini_issuer.sign(v2_claims(scp=None, idtyp="user", roles=None)), "insufficient_scope")


def test_roles_stand_in_for_the_scope_only_when_configured(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    forbidden(verifier, mini_issuer.sign(v2_claims(scp="User.Read")), "insufficient_scope")


def test_a_role_does_not_make_an_app_only_token_acceptable(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, app_claims: MakeClaims
) -> None:
    verifier = make_verifier(roles_instead_of_scope=("JIT.Requester", "JIT.Admin"))

    forbidden(verifier, mini_issuer.sign(app_claims(idtyp=None)), "user_token_required")


def test_an_id_token_is_not_an_access_token(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    # An ID token issued to the broker's app registration has its client id as `aud`, the tenant's v2
    # issuer, `oid` and `roles`, but no `azp` and no `scp` (ID token claims reference).
    id_token = v2_claims(azp=None, scp=None, nonce="n-0S6_WzA2Mj", sid="c0ffee00-0000-4000-8000-000000000001")

    assert "not an access token" in refused(verifier, mini_issuer.sign(id_token))


@pytest.mark.parametrize(
    "overrides",
    [{"azp": None}, {"azp": 42}, {"azp": "the-cli"}, {"scp": ["user_impersonation"]}, {"idtyp": 1}],
)
def test_malformed_client_scope_or_type_claims_are_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, overrides: dict[str, object]
) -> None:
    refused(verifier, mini_issuer.sign(v2_claims(**overrides)))


def test_v1_token_must_name_its_client_in_appid(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims
) -> None:
    verifier = make_verifier(token_versions=frozenset({"1"}))

    assert "not an access token" in refused(verifier, mini_issuer.sign(v1_claims(appid=None)))
    assert "not an access token" in refused(verifier, mini_issuer.sign(v1_claims(appid=None, azp=AZURE_CLI)))


# --- client applications ------------------------------------------------------------------------------------


def test_any_client_application_is_accepted_by_default(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    assert verifier.verify(mini_issuer.sign(v2_claims(azp=OTHER_APP_ID))).oid == ALICE_OID


def test_only_allowed_client_applications_are_accepted_when_listed(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v1_claims: MakeClaims, v2_claims: MakeClaims
) -> None:
    verifier = make_verifier(token_versions=frozenset({"1", "2"}), allowed_client_apps=[AZURE_CLI.upper()])

    assert verifier.verify(mini_issuer.sign(v2_claims())).oid == ALICE_OID
    assert verifier.verify(mini_issuer.sign(v1_claims())).oid == ALICE_OID
    forbidden(verifier, mini_issuer.sign(v2_claims(azp=OTHER_APP_ID)), "client_app_not_allowed")
    forbidden(verifier, mini_issuer.sign(v1_claims(appid=OTHER_APP_ID)), "client_app_not_allowed")
    # v2 tokens name the client in `azp`, v1 in `appid`: the other version's claim is not looked at.
    forbidden(
        verifier, mini_issuer.sign(v2_claims(azp=OTHER_APP_ID, appid=AZURE_CLI)), "client_app_not_allowed"
    )


@pytest.mark.parametrize("clients", [["the-cli"], [" "], [f"{AZURE_CLI},{OTHER_APP_ID}"]])
def test_allowed_client_applications_must_be_client_ids(
    make_verifier: MakeVerifier, clients: list[str]
) -> None:
    with pytest.raises(ValueError):
        make_verifier(allowed_client_apps=clients)


def test_the_brokers_settings_configure_scope_roles_clients_and_versions(
    mini_issuer: MiniIssuer, v1_claims: MakeClaims, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    sample = Path(__file__).resolve().parents[2] / "local.settings.sample.json"
    env = {
        **json.loads(sample.read_text())["Values"],
        "JIT_AUTHORITY_HOST": mini_issuer.url,
        "JIT_TENANT_ID": TENANT,
        "JIT_API_CLIENT_ID": CLIENT_ID,
        "JIT_API_APP_ID_URI": APP_ID_URI,
        "JIT_TOKEN_VERSIONS": "1,2",
        "JIT_API_SCOPE": "access_as_user",
        "JIT_ALLOWED_CLIENT_APPS": AZURE_CLI,
        "JIT_ALLOWED_SCOPES": "/subscriptions/00000000-0000-4000-8000-0000000000a1",
        "AZURE_CLIENT_ID": "",
    }
    verifier = TokenVerifier.from_settings(Settings.from_env(env), clock=clock)

    assert verifier.verify(mini_issuer.sign(v2_claims(scp="access_as_user", roles=None))).oid == ALICE_OID
    assert verifier.verify(mini_issuer.sign(v1_claims(scp="User.Read", roles=["JIT.Admin"]))).oid == ALICE_OID
    forbidden(verifier, mini_issuer.sign(v2_claims(roles=None)), "insufficient_scope")
    forbidden(verifier, mini_issuer.sign(v2_claims(azp=OTHER_APP_ID)), "client_app_not_allowed")


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
