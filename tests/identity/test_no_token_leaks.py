"""A token is a credential: it never appears in an error or a log line, whatever was wrong with it."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

import jwt
import pytest

from jitbroker.errors import JitError
from jitbroker.identity import TokenVerifier, bearer_token
from tests.identity.conftest import MakeClaims
from tests.identity.minissuer import OTHER_APP_ID, OTHER_TENANT, FakeClock, MiniIssuer, b64url_json

TokenCase = Callable[[MiniIssuer, MakeClaims, FakeClock], str]

CASES: dict[str, TokenCase] = {
    "valid": lambda i, c, t: i.sign(c()),
    "no role": lambda i, c, t: i.sign(c(roles=None)),
    "expired": lambda i, c, t: i.sign(c(exp=t.epoch - 3600)),
    "not yet valid": lambda i, c, t: i.sign(c(nbf=t.epoch + 3600)),
    "wrong audience": lambda i, c, t: i.sign(c(aud=OTHER_APP_ID)),
    "wrong issuer": lambda i, c, t: i.sign(c(iss="https://evil.example/x/v2.0")),
    "wrong tenant": lambda i, c, t: i.sign(c(tid=OTHER_TENANT)),
    "unknown kid": lambda i, c, t: i.sign(c(), kid=i.add_key(publish=False)),
    "alg none": lambda i, c, t: f"{b64url_json({'alg': 'none', 'kid': i.current_kid})}.{b64url_json(c())}.",
    "hs256 with public key": lambda i, c, t: i.hs256_with_public_key(c()),
    "tampered": lambda i, c, t: ".".join(
        [i.sign(c()).split(".")[0], b64url_json(c(roles=["JIT.Admin"])), i.sign(c()).split(".")[2]]
    ),
    "no oid": lambda i, c, t: i.sign(c(oid=None)),
    "garbage": lambda i, c, t: "eyJnYXJiYWdlIjp0cnVlfQ.c2VjcmV0LXBheWxvYWQtYnl0ZXM.c2lnbmF0dXJlLWJ5dGVz",
    "hs256 with a guessed secret": lambda i, c, t: jwt.encode(
        c(), "a-guessed-shared-secret-of-32-bytes", algorithm="HS256", headers={"kid": i.current_kid}
    ),
}


def secret_fragments(token: str) -> list[str]:
    """The token and each of its non-trivial segments: none may show up anywhere."""
    return [token, *(part for part in token.split(".") if len(part) >= 12)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_token_never_appears_in_errors_or_logs(
    *,
    case: str,
    verifier: TokenVerifier,
    mini_issuer: MiniIssuer,
    v2_claims: MakeClaims,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = CASES[case](mini_issuer, v2_claims, clock)
    caplog.set_level(logging.DEBUG)

    seen: list[str] = []
    try:
        bearer_token(f"Bearer {token}")
        verifier.verify(token)
    except JitError as exc:
        seen += [exc.message, str(exc), repr(exc), "".join(traceback.format_exception(exc))]

    if case not in ("valid", "no role"):
        assert seen, f"{case} should have been refused"
    seen += [record.getMessage() for record in caplog.records]
    seen.append(caplog.text)
    for text in seen:
        for fragment in secret_fragments(token):
            assert fragment not in text
