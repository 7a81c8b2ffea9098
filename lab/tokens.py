"""Bad tokens for security tests: each helper returns one token that a correct verifier must refuse.

Each token is perfect (lab-signed, right issuer, audience, tenant and times) except for the one flaw it
names, so a test that refuses it proves that one check. `BAD_TOKENS` lists by name those that are not valid
access tokens for the broker (401 `unauthenticated`); `FORBIDDEN_TOKENS` those that are valid access tokens
the broker may not act on, with the 403 code each earns (an application's own token, a user's token without
the broker's scope). `no_role` is the exception: it verifies, and proves role checks happen after
authentication.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from lab.issuer import ARM_AUDIENCE, SigningKey, TokenIssuer

OTHER_TENANT_ID = "0e7e0000-0000-4000-8000-00000000dead"
OTHER_APP_CLIENT_ID = "0a4e0000-0000-4000-8000-00000000beef"
FOREIGN_ISSUER_HOST = "https://issuer.invalid"
_HOURS = 3600


def expired(issuer: TokenIssuer, user: str = "alice") -> str:
    """Expired two hours ago (well past any clock-skew leeway)."""
    now = int(time.time())
    return issuer.token(user, iat=now - 3 * _HOURS, nbf=now - 3 * _HOURS, exp=now - 2 * _HOURS)


def not_yet_valid(issuer: TokenIssuer, user: str = "alice") -> str:
    """Valid only from an hour from now (`nbf` and `iat` in the future)."""
    now = int(time.time())
    return issuer.token(user, iat=now + _HOURS, nbf=now + _HOURS, exp=now + 2 * _HOURS)


def wrong_audience(issuer: TokenIssuer, user: str = "alice") -> str:
    """A real token of the tenant, but for Azure Resource Manager, not the broker."""
    return issuer.token(user, aud=ARM_AUDIENCE)


def another_app(issuer: TokenIssuer, user: str = "alice") -> str:
    """A token for another application registration in the same tenant (its client id as `aud`)."""
    return issuer.token(user, aud=OTHER_APP_CLIENT_ID)


def wrong_issuer(issuer: TokenIssuer, user: str = "alice") -> str:
    """Signed with the lab's key but claiming an issuer on another host."""
    return issuer.token(user, iss=f"{FOREIGN_ISSUER_HOST}/{issuer.tenant_id}/v2.0")


def wrong_tenant(issuer: TokenIssuer, user: str = "alice") -> str:
    """A token from another tenant of the same authority (Entra signs every tenant with the same keys)."""
    return issuer.token(user, iss=f"{issuer.url}/{OTHER_TENANT_ID}/v2.0", tid=OTHER_TENANT_ID)


def wrong_tid_claim(issuer: TokenIssuer, user: str = "alice") -> str:
    """Right issuer, foreign `tid`: only a verifier that checks `tid` itself refuses it."""
    return issuer.token(user, tid=OTHER_TENANT_ID)


def unknown_kid(issuer: TokenIssuer, user: str = "alice") -> str:
    """Signed with a key the issuer never published (a `kid` absent from the JWKS)."""
    return issuer.sign(issuer.user_claims(user), key=SigningKey.generate())


def forged_signature(issuer: TokenIssuer, user: str = "alice") -> str:
    """Names a published `kid` but is signed with another private key."""
    stranger = SigningKey.generate()
    return issuer.sign(issuer.user_claims(user), key=SigningKey(issuer.signing_key.kid, stranger.private_key))


def alg_none(issuer: TokenIssuer, user: str = "alice") -> str:
    """Unsigned (`alg: none`, empty signature), naming a published `kid`."""
    header = {"alg": "none", "typ": "JWT", "kid": issuer.signing_key.kid}
    return assemble(header, issuer.user_claims(user), b"")


def hs256_with_public_key(issuer: TokenIssuer, user: str = "alice") -> str:
    """The algorithm-confusion attack: HS256 whose HMAC secret is the issuer's public key (PEM)."""
    key = issuer.signing_key
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = _signing_input(header, issuer.user_claims(user))
    signature = hmac.new(key.public_pem(), signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{_b64url(signature)}"


def tampered_payload(issuer: TokenIssuer, user: str = "alice") -> str:
    """A genuine token whose payload was edited afterwards (admin role added), signature kept."""
    header_b64, payload_b64, signature_b64 = issuer.token(user).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    claims["roles"] = [*claims.get("roles", []), "JIT.Admin"]
    return f"{header_b64}.{_b64url(_json(claims))}.{signature_b64}"


def no_role(issuer: TokenIssuer, user: str = "alice") -> str:
    """Perfectly valid, but carries no `roles` claim: authentication passes, authorization must not."""
    return issuer.token(user, roles=None)


def id_token(issuer: TokenIssuer, user: str = "alice") -> str:
    """An ID token as the broker's app registration gets one at sign-in (the lab's SPA sign-in issues the
    same): its client id as `aud`, the tenant's v2 issuer, the user's `oid` and roles, a nonce, but no `azp`
    and no `scp`: not an access token."""
    api_client_id = issuer.scenario.tenant.api_client_id
    return issuer.sign(issuer.id_token_claims(user, api_client_id, nonce="lab-nonce-0S6_WzA2Mj"))


def app_only(issuer: TokenIssuer, user: str = "alice") -> str:
    """An application's own token for the broker (client credentials): `idtyp: app`, the admin role granted
    as an application permission, no `scp`, the daemon's service principal as `oid` and `sub`. It verifies,
    but no person stands behind it (`user` is ignored)."""
    return issuer.app_token()


def wrong_scope(issuer: TokenIssuer, user: str = "alice") -> str:
    """A user's token for the broker delegating another scope (`scp: User.Read`) and carrying no app role."""
    return issuer.token(user, scp="User.Read", roles=None)


def assemble(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    """A compact JWS from its parts, for tokens no library would sign."""
    return f"{_signing_input(header, claims).decode()}.{_b64url(signature)}"


BAD_TOKENS: dict[str, Callable[[TokenIssuer, str], str]] = {
    "expired": expired,
    "not_yet_valid": not_yet_valid,
    "wrong_audience": wrong_audience,
    "another_app": another_app,
    "wrong_issuer": wrong_issuer,
    "wrong_tenant": wrong_tenant,
    "wrong_tid_claim": wrong_tid_claim,
    "unknown_kid": unknown_kid,
    "forged_signature": forged_signature,
    "alg_none": alg_none,
    "hs256_with_public_key": hs256_with_public_key,
    "tampered_payload": tampered_payload,
    "id_token": id_token,
}
"""Every helper whose token must be refused as no valid access token for the broker: 401 `unauthenticated`
(`no_role` is not here: it verifies)."""


class ForbiddenToken(NamedTuple):
    """A valid access token for the broker that it must nevertheless refuse, and the 403 code it earns."""

    make: Callable[[TokenIssuer, str], str]
    code: str


FORBIDDEN_TOKENS: dict[str, ForbiddenToken] = {
    "app_only": ForbiddenToken(app_only, "user_token_required"),
    "wrong_scope": ForbiddenToken(wrong_scope, "insufficient_scope"),
}
"""Every helper whose token verifies but must be refused with 403 and the code given."""


def _signing_input(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    return f"{_b64url(_json(header))}.{_b64url(_json(claims))}".encode()


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
