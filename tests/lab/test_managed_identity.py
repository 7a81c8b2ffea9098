"""The broker's managed identity in the lab: azure-identity's own App Service protocol, served by the issuer.

The broker calls `DefaultAzureCredential().get_token(...)` in Azure and in the lab alike; with
`IDENTITY_ENDPOINT`, `IDENTITY_HEADER` and `AZURE_CLIENT_ID` set (as Azure Functions sets the first two), the
real credential gets its ARM token from the lab, and nothing reaches the network.
"""

from __future__ import annotations

import jwt
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import DefaultAzureCredential

from lab import tokens
from lab.issuer import ARM_AUDIENCE, IDENTITY_API_VERSION, LAB_BROKER_IDENTITY, SigningKey

ARM_SCOPE = "https://management.azure.com/.default"

# Other credentials in DefaultAzureCredential's chain that a developer's environment could switch on.
FOREIGN_CREDENTIAL_ENV = (
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_FEDERATED_TOKEN_FILE",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "AZURE_TOKEN_CREDENTIALS",
)


@pytest.fixture
def functions_env(identity_env, monkeypatch):
    for name in FOREIGN_CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    return identity_env


def test_default_azure_credential_gets_an_arm_token_from_the_lab(issuer, functions_env):
    issuer.clear_requests()
    credential = DefaultAzureCredential()
    try:
        access = credential.get_token(ARM_SCOPE)
    finally:
        credential.close()

    key = jwt.PyJWKClient(issuer.jwks_uri).get_signing_key_from_jwt(access.token).key
    claims = jwt.decode(
        access.token, key, algorithms=["RS256"], audience=ARM_AUDIENCE, issuer=issuer.issuer_v1
    )
    assert claims["appid"] == LAB_BROKER_IDENTITY.client_id
    assert claims["oid"] == LAB_BROKER_IDENTITY.principal_id
    assert claims["tid"] == issuer.tenant_id
    assert claims["idtyp"] == "app"
    assert access.expires_on == claims["exp"]
    assert ("GET", "/msi/token", 200) in issuer.requests()
    assert issuer.arm_token_validator(access.token)


def test_identity_endpoint_answers_the_app_service_protocol(issuer):
    response = requests.get(
        issuer.identity_endpoint,
        params={
            "resource": "https://management.azure.com/",
            "api-version": IDENTITY_API_VERSION,
            "client_id": LAB_BROKER_IDENTITY.client_id,
        },
        headers={"X-IDENTITY-HEADER": issuer.identity_header},
        timeout=5,
    )

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert body["token_type"] == "Bearer"
    assert body["resource"] == "https://management.azure.com/"
    assert (
        int(body["expires_on"])
        == jwt.decode(body["access_token"], options={"verify_signature": False})["exp"]
    )


@pytest.mark.parametrize(
    ("params", "header", "status"),
    [
        ({"resource": "https://management.azure.com/", "api-version": IDENTITY_API_VERSION}, "wrong", 401),
        ({"resource": "https://management.azure.com/", "api-version": IDENTITY_API_VERSION}, None, 401),
        ({"resource": "https://management.azure.com/", "api-version": "2017-09-01"}, "right", 400),
        ({"api-version": IDENTITY_API_VERSION}, "right", 400),
        (
            {
                "resource": "https://management.azure.com/",
                "api-version": IDENTITY_API_VERSION,
                "client_id": "00000000-0000-4000-8000-000000000000",
            },
            "right",
            400,
        ),
    ],
    ids=["wrong-header", "no-header", "old-api-version", "no-resource", "unknown-client-id"],
)
def test_identity_endpoint_refuses_what_app_service_refuses(issuer, params, header, status):
    headers = (
        {}
        if header is None
        else {"X-IDENTITY-HEADER": issuer.identity_header if header == "right" else header}
    )

    response = requests.get(issuer.identity_endpoint, params=params, headers=headers, timeout=5)

    assert response.status_code == status
    assert "access_token" not in response.json()


def test_default_azure_credential_fails_with_a_wrong_identity_header(issuer, functions_env, monkeypatch):
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-lab-header")
    credential = DefaultAzureCredential()
    try:
        with pytest.raises(ClientAuthenticationError):
            credential.get_token(ARM_SCOPE)
    finally:
        credential.close()


def test_arm_token_validator_accepts_only_arm_tokens_of_the_lab(issuer):
    assert issuer.arm_token_validator(issuer.managed_identity_token())
    assert issuer.arm_token_validator(issuer.managed_identity_token("https://management.azure.com"))
    assert not issuer.arm_token_validator(issuer.token("alice"))  # a token for the broker's API
    assert not issuer.arm_token_validator(issuer.managed_identity_token("https://vault.azure.net"))
    assert not issuer.arm_token_validator("not a token")


def test_arm_token_validator_refuses_flawed_arm_tokens(issuer):
    good = issuer.managed_identity_claims(ARM_AUDIENCE)
    header, payload, signature = issuer.sign(good).split(".")
    stranger = SigningKey.generate()

    assert issuer.arm_token_validator(issuer.sign(good))
    assert not issuer.arm_token_validator(issuer.sign(good | {"exp": good["iat"] - 7200}))
    assert not issuer.arm_token_validator(issuer.sign(good | {"tid": tokens.OTHER_TENANT_ID}))
    assert not issuer.arm_token_validator(issuer.sign(good | {"iss": "https://issuer.invalid/x/"}))
    assert not issuer.arm_token_validator(issuer.sign(good, key=stranger))
    assert not issuer.arm_token_validator(f"{header}.{payload}.{signature[::-1]}")
    assert not issuer.arm_token_validator(
        tokens.assemble({"alg": "none", "kid": issuer.signing_key.kid}, good, b"")
    )
