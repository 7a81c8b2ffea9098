"""Verifying Microsoft Entra ID access tokens for the broker's API, in Azure and in the lab alike.

The broker acts for people, so it accepts only delegated user tokens: a token an application obtained for
itself (client credentials: `idtyp` `app`, no `scp`, its service principal as `oid` and `sub`) is refused
whatever roles it carries, and a user's token must carry the broker's delegated scope in `scp` or one of the
broker's app roles. Optionally only listed client applications (`azp` in v2, `appid` in v1) are accepted.

Refusals: 401 `unauthenticated` for a token that is not a valid access token for the broker; 403
`user_token_required`, `insufficient_scope` or `client_app_not_allowed` for a valid one it may not accept.

There is deliberately no way to switch verification off: the lab runs its own issuer instead. Messages say
what is wrong in words a person can act on and never contain the token or any part of it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import jwt

from jitbroker.errors import (
    ClientAppNotAllowed,
    InsufficientScope,
    NotAllowed,
    NotAuthenticated,
    UserTokenRequired,
)
from jitbroker.identity.keys import SigningKeys
from jitbroker.identity.principal import Principal

if TYPE_CHECKING:
    from jitbroker.config import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

TOKEN_VERSIONS = frozenset({"1", "2"})
DEFAULT_API_SCOPE = "user_impersonation"
DEFAULT_REFRESH_COOLDOWN_SECONDS = 300
MAX_TOKEN_CHARS = 16 * 1024
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_KID = re.compile(r"[\x21-\x7e]{1,128}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A scope's value as Entra writes it into `scp` (the part after the app ID URI): no spaces, no slashes.
_SCOPE_VALUE = re.compile(r"[\x21-\x7e]{1,120}")
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


class _Version(NamedTuple):
    """What one accepted token version looks like for this broker."""

    label: str  # "1" or "2"
    audiences: frozenset[str]  # the `aud` values it may carry
    audience_hint: str  # the one to name in messages
    client_claim: str  # where it names the client application: `azp` (v2) or `appid` (v1)
    keys: SigningKeys  # the keys of its own OpenID metadata


class TokenVerifier:
    """Checks a bearer token against one tenant and one app registration, and says who presented it.

    Accepts exactly the token versions configured (`token_versions`: "1"/"2" or 1/2):
    - v2: `iss` `{authority_host}/{tenant}/v2.0`, `aud` the bare client id, client in `azp`, keys from the v2
      OpenID metadata (`{authority_host}/{tenant}/v2.0/.well-known/openid-configuration`);
    - v1: `iss` `https://sts.windows.net/{tenant}/` unless `v1_issuer` says otherwise, `aud` the app ID URI
      (with or without a trailing slash) or the client id, client in `appid`, keys from the v1 OpenID metadata
      (`{authority_host}/{tenant}/.well-known/openid-configuration`).

    Only delegated user tokens are accepted (see the module docstring): `api_scope` is the delegated scope's
    value as it appears in `scp`; `roles_instead_of_scope` are the app roles that, on a user token, admit it
    without that scope (the requester and admin roles); `allowed_client_apps`, when not empty, are the client
    application ids accepted. An unknown `kid` refreshes the keys at most once per
    `refresh_cooldown_seconds`. Thread-safe.
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
        api_scope: str = DEFAULT_API_SCOPE,
        roles_instead_of_scope: Collection[str] = (),
        allowed_client_apps: Collection[str] = (),
        leeway_seconds: int = 60,
        jwks_cache_seconds: int = 3600,
        refresh_cooldown_seconds: int = DEFAULT_REFRESH_COOLDOWN_SECONDS,
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
        if not _SCOPE_VALUE.fullmatch(api_scope) or "/" in api_scope:
            raise ValueError(
                f"api_scope must be the scope's value as it appears in scp (e.g. {DEFAULT_API_SCOPE}), "
                f"not {api_scope!r}"
            )
        clients = frozenset(client.strip().lower() for client in allowed_client_apps)
        if not all(_GUID.fullmatch(client) for client in clients):
            raise ValueError("allowed_client_apps must be client ids (GUIDs)")
        self._tenant_id = tenant_id
        self._clock = clock or _utc_now
        self._leeway = leeway_seconds
        self._api_scope = api_scope
        self._scope_roles = frozenset(roles_instead_of_scope)
        self._allowed_clients = clients
        self._resource = app_id_uri.rstrip("/")
        # issuer -> how tokens of that version look; issuer -> version label, for versions switched off
        self._accepted: dict[str, _Version] = {}
        self._disabled: dict[str, str] = {}
        v2_issuer = f"{authority}/{tenant_id}/v2.0"
        v1 = v1_issuer or f"https://sts.windows.net/{tenant_id}/"
        if v1 == v2_issuer:
            raise ValueError("v1_issuer must differ from the v2 issuer, or versions could not be told apart")
        shapes = (
            ("2", v2_issuer, frozenset({api_client_id}), api_client_id, "azp", v2_issuer),
            (
                "1",
                v1,
                frozenset({self._resource, f"{self._resource}/", api_client_id}),
                app_id_uri,
                "appid",
                f"{authority}/{tenant_id}",
            ),
        )
        for version, issuer, audiences, hint, client_claim, metadata_base in shapes:
            if version not in versions:
                self._disabled[issuer] = version
                continue
            keys = SigningKeys(
                f"{metadata_base}/.well-known/openid-configuration",
                clock=self._clock,
                cache_seconds=jwks_cache_seconds,
                refresh_cooldown_seconds=refresh_cooldown_seconds,
            )
            self._accepted[issuer] = _Version(version, audiences, hint, client_claim, keys)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock | None = None) -> TokenVerifier:
        """The verifier the broker's settings describe (`JIT_*` token settings, docs/api.md)."""
        return cls(
            authority_host=settings.authority_host,
            tenant_id=settings.tenant_id,
            api_client_id=settings.api_client_id,
            app_id_uri=settings.app_id_uri,
            token_versions=settings.token_versions,
            v1_issuer=settings.v1_issuer,
            api_scope=settings.api_scope,
            # The roles that carry the broker's own purpose; an auditor or approver still needs the scope.
            roles_instead_of_scope=(settings.requester_role, settings.admin_role),
            allowed_client_apps=settings.allowed_client_apps,
            refresh_cooldown_seconds=settings.key_refresh_cooldown_seconds,
            clock=clock,
        )

    def verify(self, token: str) -> Principal:
        """The caller behind `token`; `NotAuthenticated` (401) saying why the token is not acceptable, or
        `NotAllowed` (403) when it is a valid token the broker may not act on."""
        try:
            principal = self._verify(token)
        except (NotAuthenticated, NotAllowed) as exc:
            log.info("rejected an access token: %s", exc.message)
            raise
        log.debug("verified an access token for principal %s", principal.oid)
        return principal

    def wait_for_key_refresh(self, timeout: float = 30.0) -> bool:
        """Wait for key fetches in progress (the background refresh of expired keys); False on timeout."""
        return all(version.keys.wait_for_refresh(timeout) for version in self._accepted.values())

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
        # The issuer picks the key set (each version has its own metadata); nothing is fetched for tokens
        # from issuers the broker does not trust. The signature then covers the issuer it was picked by.
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise NotAuthenticated("the access token is not a well-formed JWT") from None
        version = self._version_of(unverified.get("iss"))
        key = version.keys.key_for(kid)
        try:
            claims = jwt.decode(token, key.key, algorithms=["RS256"], options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            raise NotAuthenticated("the access token's signature does not verify") from None
        except jwt.PyJWTError:
            raise NotAuthenticated("the access token is not a well-formed JWT") from None
        self._check_issuer_and_audience(claims)
        self._check_times(claims)
        principal = _principal(claims)
        self._check_delegation(claims, version, principal)
        return principal

    def _version_of(self, issuer: object) -> _Version:
        """The accepted version whose issuer this is; `NotAuthenticated` for any other issuer."""
        if isinstance(issuer, str) and issuer in self._accepted:
            return self._accepted[issuer]
        if isinstance(issuer, str) and issuer in self._disabled:
            version = self._disabled[issuer]
            raise NotAuthenticated(
                f"the access token is a v{version}.0 token, which this broker is not configured to accept"
            )
        raise NotAuthenticated("the access token was not issued by this broker's Entra ID tenant")

    def _check_issuer_and_audience(self, claims: Mapping[str, Any]) -> None:
        version = self._version_of(claims.get("iss"))
        ver = claims.get("ver")
        if ver is not None and ver != f"{version.label}.0":
            raise NotAuthenticated("the access token's version does not match its issuer")
        if claims.get("tid") != self._tenant_id:
            raise NotAuthenticated("the access token is for another Entra ID tenant")
        audience = claims.get("aud")
        if not isinstance(audience, str) or audience not in version.audiences:
            raise NotAuthenticated(
                "the access token is for another application; "
                f"request one for the broker ({version.audience_hint})"
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

    def _check_delegation(self, claims: Mapping[str, Any], version: _Version, principal: Principal) -> None:
        """A person's token, delegated to an accepted client, for the broker's scope or with one of its roles.

        What Entra puts in access tokens (access token claims and optional claims references): `scp` is
        "only included for user tokens"; an app-only token carries application permissions in `roles`
        instead, its service principal as `oid` (and as `sub`, where a user's `sub` is pairwise), and
        `idtyp: app` when the API asks for that optional claim ("the most accurate way for an API to
        determine if a token is an app token or an app+user token"). The client is `azp` in v2, `appid` in
        v1; ID tokens have neither, nor `scp`.
        """
        client = claims.get(version.client_claim)
        if not isinstance(client, str) or not _GUID.fullmatch(client):
            raise NotAuthenticated(
                f"the token names no client application ({version.client_claim}), so it is not an access "
                "token; send an access token for the broker, not an ID token"
            )
        idtyp = claims.get("idtyp")
        if idtyp is not None and not isinstance(idtyp, str):
            raise NotAuthenticated("the access token's idtyp claim is malformed")
        scp = claims.get("scp")
        if scp is not None and not isinstance(scp, str):
            raise NotAuthenticated("the access token's scp claim is malformed")
        if idtyp is None:
            sub = claims.get("sub")
            service_principal = isinstance(sub, str) and sub.lower() == principal.oid
            user = scp is not None and not service_principal
        else:
            user = idtyp == "user"
        if not user:
            raise UserTokenRequired(
                "the broker acts for people only: this is an application's own token (app-only, client "
                "credentials), not one a user signed in for; sign in as yourself (az login) and get a token "
                "for the broker"
            )
        if self._allowed_clients and client.lower() not in self._allowed_clients:
            log.info("refusing a token obtained through client application %s (not allowed)", client)
            raise ClientAppNotAllowed(
                "the access token was obtained through a client application the broker does not accept; "
                "use the jit CLI or the Azure CLI"
            )
        if self._api_scope in (scp or "").split() or principal.roles & self._scope_roles:
            return
        raise InsufficientScope(
            f"the access token does not grant the broker's delegated scope ({self._api_scope}) and carries "
            f"none of its app roles; request a token for {self._resource}/{self._api_scope} "
            f"(or {self._resource}/.default)"
        )


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
