"""Tokens at the broker's front door: the real app under uvicorn, real HTTP, the lab's issuer.

Every bad token is a 401 with the API's error shape, never a 5xx and never an echo of the token; a valid token
the broker may not act on (an application's own, a user's without the broker's scope) is a 403 with its own
code, even on whoami; a valid user token without a role authenticates (whoami works) but may not open
anything (403).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lab.broker import BrokerProcess
from lab.issuer import TokenIssuer
from lab.scenario import Scenario
from lab.tokens import BAD_TOKENS, FORBIDDEN_TOKENS, no_role


@pytest.fixture
def http(broker: BrokerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=broker.url, timeout=30) as client:
        yield client


def whoami(http: httpx.Client, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return http.get("/api/v1/whoami", headers=headers)


def assert_unauthenticated(response: httpx.Response, token: str | None = None) -> None:
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    if token:
        assert token not in response.text
        assert token.split(".")[1] not in response.text


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_bad_token_is_refused_with_401(name: str, issuer: TokenIssuer, http: httpx.Client) -> None:
    token = BAD_TOKENS[name](issuer, "alice")

    assert_unauthenticated(whoami(http, f"Bearer {token}"), token)
    assert_unauthenticated(http.get("/api/v1/grants", headers={"Authorization": f"Bearer {token}"}), token)


@pytest.mark.parametrize("name", sorted(FORBIDDEN_TOKENS))
def test_forbidden_token_is_refused_with_403_and_its_code(
    name: str, issuer: TokenIssuer, http: httpx.Client
) -> None:
    forbidden = FORBIDDEN_TOKENS[name]
    token = forbidden.make(issuer, "carol")  # even an admin's identity, were the token acceptable
    headers = {"Authorization": f"Bearer {token}"}

    for response in (
        http.get("/api/v1/whoami", headers=headers),
        http.get("/api/v1/grants", headers=headers),
        http.post("/api/v1/grants", headers=headers, json={"vm": "web-01", "port": 22}),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == forbidden.code
        assert response.json()["error"]["message"]
        assert token.split(".")[1] not in response.text


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer not-a-jwt", "Basic YWxpY2U6cHc="])
def test_missing_or_malformed_authorization_is_refused_with_401(
    authorization: str | None, http: httpx.Client
) -> None:
    assert_unauthenticated(whoami(http, authorization))


def test_valid_token_shows_who_the_broker_thinks_you_are(
    scenario: Scenario, issuer: TokenIssuer, http: httpx.Client
) -> None:
    token = issuer.token("carol")

    response = whoami(http, f"Bearer {token}")

    assert response.status_code == 200
    body = response.json()
    assert body["principal"] == scenario.user("carol").oid
    assert set(body["roles"]) == {"JIT.Requester", "JIT.Admin", "JIT.Approver"}
    assert body["address"] == "127.0.0.1"
    assert token not in response.text


def test_valid_token_without_a_role_authenticates_but_may_not_open_anything(
    issuer: TokenIssuer, http: httpx.Client
) -> None:
    token = no_role(issuer, "dave")
    authorization = {"Authorization": f"Bearer {token}"}

    me = http.get("/api/v1/whoami", headers=authorization)
    assert me.status_code == 200
    assert me.json()["roles"] == []

    grant = http.post("/api/v1/grants", headers=authorization, json={"vm": "web-01", "port": 22})
    assert grant.status_code == 403
    assert grant.json()["error"]["code"] in {"forbidden", "vm_not_eligible"}


def test_tokens_sent_to_the_broker_never_reach_its_logs(
    broker: BrokerProcess, issuer: TokenIssuer, http: httpx.Client
) -> None:
    sent = [make(issuer, "mallory") for make in BAD_TOKENS.values()] + [issuer.token("mallory")]
    sent += [forbidden.make(issuer, "mallory") for forbidden in FORBIDDEN_TOKENS.values()]
    for token in sent:
        whoami(http, f"Bearer {token}")
        http.post("/api/v1/grants", headers={"Authorization": f"Bearer {token}"}, json={"vm": "nope"})

    logs = "".join(
        path.read_text(errors="replace") for path in (broker.api_log, broker.sweeper_log) if path.exists()
    )
    for token in sent:
        assert token not in logs
        assert token.split(".")[1] not in logs
