"""How the verifier gets the issuer's signing keys: once, cached, refreshed for rotation, never hammering the
issuer, never making a request wait on a fetch it does not need, and only over verified HTTPS."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from jitbroker.errors import NotAuthenticated, UpstreamError
from jitbroker.identity import TokenVerifier
from tests.identity.conftest import MakeClaims, MakeVerifier
from tests.identity.minissuer import ALICE_OID, FakeClock, MiniIssuer


def in_time(action: Callable[[], Any], seconds: float = 2.0) -> bool:
    """Whether `action` returns within `seconds` (it keeps running in the background if not)."""
    done = threading.Event()

    def run() -> None:
        action()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


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
    assert verifier.wait_for_key_refresh()
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

    assert verifier.verify(mini_issuer.sign(v2_claims())).oid == ALICE_OID
    refused(verifier, old_token)


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
        assert verifier.wait_for_key_refresh()
    assert metadata_fetches(mini_issuer) == 2  # one failed attempt, then the stale keys until the cooldown

    mini_issuer.failing = False
    clock.advance(30)
    verifier.verify(mini_issuer.sign(v2_claims()))
    assert verifier.wait_for_key_refresh()
    assert jwks_fetches(mini_issuer) == 2


def test_a_thousand_random_kids_cost_at_most_one_fetch_per_cooldown_of_minutes(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    verifier.verify(mini_issuer.sign(v2_claims()))
    real_key = mini_issuer.keys[mini_issuer.current_kid]
    claims = v2_claims(exp=clock.epoch + 7200)

    def flood(count: int) -> None:
        for _ in range(count):
            token = jwt.encode(claims, real_key, algorithm="RS256", headers={"kid": uuid.uuid4().hex})
            refused(verifier, token)

    clock.advance(1)
    flood(1000)
    assert jwks_fetches(mini_issuer) == 2

    clock.advance(60)
    flood(1000)
    clock.advance(239)  # 299 s after the refresh the flood caused: the default cooldown is five minutes
    flood(100)
    assert jwks_fetches(mini_issuer) == 2

    clock.advance(1)
    flood(100)
    assert jwks_fetches(mini_issuer) == 3
    assert verifier.verify(mini_issuer.sign(v2_claims())).oid == ALICE_OID


def test_a_concurrent_flood_of_random_kids_costs_one_fetch(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    verifier.verify(mini_issuer.sign(v2_claims()))
    real_key = mini_issuer.keys[mini_issuer.current_kid]
    tokens = [
        jwt.encode(v2_claims(), real_key, algorithm="RS256", headers={"kid": uuid.uuid4().hex})
        for _ in range(512)
    ]
    clock.advance(1)
    start = threading.Barrier(16)
    outcomes: list[str] = []

    def attack(share: list[str]) -> None:
        start.wait()
        for token in share:
            try:
                verifier.verify(token)
                outcomes.append("accepted")
            except NotAuthenticated:
                outcomes.append("refused")

    threads = [threading.Thread(target=attack, args=(tokens[i::16],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes == ["refused"] * 512
    assert jwks_fetches(mini_issuer) == 2


def test_a_known_kid_is_never_blocked_by_a_fetch_in_flight(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    good = mini_issuer.sign(v2_claims(exp=clock.epoch + 7200))
    verifier.verify(good)
    gate = mini_issuer.hold_key_fetches()
    clock.advance(1)
    unknown = mini_issuer.sign(v2_claims(), kid=mini_issuer.add_key(publish=False))
    stalled = threading.Thread(target=lambda: refused(verifier, unknown), daemon=True)
    stalled.start()
    wait_until(lambda: jwks_fetches(mini_issuer) == 2)  # the refresh for the unknown kid is in flight

    try:
        assert in_time(lambda: verifier.verify(good))
        real_key = mini_issuer.keys[mini_issuer.current_kid]
        random_kid = jwt.encode(v2_claims(), real_key, algorithm="RS256", headers={"kid": uuid.uuid4().hex})
        assert in_time(lambda: refused(verifier, random_kid))
    finally:
        gate.set()
    stalled.join(timeout=10)
    assert not stalled.is_alive()
    assert jwks_fetches(mini_issuer) == 2


def test_expired_keys_serve_known_kids_while_the_refresh_runs_behind(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    verifier = make_verifier(jwks_cache_seconds=600)
    verifier.verify(mini_issuer.sign(v2_claims()))
    gate = mini_issuer.hold_key_fetches()
    clock.advance(600)

    try:
        for _ in range(5):
            assert in_time(lambda: verifier.verify(mini_issuer.sign(v2_claims())))
    finally:
        gate.set()
    assert verifier.wait_for_key_refresh()
    assert jwks_fetches(mini_issuer) == 2


def test_the_cache_lifetime_counts_from_when_the_keys_arrived(
    make_verifier: MakeVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims, clock: FakeClock
) -> None:
    verifier = make_verifier(jwks_cache_seconds=600)
    mini_issuer.on_fetch = lambda: clock.advance(100)  # the issuer takes its time answering
    verifier.verify(mini_issuer.sign(v2_claims()))
    mini_issuer.on_fetch = None

    clock.advance(599)
    verifier.verify(mini_issuer.sign(v2_claims()))
    assert verifier.wait_for_key_refresh()
    assert jwks_fetches(mini_issuer) == 1

    clock.advance(1)
    verifier.verify(mini_issuer.sign(v2_claims()))
    assert verifier.wait_for_key_refresh()
    assert jwks_fetches(mini_issuer) == 2


def test_cold_start_requests_all_wait_for_the_one_fetch(
    verifier: TokenVerifier, mini_issuer: MiniIssuer, v2_claims: MakeClaims
) -> None:
    gate = mini_issuer.hold_key_fetches()
    token = mini_issuer.sign(v2_claims())
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(verifier.verify(token).oid)) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: jwks_fetches(mini_issuer) == 1)
    assert results == []

    gate.set()
    for thread in threads:
        thread.join(timeout=10)
    assert results == [ALICE_OID] * 8
    assert jwks_fetches(mini_issuer) == 1


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
