"""How the verifier gets the issuer's signing keys: once, cached, refreshed for rotation, never hammering the
issuer, and only over verified HTTPS."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import jwt
import pytest

from jitbroker.errors import NotAuthenticated, UpstreamError
from jitbroker.identity import TokenVerifier
from tests.identity.conftest import MakeClaims, MakeVerifier
from tests.identity.minissuer import ALICE_OID, FakeClock, MiniIssuer


def jwks_fetches(issuer: MiniIssuer) -> int:
    return issuer.count(issuer.jwks_path)


def metadata_fetches(issuer: MiniIssuer) -> int:
    return issuer.count(issuer.metadata_path)


def test_keys_are_fetched_once_across_many_verifications(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    token = mini_issuer.sign(v2_claims())

    for _ in range(200):
        assert verifier.verify(token).oid == ALICE_OID

    assert metadata_fetches(mini_issuer) == 1
    assert jwks_fetches(mini_issuer) == 1


def test_nothing_is_fetched_before_the_first_token(verifier: TokenVerifier, mini_issuer: MiniIssuer) -> None:
    assert mini_issuer.requests == []


def test_concurrent_first_requests_share_one_fetch(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    token = mini_issuer.sign(v2_claims())
    start = threading.Barrier(16)
    results: list[str] = []
    errors: list[BaseException] = []

    def verify() -> None:
        start.wait()
        try:
            results.append(verifier.verify(token).oid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=verify) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert results == [ALICE_OID] * 16
    assert jwks_fetches(mini_issuer) == 1


def test_keys_are_fetched_again_when_the_cache_lifetime_ends(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    verifier = make_verifier(jwks_cache_seconds=600)
    verifier.verify(mini_issuer.sign(v2_claims()))

    clock.advance(599)
    verifier.verify(mini_issuer.sign(v2_claims()))
    assert jwks_fetches(mini_issuer) == 1

    clock.advance(1)
    verifier.verify(mini_issuer.sign(v2_claims()))
    assert jwks_fetches(mini_issuer) == 2


def test_unknown_kid_triggers_one_refresh_and_is_then_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    verifier.verify(mini_issuer.sign(v2_claims()))
    unpublished = mini_issuer.add_key(publish=False)
    clock.advance(1)

    message = refused(verifier, mini_issuer.sign(v2_claims(), kid=unpublished))

    assert "does not publish" in message
    assert jwks_fetches(mini_issuer) == 2


def test_a_flood_of_unknown_kids_refreshes_at_most_once_per_cooldown(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    verifier = make_verifier(refresh_cooldown_seconds=30)
    verifier.verify(mini_issuer.sign(v2_claims()))
    real_key = mini_issuer.keys[mini_issuer.current_kid]

    def random_kid_token() -> str:
        return jwt.encode(v2_claims(), real_key, algorithm="RS256", headers={"kid": uuid.uuid4().hex})

    clock.advance(1)
    for _ in range(100):
        refused(verifier, random_kid_token())
    assert jwks_fetches(mini_issuer) == 2

    clock.advance(29)
    for _ in range(100):
        refused(verifier, random_kid_token())
    assert jwks_fetches(mini_issuer) == 2

    clock.advance(1)
    for _ in range(100):
        refused(verifier, random_kid_token())
    assert jwks_fetches(mini_issuer) == 3
    assert verifier.verify(mini_issuer.sign(v2_claims())).oid == ALICE_OID


def test_rotated_key_is_picked_up_by_refresh(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    old_kid = mini_issuer.current_kid
    verifier.verify(mini_issuer.sign(v2_claims()))

    new_kid = mini_issuer.add_key()
    clock.advance(1)

    assert verifier.verify(mini_issuer.sign(v2_claims(), kid=new_kid)).oid == ALICE_OID
    assert verifier.verify(mini_issuer.sign(v2_claims(), kid=old_kid)).oid == ALICE_OID
    assert jwks_fetches(mini_issuer) == 2


def test_retired_key_stops_verifying_once_the_cache_is_refreshed(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    verifier = make_verifier(jwks_cache_seconds=600)
    old_kid = mini_issuer.current_kid
    old_token = mini_issuer.sign(v2_claims(exp=clock.epoch + 7200))
    verifier.verify(old_token)

    mini_issuer.add_key()
    mini_issuer.retire(old_kid)
    clock.advance(600)

    refused(verifier, old_token)
    assert verifier.verify(mini_issuer.sign(v2_claims())).oid == ALICE_OID


def test_issuer_unreachable_at_first_use_is_an_upstream_error_and_is_not_hammered(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    token = mini_issuer.sign(v2_claims())
    mini_issuer.failing = True

    for _ in range(20):
        with pytest.raises(UpstreamError) as caught:
            verifier.verify(token)
        assert caught.value.status == 502
    assert metadata_fetches(mini_issuer) == 1

    mini_issuer.failing = False
    clock.advance(5)
    assert verifier.verify(token).oid == ALICE_OID


def test_cached_keys_keep_serving_while_the_issuer_is_down(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    verifier = make_verifier(jwks_cache_seconds=600, refresh_cooldown_seconds=30)
    verifier.verify(mini_issuer.sign(v2_claims()))
    mini_issuer.failing = True
    clock.advance(600)

    for _ in range(20):
        assert verifier.verify(mini_issuer.sign(v2_claims())).oid == ALICE_OID
    assert metadata_fetches(mini_issuer) == 2  # one failed attempt, then the stale keys until the cooldown

    mini_issuer.failing = False
    clock.advance(30)
    verifier.verify(mini_issuer.sign(v2_claims()))
    assert jwks_fetches(mini_issuer) == 2


def test_keys_are_only_fetched_from_an_issuer_whose_certificate_verifies(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")

    with pytest.raises(UpstreamError):
        verifier.verify(mini_issuer.sign(v2_claims()))
    assert jwks_fetches(mini_issuer) == 0


def test_metadata_pointing_keys_at_plain_http_is_refused(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = mini_issuer._answer

    def http_jwks_uri(path: str) -> tuple[int, dict[str, Any]]:
        status, body = original(path)
        if path == mini_issuer.metadata_path:
            body = {**body, "jwks_uri": body["jwks_uri"].replace("https://", "http://")}
        return status, body

    monkeypatch.setattr(mini_issuer, "_answer", http_jwks_uri)

    with pytest.raises(UpstreamError):
        verifier.verify(mini_issuer.sign(v2_claims()))
    assert jwks_fetches(mini_issuer) == 0


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(NotAuthenticated) as caught:
        verifier.verify(token)
    return caught.value.message
