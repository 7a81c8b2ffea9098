"""The verifier against the lab's Entra ID stand-in, configured exactly as the broker is in the lab.

These prove the two agree on the wire (discovery, JWKS, claim shapes, v1 and v2) and that every bad token the
security suite uses is refused for the reason it names, and every forbidden one (an application's own token, a
user's token without the broker's scope) with the 403 code it names.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jitbroker.errors import JitError, NotAuthenticated
from jitbroker.identity import TokenVerifier
from lab.issuer import LAB_DAEMON_APP, TokenIssuer
from lab.scenario import Scenario
from lab.tls import LabCA
from lab.tokens import BAD_TOKENS, FORBIDDEN_TOKENS, no_role
from tests.identity.minissuer import FakeClock

LabVerifier = Callable[..., TokenVerifier]

# What each bad token must be refused for: a word of the message a person would read.
REASONS = {
    "expired": "expired",
    "not_yet_valid": "not valid yet",
    "wrong_audience": "another application",
    "another_app": "another application",
    "wrong_issuer": "not issued by",
    "wrong_tenant": "not issued by",
    "wrong_tid_claim": "another Entra ID tenant",
    "unknown_kid": "does not publish",
    "forged_signature": "signature",
    "alg_none": "RS256",
    "hs256_with_public_key": "RS256",
    "tampered_payload": "signature",
    "id_token": "not an access token",
}


@pytest.fixture
def lab_verifier(scenario: Scenario, issuer: TokenIssuer) -> LabVerifier:
    """A verifier configured from the lab the way the broker's runtime configures it."""

    def make(server: TokenIssuer = issuer, **overrides: Any) -> TokenVerifier:
        settings: dict[str, Any] = {
            "authority_host": server.url,
            "tenant_id": scenario.tenant.tenant_id,
            "api_client_id": scenario.tenant.api_client_id,
            "app_id_uri": scenario.tenant.app_id_uri,
            "token_versions": frozenset({"2"}),
            **overrides,
        }
        return TokenVerifier(**settings)

    return make


@pytest.fixture
def own_issuer(scenario: Scenario, lab_ca: LabCA) -> Iterator[TokenIssuer]:
    """A private lab issuer whose keys this test may rotate without disturbing the session's one."""
    with TokenIssuer(scenario, lab_ca) as running:
        yield running


def jwks_fetches(server: TokenIssuer) -> int:
    path = urllib.parse.urlsplit(server.jwks_uri).path
    return sum(1 for method, p, _ in server.requests() if method == "GET" and p == path)


def test_every_lab_user_verifies_to_their_scenario_identity(
    scenario: Scenario, lab_verifier: LabVerifier, token_for: Callable[..., str]
) -> None:
    verifier = lab_verifier()
    for user in scenario.users:
        principal = verifier.verify(token_for(user.name))

        assert principal.oid == user.oid
        assert principal.upn == user.upn
        assert principal.name == user.display_name
        assert principal.tenant_id == scenario.tenant.tenant_id
        assert principal.roles == frozenset(user.roles)


def test_token_from_the_labs_sign_in_endpoint_verifies(
    scenario: Scenario, issuer: TokenIssuer, lab_verifier: LabVerifier
) -> None:
    form = urllib.parse.urlencode(
        {"grant_type": "password", "username": "carol", "scope": f"{scenario.tenant.app_id_uri}/.default"}
    ).encode()
    with urllib.request.urlopen(issuer.token_endpoint, data=form, timeout=10) as response:
        access_token = json.loads(response.read())["access_token"]

    principal = lab_verifier().verify(access_token)

    assert principal.oid == scenario.user("carol").oid
    assert principal.has_role("JIT.Admin")


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_every_lab_bad_token_is_refused_for_its_reason(
    name: str, issuer: TokenIssuer, lab_verifier: LabVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = BAD_TOKENS[name](issuer, "alice")

    with pytest.raises(NotAuthenticated) as caught:
        lab_verifier().verify(token)

    assert REASONS[name] in caught.value.message
    assert token not in caught.value.message
    assert token not in caplog.text
    assert token.split(".")[1] not in caplog.text


@pytest.mark.parametrize("name", sorted(FORBIDDEN_TOKENS))
def test_every_lab_forbidden_token_is_refused_with_its_code(
    name: str, issuer: TokenIssuer, lab_verifier: LabVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    forbidden = FORBIDDEN_TOKENS[name]
    token = forbidden.make(issuer, "alice")

    with pytest.raises(JitError) as caught:
        lab_verifier().verify(token)

    assert (caught.value.status, caught.value.code) == (403, forbidden.code)
    assert token not in caught.value.message
    assert token.split(".")[1] not in caplog.text


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_daemons_token_from_the_labs_sign_in_endpoint_is_refused(
    scenario: Scenario, issuer: TokenIssuer, lab_verifier: LabVerifier, version: str
) -> None:
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": LAB_DAEMON_APP.client_id,
            "scope": f"{scenario.tenant.app_id_uri}/.default",
        }
    ).encode()
    with urllib.request.urlopen(issuer.token_endpoint, data=form, timeout=10) as response:
        access_token = json.loads(response.read())["access_token"]
    verifier = lab_verifier(token_versions=frozenset({"1", "2"}), v1_issuer=issuer.issuer_v1)

    for token in (access_token, issuer.app_token(version=version), issuer.app_token(idtyp=None)):
        with pytest.raises(JitError) as caught:
            verifier.verify(token)
        assert caught.value.code == "user_token_required"


def test_lab_token_without_roles_verifies_with_no_roles(
    issuer: TokenIssuer, lab_verifier: LabVerifier
) -> None:
    principal = lab_verifier().verify(no_role(issuer))

    assert principal.roles == frozenset()
    assert not principal.has_role("JIT.Requester")


def test_the_brokers_own_managed_identity_token_is_not_an_api_token(
    issuer: TokenIssuer, lab_verifier: LabVerifier
) -> None:
    verifier = lab_verifier(token_versions=frozenset({"1", "2"}), v1_issuer=issuer.issuer_v1)

    with pytest.raises(NotAuthenticated):
        verifier.verify(issuer.managed_identity_token())


def test_lab_v1_tokens_are_accepted_only_when_v1_is_configured(
    scenario: Scenario, issuer: TokenIssuer, lab_verifier: LabVerifier
) -> None:
    v1_token = issuer.token("bob", version="1")

    with pytest.raises(NotAuthenticated):
        lab_verifier().verify(v1_token)
    with pytest.raises(NotAuthenticated):  # v1 enabled, but the issuer left at Entra's sts.windows.net form
        lab_verifier(token_versions=frozenset({"1", "2"})).verify(v1_token)

    verifier = lab_verifier(token_versions=frozenset({"1", "2"}), v1_issuer=issuer.issuer_v1)
    assert verifier.verify(v1_token).oid == scenario.user("bob").oid
    assert verifier.verify(issuer.token("bob")).oid == scenario.user("bob").oid


def test_lab_keys_are_fetched_once_across_many_verifications(
    own_issuer: TokenIssuer, lab_verifier: LabVerifier
) -> None:
    verifier = lab_verifier(own_issuer)
    token = own_issuer.token("alice")

    for _ in range(100):
        verifier.verify(token)

    assert jwks_fetches(own_issuer) == 1


def test_lab_key_rotation_is_followed_and_retired_keys_stop_working(
    own_issuer: TokenIssuer, lab_verifier: LabVerifier, clock: FakeClock
) -> None:
    verifier = lab_verifier(own_issuer, clock=clock)
    old_token = own_issuer.token("alice")
    verifier.verify(old_token)

    own_issuer.rotate_keys()
    new_token = own_issuer.token("alice")
    assert verifier.verify(new_token).oid == verifier.verify(old_token).oid
    assert jwks_fetches(own_issuer) == 2  # the new kid was fetched on first sight, once

    own_issuer.retire_old_keys()
    clock.advance(3600)
    assert verifier.verify(new_token).oid  # served from the expired cache while it is refreshed behind
    assert verifier.wait_for_key_refresh()
    with pytest.raises(NotAuthenticated):
        verifier.verify(old_token)
    assert verifier.verify(new_token).oid
