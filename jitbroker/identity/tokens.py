"""Verifying Microsoft Entra ID access tokens for the broker's API, in Azure and in the lab alike.

There is deliberately no way to switch verification off: the lab runs its own issuer instead. Messages say
what is wrong in words a person can act on and never contain the token or any part of it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import jwt

from jitbroker.errors import NotAuthenticated
from jitbroker.identity.keys import SigningKeys
from jitbroker.identity.principal import Principal

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

TOKEN_VERSIONS = frozenset({"1", "2"})
MAX_TOKEN_CHARS = 16 * 1024
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_KID = re.compile(r"[\x21-\x7e]{1,128}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Signature only; every claim is checked below against the broker's own clock and configuration.
_SIGNATURE_ONLY: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


def bearer_token(authorization_header: str | None) -> str:
    """The token from an `Authorization: Bearer …` header; `NotAuthenticated` if absent or another scheme."""
    if authorization_header is None or not authorization_header.strip():
        raise NotAuthenticated(
            "no access token: send 'Authorization: Bearer <token>' with an Entra ID token for the broker"
        )
    scheme, _, value = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise NotAuthenticated("the Authorization header must use the Bearer scheme: 'Bearer <token>'")
    token = value.strip()
    if not token or len(token) > MAX_TOKEN_CHARS or not _B64TOKEN.fullmatch(token):
        raise NotAuthenticated("the bearer token is empty or not a token")
    return token


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TokenVerifier:
    """Checks a bearer token against one tenant and one app registration, and says who presented it.

    Accepts exactly the token versions configured (`token_versions`: "1"/"2" or 1/2): v2 (`iss`
    `{authority_host}/{tenant}/v2.0`, `aud` = the bare client id) and/or v1 (`iss`
    `https://sts.windows.net/{tenant}/` unless `v1_issuer` says otherwise, `aud` = the app id URI). Keys come
    from the v2 OpenID metadata of the configured authority; both versions share them. Thread-safe.
    """

    def __init__(
        self,
        *,
        authority_host: str,
        tenant_id: str,
        api_client_id: str,
        app_id_uri: str,
        token_versions: Collection[str | int],
        v1_issuer: str | None = None,
        leeway_seconds: int = 60,
        jwks_cache_seconds: int = 3600,
        refresh_cooldown_seconds: int = 5,
        clock: Clock | None = None,
    ) -> None:
        authority = authority_host.rstrip("/")
        if not authority.startswith("https://"):
            raise ValueError(f"authority_host must be an https:// URL, not {authority_host!r}")
        versions = frozenset(str(v).removesuffix(".0") for v in token_versions)
        if not versions or not versions <= TOKEN_VERSIONS:
            raise ValueError(f"token_versions must be 1, 2 or both, not {set(token_versions)}")
        required = {"tenant_id": tenant_id, "api_client_id": api_client_id, "app_id_uri": app_id_uri}
        for label, value in required.items():
            if not value or value != value.strip():
                raise ValueError(f"{label} must be set (and free of surrounding spaces)")
        if leeway_seconds < 0 or leeway_seconds > 300:
            raise ValueError("leeway_seconds must be between 0 and 300")
        self._tenant_id = tenant_id
        self._clock = clock or _utc_now
        self._leeway = leeway_seconds
        # issuer -> (version label, the audience that version carries)
        self._accepted: dict[str, tuple[str, str]] = {}
        self._disabled: dict[str, str] = {}
        v2_issuer = f"{authority}/{tenant_id}/v2.0"
        v1 = v1_issuer or f"https://sts.windows.net/{tenant_id}/"
        if v1 == v2_issuer:
            raise ValueError("v1_issuer must differ from the v2 issuer, or versions could not be told apart")
        for version, issuer, audience in (("2", v2_issuer, api_client_id), ("1", v1, app_id_uri)):
            if version in versions:
                self._accepted[issuer] = (version, audience)
            else:
                self._disabled[issuer] = version
        self._keys = SigningKeys(
            f"{v2_issuer}/.well-known/openid-configuration",
            clock=self._clock,
            cache_seconds=jwks_cache_seconds,
            refresh_cooldown_seconds=refresh_cooldown_seconds,
        )

    def verify(self, token: str) -> Principal:
        """The caller behind `token`, or `NotAuthenticated` saying why the token is not acceptable."""
        try:
            principal = self._verify(token)
        except NotAuthenticated as exc:
            log.info("rejected an access token: %s", exc.message)
            raise
        log.debug("verified an access token for principal %s", principal.oid)
        return principal

    def _verify(self, token: str) -> Principal:
        if not isinstance(token, str) or not token:
            raise NotAuthenticated("no access token was presented")
        if len(token) > MAX_TOKEN_CHARS:
            raise NotAuthenticated("the access token is too large to be an Entra ID token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise NotAuthenticated("the access token is not a well-formed JWT") from None
        if header.get("alg") != "RS256":
            raise NotAuthenticated("the access token is not signed with RS256, the only algorithm accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise NotAuthenticated("the access token does not name its signing key (kid)")
        key = self._keys.key_for(kid)
        try:
            claims = jwt.decode(token, key.key, algorithms=["RS256"], options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            raise NotAuthenticated("the access token's signature does not verify") from None
        except jwt.PyJWTError:
            raise NotAuthenticated("the access token is not a well-formed JWT") from None
        self._check_issuer_and_audience(claims)
        self._check_times(claims)
        return _principal(claims)

    def _check_issuer_and_audience(self, claims: Mapping[str, Any]) -> None:
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in self._accepted:
            if isinstance(issuer, str) and issuer in self._disabled:
                version = self._disabled[issuer]
                raise NotAuthenticated(
                    f"the access token is a v{version}.0 token, which this broker is not configured to accept"
                )
            raise NotAuthenticated("the access token was not issued by this broker's Entra ID tenant")
        version, audience = self._accepted[issuer]
        ver = claims.get("ver")
        if ver is not None and ver != f"{version}.0":
            raise NotAuthenticated("the access token's version does not match its issuer")
        if claims.get("tid") != self._tenant_id:
            raise NotAuthenticated("the access token is for another Entra ID tenant")
        if claims.get("aud") != audience:
            raise NotAuthenticated(
                f"the access token is for another application; request one for the broker ({audience})"
            )

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock().timestamp()
        exp, iat, nbf = _number(claims.get("exp")), _number(claims.get("iat")), _number(claims.get("nbf"))
        if exp is None or iat is None or ("nbf" in claims and nbf is None):
            raise NotAuthenticated("the access token lacks a valid expiry or issue time")
        if now > exp + self._leeway:
            raise NotAuthenticated("the access token has expired; get a new one")
        if now + self._leeway < iat or (nbf is not None and now + self._leeway < nbf):
            raise NotAuthenticated("the access token is not valid yet; check this machine's clock")


def _number(value: object) -> float | None:
    """A NumericDate claim as seconds, or None when absent or not a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _principal(claims: Mapping[str, Any]) -> Principal:
    """The Principal a verified token describes: `oid` is the identity, roles come from app roles."""
    oid = claims.get("oid")
    if not isinstance(oid, str) or not _GUID.fullmatch(oid):
        raise NotAuthenticated("the access token carries no object id (oid) for the caller")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise NotAuthenticated("the access token's roles claim is malformed")
    upn = next(
        (claims[c] for c in ("upn", "preferred_username", "unique_name") if isinstance(claims.get(c), str)),
        None,
    )
    name = claims.get("name")
    return Principal(
        oid=oid.lower(),
        name=name if isinstance(name, str) else None,
        upn=upn,
        tenant_id=str(claims["tid"]),
        roles=frozenset(roles),
    )
