"""The lab token issuer speaks OpenID Connect over real HTTPS, and its tokens verify like Entra ID's."""

from __future__ import annotations

from typing import Any

import certifi
import jwt
import pytest
import requests

from lab.issuer import AZURE_CLI_CLIENT_ID, LAB_DAEMON_APP, ClientApp, TokenIssuer
from lab.scenario import Scenario
from lab.tls import LabCA

API_SCOPE = "api://jit-broker-lab/.default"  # the demo scenario's app ID URI


def verify(issuer: TokenIssuer, token: str, *, audience: str, iss: str) -> dict[str, Any]:
    """Verify the way the broker does: keys from the served JWKS, RS256 only, exact issuer and audience."""
    key = jwt.PyJWKClient(issuer.jwks_uri).get_signing_key_from_jwt(token).key
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience=audience,
        issuer=iss,
        options={"require": ["exp", "iat", "nbf", "iss", "aud"]},
    )
    return claims


def test_discovery_document_is_served_over_https_and_names_the_v2_endpoints(issuer, scenario):
    tenant = scenario.tenant.tenant_id
    response = requests.get(f"{issuer.url}/{tenant}/v2.0/.well-known/openid-configuration", timeout=5)

    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == f"{issuer.url}/{tenant}/v2.0"
    assert meta["jwks_uri"] == f"{issuer.url}/{tenant}/discovery/v2.0/keys"
    assert meta["token_endpoint"] == f"{issuer.url}/{tenant}/oauth2/v2.0/token"
    assert "RS256" in meta["id_token_signing_alg_values_supported"]


def test_v1_discovery_document_names_the_v1_issuer(issuer, scenario):
    tenant = scenario.tenant.tenant_id
    meta = requests.get(f"{issuer.url}/{tenant}/.well-known/openid-configuration", timeout=5).json()

    assert meta["issuer"] == f"{issuer.url}/{tenant}/"
    assert meta["issuer"] == issuer.issuer_v1


def test_a_client_that_does_not_trust_the_lab_ca_cannot_connect(issuer):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(issuer.discovery_url, timeout=5, verify=certifi.where())


def test_unknown_tenant_gets_an_entra_error(issuer):
    response = requests.get(
        f"{issuer.url}/11111111-1111-4111-8111-111111111111/v2.0/.well-known/openid-configuration", timeout=5
    )

    assert response.status_code == 400
    assert response.json()["error_description"].startswith("AADSTS90002")


def test_jwks_publishes_rsa_signing_keys_by_kid(issuer):
    keys = requests.get(issuer.jwks_uri, timeout=5).json()["keys"]

    assert keys
    for key in keys:
        assert key["kty"] == "RSA"
        assert key["use"] == "sig"
        assert key["kid"] and key["n"] and key["e"] == "AQAB"
    assert issuer.signing_key.kid in {key["kid"] for key in keys}


def test_v2_token_verifies_against_the_served_jwks_with_issuer_audience_and_tenant(issuer, scenario):
    token = issuer.token("alice")

    claims = verify(issuer, token, audience=scenario.tenant.api_client_id, iss=issuer.issuer_v2)

    alice = scenario.user("alice")
    assert claims["tid"] == scenario.tenant.tenant_id
    assert claims["oid"] == alice.oid
    assert claims["preferred_username"] == alice.upn
    assert claims["name"] == alice.display_name
    assert claims["roles"] == ["JIT.Requester"]
    assert claims["ver"] == "2.0"
    assert claims["azp"] == AZURE_CLI_CLIENT_ID
    assert claims["scp"] == "user_impersonation"
    assert claims["iat"] <= claims["nbf"] < claims["exp"]
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


def test_v2_token_is_refused_for_the_app_id_uri_audience(issuer, scenario):
    token = issuer.token("alice")

    with pytest.raises(jwt.InvalidAudienceError):
        verify(issuer, token, audience=scenario.tenant.app_id_uri, iss=issuer.issuer_v2)


def test_v1_token_verifies_with_the_v1_issuer_and_the_app_id_uri(issuer, scenario):
    token = issuer.token("bob", version="1")

    claims = verify(issuer, token, audience=scenario.tenant.app_id_uri, iss=issuer.issuer_v1)

    bob = scenario.user("bob")
    assert claims["ver"] == "1.0"
    assert claims["upn"] == claims["unique_name"] == bob.upn
    assert claims["oid"] == bob.oid
    assert "preferred_username" not in claims
    with pytest.raises(jwt.InvalidIssuerError):
        verify(issuer, token, audience=scenario.tenant.app_id_uri, iss=issuer.issuer_v2)


def test_user_without_app_roles_gets_no_roles_claim(issuer, scenario):
    claims = verify(
        issuer, issuer.token("dave"), audience=scenario.tenant.api_client_id, iss=issuer.issuer_v2
    )

    assert "roles" not in claims


def test_claim_overrides_replace_and_drop_claims(issuer, scenario):
    token = issuer.token("carol", roles=["JIT.Admin"], scp=None)

    claims = verify(issuer, token, audience=scenario.tenant.api_client_id, iss=issuer.issuer_v2)
    assert claims["roles"] == ["JIT.Admin"]
    assert "scp" not in claims


def sign_in(issuer: TokenIssuer, scenario: Scenario, **form: str) -> requests.Response:
    tenant = scenario.tenant.tenant_id
    return requests.post(f"{issuer.url}/{tenant}/oauth2/v2.0/token", data=form, timeout=5)


def test_token_endpoint_signs_in_a_scenario_user_by_name_or_upn(issuer, scenario):
    for username in ("alice", "alice@contoso.test"):
        response = sign_in(issuer, scenario, grant_type="password", username=username, scope=API_SCOPE)

        assert response.status_code == 200
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] > 0
        claims = verify(
            issuer, body["access_token"], audience=scenario.tenant.api_client_id, iss=issuer.issuer_v2
        )
        assert claims["oid"] == scenario.user("alice").oid


def test_token_endpoint_uses_the_calling_client_as_azp(issuer, scenario):
    client = "c11e0000-0000-4000-8000-000000000001"
    response = sign_in(
        issuer,
        scenario,
        grant_type="password",
        username="bob",
        scope=f"{scenario.tenant.api_client_id}/.default",
        client_id=client,
    )

    token = response.json()["access_token"]
    assert (
        verify(issuer, token, audience=scenario.tenant.api_client_id, iss=issuer.issuer_v2)["azp"] == client
    )


@pytest.mark.parametrize(
    ("form", "error", "code"),
    [
        (
            {"grant_type": "password", "username": "eve", "scope": "api://jit-broker-lab/.default"},
            "invalid_grant",
            50034,
        ),
        (
            {"grant_type": "password", "username": "alice", "scope": "api://nobody/.default"},
            "invalid_resource",
            500011,
        ),
        (
            {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": "x"},
            "unsupported_grant_type",
            70003,
        ),
        (
            {"grant_type": "client_credentials", "client_id": AZURE_CLI_CLIENT_ID, "scope": API_SCOPE},
            "unauthorized_client",
            700016,
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_id": LAB_DAEMON_APP.client_id,
                "scope": "https://management.azure.com/.default",
            },
            "invalid_resource",
            500011,
        ),
    ],
    ids=["unknown-user", "unknown-resource", "unsupported-grant", "unknown-client-app", "app-for-arm"],
)
def test_token_endpoint_refuses_with_entra_errors(issuer, scenario, form, error, code):
    response = sign_in(issuer, scenario, **form)

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}:")
    assert "access_token" not in body


def test_rotated_keys_both_verify_until_the_old_ones_retire(scenario, lab_ca: LabCA):
    with TokenIssuer(scenario, lab_ca) as issuer:
        audience, iss = scenario.tenant.api_client_id, issuer.issuer_v2
        old_kid = issuer.signing_key.kid
        old_token = issuer.token("alice")

        new_kid = issuer.rotate_keys()
        new_token = issuer.token("alice")

        assert new_kid != old_kid
        assert jwt.get_unverified_header(new_token)["kid"] == new_kid
        assert {k["kid"] for k in requests.get(issuer.jwks_uri, timeout=5).json()["keys"]} == {
            old_kid,
            new_kid,
        }
        assert verify(issuer, old_token, audience=audience, iss=iss)["oid"]
        assert verify(issuer, new_token, audience=audience, iss=iss)["oid"]

        issuer.retire_old_keys()

        assert [k["kid"] for k in requests.get(issuer.jwks_uri, timeout=5).json()["keys"]] == [new_kid]
        assert verify(issuer, new_token, audience=audience, iss=iss)["oid"]
        with pytest.raises(jwt.PyJWKClientError):
            verify(issuer, old_token, audience=audience, iss=iss)


def test_request_log_counts_what_was_served(scenario, lab_ca: LabCA):
    with TokenIssuer(scenario, lab_ca) as issuer:
        client = jwt.PyJWKClient(issuer.jwks_uri, cache_jwk_set=True)
        for _ in range(3):
            client.get_signing_key_from_jwt(issuer.token("alice"))
        requests.get(issuer.discovery_url, timeout=5)

        served = issuer.requests()
        assert [path for _, path, _ in served].count(f"/{issuer.tenant_id}/discovery/v2.0/keys") == 1
        assert ("GET", f"/{issuer.tenant_id}/v2.0/.well-known/openid-configuration", 200) in served
        issuer.clear_requests()
        assert issuer.requests() == []


def test_a_stopped_issuer_answers_no_more(scenario, lab_ca: LabCA):
    issuer = TokenIssuer(scenario, lab_ca).start()
    url = issuer.discovery_url
    assert requests.get(url, timeout=5).status_code == 200

    issuer.stop()

    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)


def test_user_tokens_delegate_the_apis_scope_in_v1_and_v2(issuer, scenario):
    for version in ("1", "2"):
        claims = jwt.decode(issuer.token("alice", version=version), options={"verify_signature": False})

        assert claims["scp"] == "user_impersonation"
        assert "idtyp" not in claims  # Entra names user tokens only when the API asks (include_user_token)
        assert claims["sub"] != claims["oid"]


def test_the_delegated_scope_is_the_issuers_to_choose(scenario, lab_ca: LabCA):
    with TokenIssuer(scenario, lab_ca, api_scope="access_as_user") as issuer:
        token = sign_in(issuer, scenario, grant_type="password", username="bob", scope=API_SCOPE)

        claims = verify(
            issuer,
            token.json()["access_token"],
            audience=scenario.tenant.api_client_id,
            iss=issuer.issuer_v2,
        )
        assert claims["scp"] == "access_as_user"


@pytest.mark.parametrize("version", ["1", "2"])
def test_app_only_tokens_are_shaped_like_entras_client_credentials_tokens(issuer, scenario, version):
    audience = scenario.tenant.api_client_id if version == "2" else scenario.tenant.app_id_uri
    iss = issuer.issuer_v2 if version == "2" else issuer.issuer_v1

    claims = verify(issuer, issuer.app_token(version=version), audience=audience, iss=iss)

    assert claims["idtyp"] == "app"
    assert claims["roles"] == ["JIT.Admin"]
    assert "scp" not in claims
    assert claims["oid"] == claims["sub"] == LAB_DAEMON_APP.principal_id
    assert claims["azp" if version == "2" else "appid"] == LAB_DAEMON_APP.client_id
    assert claims["ver"] == f"{version}.0"
    assert not {"name", "preferred_username", "upn"} & set(claims)


def test_app_token_overrides_replace_and_drop_claims(issuer):
    claims = jwt.decode(
        issuer.app_token(idtyp=None, roles=["JIT.Requester"]), options={"verify_signature": False}
    )

    assert "idtyp" not in claims
    assert claims["roles"] == ["JIT.Requester"]


def test_token_endpoint_issues_app_only_tokens_by_client_credentials(issuer, scenario):
    response = sign_in(
        issuer,
        scenario,
        grant_type="client_credentials",
        client_id=LAB_DAEMON_APP.client_id,
        client_secret="not-checked-in-the-lab",
        scope=f"{scenario.tenant.app_id_uri}/.default",
    )

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert "scope" not in body
    claims = verify(
        issuer, body["access_token"], audience=scenario.tenant.api_client_id, iss=issuer.issuer_v2
    )
    assert claims["idtyp"] == "app"
    assert claims["azp"] == LAB_DAEMON_APP.client_id
    assert "scp" not in claims


def test_the_labs_client_applications_are_configurable(scenario, lab_ca: LabCA):
    reader = ClientApp("c0de0000-0000-4000-8000-00000000c0de", "c0de0000-0000-4000-8000-0000000050b1", ())
    with TokenIssuer(scenario, lab_ca, client_apps=[reader]) as issuer:
        form = {"grant_type": "client_credentials", "scope": API_SCOPE}
        assert sign_in(issuer, scenario, client_id=LAB_DAEMON_APP.client_id, **form).status_code == 400
        response = sign_in(issuer, scenario, client_id=reader.client_id, **form)

        claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
        assert claims["oid"] == reader.principal_id
        assert "roles" not in claims
