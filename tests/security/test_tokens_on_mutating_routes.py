"""Bad tokens and role-less tokens on the routes that change things: refused, and nothing changed.

`tests/identity/test_http_auth.py` proves each bad token is a 401 on the read routes; here every one of them
(expired, not yet valid, wrong audience, another app, wrong issuer or tenant, unknown kid, forged signature,
`alg: none`, HS256 with the public key, tampered payload) meets every route that writes, on a real grant,
and the tables and NSGs are proven untouched. A valid token without a role authenticates but changes nothing.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from lab.issuer import TokenIssuer
from lab.tokens import BAD_TOKENS, no_role
from tests.security.conftest import Caller, World, assert_refused


def writes(client: httpx.Client, grant_id: str) -> list[httpx.Response]:
    """One call to each route that may change the world, aimed at a real grant."""
    return [
        client.post("/api/v1/grants", json={"vm": "web-01", "duration": "PT30M"}),
        client.post("/api/v1/grants", json={"vm": "db-01", "port": 22, "source": "203.0.113.66"}),
        client.post(f"/api/v1/grants/{grant_id}/extend", json={"duration": "PT4H"}),
        client.delete(f"/api/v1/grants/{grant_id}"),
    ]


@pytest.fixture
def alices_grant(as_caller: Caller, world: World) -> dict[str, Any]:
    response = as_caller("alice").post("/api/v1/grants", json={"vm": "web-01", "duration": "PT30M"})
    assert response.status_code == 201, response.text
    grant: dict[str, Any] = response.json()
    return grant


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_a_bad_token_changes_nothing_on_any_writing_route(
    name: str, issuer: TokenIssuer, as_caller: Caller, world: World, alices_grant: dict[str, Any]
) -> None:
    token = BAD_TOKENS[name](issuer, "carol")  # even an admin's identity, were the token good
    client = as_caller("carol", token=token)
    with world.unchanged():
        for response in [*writes(client, alices_grant["id"]), client.get("/api/v1/vms")]:
            assert_refused(response, what=name)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthenticated"
            assert token.split(".")[1] not in response.text


def test_a_token_without_a_role_authenticates_but_changes_nothing(
    issuer: TokenIssuer, as_caller: Caller, world: World, alices_grant: dict[str, Any]
) -> None:
    client = as_caller("mallory", token=no_role(issuer, "mallory"))
    assert client.get("/api/v1/whoami").status_code == 200
    with world.unchanged():
        for response in [
            *writes(client, alices_grant["id"]),
            client.get("/api/v1/vms"),
            client.get(f"/api/v1/grants/{alices_grant['id']}"),
            client.get("/api/v1/grants", params={"all": "true"}),
        ]:
            assert_refused(response)
            assert response.status_code == 403
    assert as_caller("alice").get(f"/api/v1/grants/{alices_grant['id']}").json()["status"] == "active"


def test_a_requester_cannot_promote_itself_with_claims_it_was_not_issued(
    issuer: TokenIssuer, as_caller: Caller, world: World, alices_grant: dict[str, Any]
) -> None:
    # Signed by the lab (so it verifies) for bob, with a role the app does not define and a forged `wids`.
    token = issuer.token("bob", roles=["JIT.Requester", "JIT.admin", "Admin"], wids=["62e90394-69f5-4237"])
    client = as_caller("bob", token=token)
    with world.unchanged():
        for response in (
            client.delete(f"/api/v1/grants/{alices_grant['id']}"),
            client.post(f"/api/v1/grants/{alices_grant['id']}/extend", json={"duration": "PT1H"}),
            client.get("/api/v1/grants", params={"all": "true"}),
        ):
            assert_refused(response)
            assert response.status_code == 403
