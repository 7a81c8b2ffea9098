"""A local stand-in for Microsoft Entra ID: OpenID metadata, rotatable JWKS, user tokens, managed identity.

Two listeners on 127.0.0.1, both in background threads:

* **HTTPS** (`.url`), shaped like `https://login.microsoftonline.com`:
  - `GET /{tenant}/v2.0/.well-known/openid-configuration`: v2 metadata, issuer `{url}/{tenant}/v2.0`.
  - `GET /{tenant}/.well-known/openid-configuration`: v1 metadata, issuer `{url}/{tenant}/` (Entra's v1
    issuer is `https://sts.windows.net/{tenant}/`; the lab serves the same shape on its own host).
  - `GET /{tenant}/discovery/v2.0/keys` and `/{tenant}/discovery/keys`: the JWKS (RSA, `kid`, `use: sig`).
  - `GET|POST /{tenant}/oauth2/v2.0/authorize`, `GET /{tenant}/oauth2/v2.0/logout`, and the token endpoint's
    `authorization_code` and `refresh_token` grants: sign-in for the lab's single-page application
    (authorization code + PKCE, a lab sign-in page to pick a scenario user), so MSAL.js signs in against the
    lab exactly as against Entra ID. See lab/issuer_authorize.py, and "MSAL.js against the lab" below.
  - `POST /{tenant}/oauth2/v2.0/token`: **the lab's sign-in**. Form: `grant_type=password`, `username` (a
    scenario user's name or UPN; no password is checked), `scope` (`{app_id_uri}/.default`,
    `{api_client_id}/.default` or `https://management.azure.com/.default`), optional `client_id` (becomes
    `azp`/`appid`). Answers like Entra: `{"token_type": "Bearer", "scope", "expires_in", "ext_expires_in",
    "access_token"}`, or an Entra-shaped error (`{"error", "error_description": "AADSTS…", "error_codes"}`)
    with status 400. Also `grant_type=client_credentials` with a lab client application's `client_id` (no
    secret is checked) and `scope={app_id_uri}/.default`: an app-only token, which the broker must refuse.
* **HTTP** (`.identity_endpoint`): the App Service / Azure Functions managed-identity protocol, plain HTTP on
  loopback as the platform serves it. `GET /msi/token?resource=…&api-version=2019-08-01[&client_id=…]` with
  header `X-IDENTITY-HEADER: {identity_header}` answers `{"access_token", "expires_on", "resource",
  "token_type", "client_id"}`. With `IDENTITY_ENDPOINT`, `IDENTITY_HEADER` and `AZURE_CLIENT_ID` set,
  azure-identity's `DefaultAzureCredential` gets the broker's ARM token here, as inside Azure Functions.

API tokens carry the claims of Entra access tokens: v2 (`ver: "2.0"`, `aud` = the API's client id, `azp`,
`preferred_username`) by default; v1 (`ver: "1.0"`, `aud` = the app ID URI, `appid`, `upn`, `unique_name`)
on request, or when `api_token_version` is `"1"` (the app registration's `accessTokenAcceptedVersion`). ARM
tokens are v1-shaped with `aud` = `https://management.azure.com/`, as Entra issues them.

A user's token is delegated: `scp` is the API's delegated scope (`api_scope`, `user_impersonation` by
default), `roles` the user's app roles (absent when they hold none), `sub` pairwise. An app-only token
(client credentials, `app_token`) is what Entra issues to an application acting as itself: no `scp`, the
application permissions granted to it in `roles`, its service principal as both `oid` and `sub`, and
`idtyp: app` (the optional claim an API asks for to tell the two apart).

MSAL.js against the lab (`@azure/msal-browser` v3 to v5, tried with v5.29 in Chromium: redirect sign-in,
silent renewal by refresh token, logout; `issuer.msal_config(redirect_uri)` returns this configuration):

    new PublicClientApplication({
      auth: {
        clientId: "<issuer.spa_client_id>",       // the scenario's api_client_id by default: as in Azure,
                                                   // the broker's app registration is the page's too
        authority: "<issuer.authority>",          // https://127.0.0.1:<port>/<tenant-id> (or …/v2.0)
        knownAuthorities: ["127.0.0.1:<port>"],   // required: the lab is no Microsoft host; without it
                                                   // MSAL asks login.microsoftonline.com and fails
        redirectUri: "<a registered redirect URI>",
        postLogoutRedirectUri: "<a registered redirect URI>",
      },
      cache: { cacheLocation: "sessionStorage" },
    });
    await pca.loginRedirect({ scopes: ["<issuer.api_scope_uri>"] });  // api://jit-broker-lab/user_impersonation

`protocolMode` stays "AAD" (the default): MSAL reads `{authority}/v2.0/.well-known/openid-configuration`,
sends `client_info=1` and builds its account from the `client_info` the lab returns, as against Entra.
`authorityMetadata` is not needed (the v2 discovery document given there only saves one request).
`protocolMode: "OIDC"` works too, but then the authority must end in `/v2.0` (MSAL then reads
`{authority}/.well-known/openid-configuration`; the lab's v1 document has no authorize endpoint).
Write the host as `issuer.url` does (127.0.0.1, not localhost): MSAL v5 checks that the discovery
document's `issuer` has the authority's scheme, host and port.
Register the page's redirect URI first: `TokenIssuer(..., redirect_uris=[…])` or at run time
`issuer.register_redirect_uri("http://127.0.0.1:<port>/")` (https anywhere, http on loopback only). The
lab keeps no session, so silent sign-in (`prompt=none`, MSAL's hidden iframe) answers `login_required`;
MSAL renews with the refresh token (asked for by default through `offline_access`, 24 hours from
sign-in), then needs `loginRedirect` again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socket import SHUT_RDWR, socket
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from lab.issuer_authorize import AadError, HttpAnswer, SpaSignIn, aad_error_body, cors_request_headers
from lab.scenario import Scenario, UserSpec
from lab.tls import LabCA, server_context

ARM_AUDIENCE = "https://management.azure.com/"
# ARM accepts its resource with and without the trailing slash; both get the canonical audience.
ARM_RESOURCES = frozenset({"https://management.azure.com", "https://management.azure.com/"})
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
API_SCOPE_NAME = "user_impersonation"
TOKEN_LIFETIME_S = 3600
IDENTITY_API_VERSION = "2019-08-01"


@dataclass(frozen=True)
class ManagedIdentity:
    """The broker's user-assigned managed identity in the lab (what `AZURE_CLIENT_ID` names in Azure)."""

    client_id: str
    principal_id: str
    resource_id: str


@dataclass(frozen=True)
class ClientApp:
    """A confidential client application of the lab's tenant acting as itself (a daemon, client credentials).

    `principal_id` is its service principal's object id (the `oid` and `sub` of its tokens); `roles` are the
    app roles granted to it on the broker's API as application permissions.
    """

    client_id: str
    principal_id: str
    roles: tuple[str, ...]


# A daemon granted the admin role as an application permission: the worst an app registration that lets apps
# hold its roles could issue. The broker acts for people only and must refuse its tokens.
LAB_DAEMON_APP = ClientApp(
    client_id="da3e0000-0000-4000-8000-00000000da01",
    principal_id="da3e0000-0000-4000-8000-00000000da02",
    roles=("JIT.Admin",),
)


LAB_BROKER_IDENTITY = ManagedIdentity(
    client_id="5e1f0000-0000-4000-8000-00000000b0c1",
    principal_id="5e1f0000-0000-4000-8000-00000000b0c2",
    resource_id=(
        "/subscriptions/00000000-0000-4000-8000-0000000000a1/resourceGroups/rg-jit-demo/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/id-jit-broker"
    ),
)


@dataclass(frozen=True)
class SigningKey:
    """One RSA key pair of the issuer and the `kid` it is published under."""

    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh 2048-bit key with an Entra-looking random `kid`."""
        return cls(kid=_b64url(secrets.token_bytes(20)), private_key=rsa.generate_private_key(65537, 2048))

    def public_jwk(self) -> dict[str, Any]:
        """The key as a JWKS entry, shaped like Entra's (`kty`, `use`, `kid`, `n`, `e`)."""
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {"kty": "RSA", "use": "sig", "kid": self.kid, "n": jwk["n"], "e": jwk["e"]}

    def public_pem(self) -> bytes:
        """The public key in PEM (SubjectPublicKeyInfo) form."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class TokenIssuer:
    """The lab's Entra ID: HTTPS OpenID endpoints, in-process token minting, the managed-identity endpoint."""

    def __init__(
        self,
        scenario: Scenario,
        ca: LabCA | None = None,
        *,
        certfile: Path | str | None = None,
        keyfile: Path | str | None = None,
        port: int = 0,
        identity_port: int = 0,
        host: str = "127.0.0.1",
        managed_identity: ManagedIdentity = LAB_BROKER_IDENTITY,
        api_token_version: str = "2",  # noqa: S107 - a version, not a secret
        api_scope: str = API_SCOPE_NAME,
        client_apps: Sequence[ClientApp] = (LAB_DAEMON_APP,),
        spa_client_id: str | None = None,
        redirect_uris: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`spa_client_id` is the single-page application's client id (the scenario's `api_client_id` unless
        given: one app registration for the API and its page, as the deployment has it); `redirect_uris` its
        registered redirect URIs (more with `register_redirect_uri`); `clock` what its authorization codes and
        refresh tokens expire by (tokens themselves always carry real times)."""
        if ca is not None:
            certfile, keyfile = ca.certfile, ca.keyfile
        if certfile is None or keyfile is None:
            raise ValueError("TokenIssuer needs a LabCA or both certfile and keyfile")
        self.scenario = scenario
        self.tenant_id = scenario.tenant.tenant_id
        self.managed_identity = managed_identity
        self.api_token_version = api_token_version
        self.api_scope = api_scope
        self.client_apps = tuple(client_apps)
        self.identity_header = secrets.token_urlsafe(24)
        self._tls = server_context(certfile, keyfile)
        self._host = host
        self._ports = (port, identity_port)
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = [SigningKey.generate()]
        self._log: list[tuple[str, str, int]] = []
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._spa = SpaSignIn(
            self,
            client_id=spa_client_id or scenario.tenant.api_client_id,
            redirect_uris=redirect_uris,
            clock=clock,
        )

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> TokenIssuer:
        """Bind both listeners and serve them from background threads."""
        if self._servers:
            return self
        https = _Server((self._host, self._ports[0]), self, tls=self._tls)
        plain = _Server((self._host, self._ports[1]), self, tls=None)
        self._servers = [https, plain]
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, name="lab-issuer", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and close both sockets (idempotent)."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
            server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The authority host, e.g. `https://127.0.0.1:PORT` (what `JIT_AUTHORITY_HOST` is set to)."""
        return f"https://{self._host}:{self._bound_port(0)}"

    @property
    def identity_endpoint(self) -> str:
        """The managed-identity endpoint (what `IDENTITY_ENDPOINT` is set to)."""
        return f"http://{self._host}:{self._bound_port(1)}/msi/token"

    @property
    def issuer_v2(self) -> str:
        """The `iss` of v2 tokens."""
        return f"{self.url}/{self.tenant_id}/v2.0"

    @property
    def issuer_v1(self) -> str:
        """The `iss` of v1 tokens (the lab's counterpart of `https://sts.windows.net/{tenant}/`)."""
        return f"{self.url}/{self.tenant_id}/"

    @property
    def discovery_url(self) -> str:
        """The v2 OpenID metadata document."""
        return f"{self.issuer_v2}/.well-known/openid-configuration"

    @property
    def jwks_uri(self) -> str:
        """The published key set."""
        return f"{self.url}/{self.tenant_id}/discovery/v2.0/keys"

    @property
    def token_endpoint(self) -> str:
        """Where the lab's users sign in (see the module docstring for the form)."""
        return f"{self.url}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def authority(self) -> str:
        """What MSAL.js takes as `authority`: `https://127.0.0.1:PORT/{tenant}`."""
        return f"{self.url}/{self.tenant_id}"

    @property
    def authorize_endpoint(self) -> str:
        """Where a SPA sends the browser to sign in (code + PKCE; lab/issuer_authorize.py)."""
        return f"{self.url}/{self.tenant_id}/oauth2/v2.0/authorize"

    @property
    def end_session_endpoint(self) -> str:
        """Where a SPA sends the browser to sign out."""
        return f"{self.url}/{self.tenant_id}/oauth2/v2.0/logout"

    def _bound_port(self, index: int) -> int:
        if not self._servers:
            raise RuntimeError("TokenIssuer is not started")
        return int(self._servers[index].server_address[1])

    # -- the single-page application -------------------------------------------------------------------------

    @property
    def spa_client_id(self) -> str:
        """The client id of the lab's single-page application (MSAL.js `clientId`)."""
        return self._spa.client_id

    @property
    def api_scope_uri(self) -> str:
        """The broker's delegated scope in full, as a SPA asks for it: `api://jit-broker-lab/user_impersonation`."""
        return f"{self.scenario.tenant.app_id_uri}/{self.api_scope}"

    @property
    def api_resources(self) -> frozenset[str]:
        """The names the broker's API goes by in scopes: app ID URI, client id, `api://{client id}`."""
        tenant = self.scenario.tenant
        return frozenset({tenant.app_id_uri, tenant.api_client_id, f"api://{tenant.api_client_id}"})

    def register_redirect_uri(self, uri: str) -> str:
        """Register a redirect URI of the SPA at run time (idempotent); returns it. ValueError if Entra would
        refuse it: https:// anywhere, http:// on loopback only, no fragment, at most 256 characters."""
        return self._spa.register_redirect_uri(uri)

    def unregister_redirect_uri(self, uri: str) -> None:
        """Forget a redirect URI of the SPA."""
        self._spa.unregister_redirect_uri(uri)

    @property
    def redirect_uris(self) -> tuple[str, ...]:
        """The SPA's registered redirect URIs."""
        return self._spa.redirect_uris

    def allows_origin(self, origin: str | None) -> bool:
        """True when a page at `origin` (a registered redirect URI's origin) may read answers cross-origin."""
        return self._spa.allows_origin(origin)

    def msal_config(self, redirect_uri: str) -> dict[str, Any]:
        """The MSAL.js `PublicClientApplication` configuration for a page at `redirect_uri` (see the module
        docstring); sign in with `{"scopes": [issuer.api_scope_uri]}`."""
        return {
            "auth": {
                "clientId": self.spa_client_id,
                "authority": self.authority,
                "knownAuthorities": [urlsplit(self.url).netloc],
                "redirectUri": redirect_uri,
                "postLogoutRedirectUri": redirect_uri,
            },
            "cache": {"cacheLocation": "sessionStorage"},
        }

    def id_token_claims(
        self,
        user: UserSpec | str,
        client_id: str | None = None,
        *,
        nonce: str | None = None,
        now: int | None = None,
    ) -> dict[str, Any]:
        """The claims of a v2 ID token for `user` signing in to `client_id` (the SPA by default): `aud` the
        client, `nonce` when given, `oid`, `preferred_username`, `name`, `tid`; app roles only when the client
        is the broker's own app registration (Entra puts the roles of the app signed in to). No `scp`, no
        `azp`: not an access token."""
        spec = self.scenario.user(user) if isinstance(user, str) else user
        client_id = client_id or self.spa_client_id
        now = int(time.time()) if now is None else now
        tenant = self.scenario.tenant
        claims: dict[str, Any] = {
            "aud": client_id,
            "iss": self.issuer_v2,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_S,
            "name": spec.display_name,
            "oid": spec.oid,
            "preferred_username": spec.upn,
            "sub": _pairwise_sub(spec.oid, client_id),
            "tid": tenant.tenant_id,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        if spec.roles and client_id.lower() == tenant.api_client_id.lower():
            claims["roles"] = list(spec.roles)
        return claims

    # -- keys ------------------------------------------------------------------------------------------------

    @property
    def signing_key(self) -> SigningKey:
        """The key new tokens are signed with (the newest)."""
        with self._lock:
            return self._keys[-1]

    def jwks(self) -> dict[str, Any]:
        """The published key set: every key not yet retired."""
        with self._lock:
            return {"keys": [key.public_jwk() for key in self._keys]}

    def public_key(self, kid: str) -> rsa.RSAPublicKey | None:
        """The published public key with this `kid`, if any."""
        with self._lock:
            for key in self._keys:
                if key.kid == kid:
                    return key.private_key.public_key()
        return None

    def rotate_keys(self) -> str:
        """Add a new signing key and publish it beside the old ones; returns the new `kid`."""
        key = SigningKey.generate()
        with self._lock:
            self._keys.append(key)
        return key.kid

    def retire_old_keys(self) -> None:
        """Stop publishing every key but the newest, so tokens signed with them no longer verify."""
        with self._lock:
            self._keys = self._keys[-1:]

    # -- tokens ----------------------------------------------------------------------------------------------

    def sign(self, claims: Mapping[str, Any], *, key: SigningKey | None = None) -> str:
        """An RS256 JWT of `claims`, signed like Entra does (`typ: JWT`, `kid`)."""
        key = key or self.signing_key
        headers = {"kid": key.kid, "typ": "JWT"}
        return jwt.encode(dict(claims), key.private_key, algorithm="RS256", headers=headers)

    def user_claims(
        self, user: UserSpec | str, *, version: str | None = None, now: int | None = None
    ) -> dict[str, Any]:
        """The claims of an access token for the broker's API for `user`, v2 by default."""
        spec = self.scenario.user(user) if isinstance(user, str) else user
        version = version or self.api_token_version
        now = int(time.time()) if now is None else now
        tenant = self.scenario.tenant
        claims: dict[str, Any] = {
            "tid": tenant.tenant_id,
            "oid": spec.oid,
            "name": spec.display_name,
            "scp": self.api_scope,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_S,
            "uti": _b64url(secrets.token_bytes(16)),
        }
        if spec.roles:  # Entra omits `roles` when the user holds no app role.
            claims["roles"] = list(spec.roles)
        if version == "2":
            claims |= {
                "iss": self.issuer_v2,
                "aud": tenant.api_client_id,
                "sub": _pairwise_sub(spec.oid, tenant.api_client_id),
                "preferred_username": spec.upn,
                "azp": AZURE_CLI_CLIENT_ID,
                "azpacr": "0",
                "ver": "2.0",
            }
        elif version == "1":
            claims |= {
                "iss": self.issuer_v1,
                "aud": tenant.app_id_uri,
                "sub": _pairwise_sub(spec.oid, tenant.app_id_uri),
                "upn": spec.upn,
                "unique_name": spec.upn,
                "appid": AZURE_CLI_CLIENT_ID,
                "appidacr": "0",
                "ver": "1.0",
            }
        else:
            raise ValueError(f"token version must be '1' or '2', not {version!r}")
        return claims

    def token(self, user_name: str, *, version: str | None = None, **claim_overrides: Any) -> str:
        """A signed access token for the broker's API; overrides replace claims, a None override drops one."""
        claims = self.user_claims(user_name, version=version)
        for name, value in claim_overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return self.sign(claims)

    def app_claims(
        self, app: ClientApp | None = None, *, version: str | None = None, now: int | None = None
    ) -> dict[str, Any]:
        """The claims of an app-only access token for the broker's API (client credentials), v2 by default."""
        app = app or LAB_DAEMON_APP
        version = version or self.api_token_version
        now = int(time.time()) if now is None else now
        tenant = self.scenario.tenant
        claims: dict[str, Any] = {
            "tid": tenant.tenant_id,
            "oid": app.principal_id,
            "sub": app.principal_id,
            "idtyp": "app",
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_S,
            "uti": _b64url(secrets.token_bytes(16)),
        }
        if app.roles:
            claims["roles"] = list(app.roles)
        if version == "2":
            claims |= {
                "iss": self.issuer_v2,
                "aud": tenant.api_client_id,
                "azp": app.client_id,
                "azpacr": "1",
                "ver": "2.0",
            }
        elif version == "1":
            claims |= {
                "iss": self.issuer_v1,
                "aud": tenant.app_id_uri,
                "appid": app.client_id,
                "appidacr": "1",
                "ver": "1.0",
            }
        else:
            raise ValueError(f"token version must be '1' or '2', not {version!r}")
        return claims

    def app_token(
        self, app: ClientApp | None = None, *, version: str | None = None, **claim_overrides: Any
    ) -> str:
        """A signed app-only token for the broker's API; overrides replace claims, None drops one."""
        claims = self.app_claims(app, version=version)
        for name, value in claim_overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return self.sign(claims)

    def managed_identity_claims(self, resource: str, *, now: int | None = None) -> dict[str, Any]:
        """The claims of the broker's managed-identity token for `resource` (v1-shaped, like Entra's)."""
        now = int(time.time()) if now is None else now
        identity = self.managed_identity
        return {
            "aud": ARM_AUDIENCE if resource in ARM_RESOURCES else resource,
            "iss": self.issuer_v1,
            "tid": self.tenant_id,
            "oid": identity.principal_id,
            "sub": identity.principal_id,
            "appid": identity.client_id,
            "appidacr": "2",
            "idtyp": "app",
            "xms_mirid": identity.resource_id,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_S,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }

    def managed_identity_token(self, resource: str = ARM_AUDIENCE) -> str:
        """In-process: the token the managed-identity endpoint would give for `resource`."""
        return self.sign(self.managed_identity_claims(resource))

    def arm_token_validator(self, token: str) -> bool:
        """True when `token` is one ARM would accept from this tenant: lab-signed, ARM audience, in date."""
        try:
            header = jwt.get_unverified_header(token)
            key = self.public_key(str(header.get("kid", "")))
            if key is None:
                return False
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=sorted(ARM_RESOURCES),
                issuer=[self.issuer_v1, self.issuer_v2],
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "tid"]},
                leeway=60,
            )
        except jwt.PyJWTError:
            return False
        return bool(claims.get("tid") == self.tenant_id)

    # -- request log -----------------------------------------------------------------------------------------

    def requests(self) -> list[tuple[str, str, int]]:
        """Every request served so far as (method, path, status); tests count JWKS fetches with it."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._lock:
            self._log.clear()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._log.append((method, path, status))

    # -- HTTP handlers (called from _Handler) ----------------------------------------------------------------

    def _metadata(self, version: str) -> dict[str, Any]:
        base = f"{self.url}/{self.tenant_id}"
        v2 = version == "2"
        meta: dict[str, Any] = {
            "issuer": self.issuer_v2 if v2 else self.issuer_v1,
            "authorization_endpoint": f"{base}/oauth2/{'v2.0/' if v2 else ''}authorize",
            "token_endpoint": f"{base}/oauth2/{'v2.0/' if v2 else ''}token",
            "jwks_uri": f"{base}/discovery/{'v2.0/' if v2 else ''}keys",
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "nbf",
                "name",
                "nonce",
                "oid",
                "preferred_username",
                "tid",
                "ver",
            ],
            "tenant_region_scope": "EU",
        }
        if v2:  # what the lab's SPA sign-in serves (lab/issuer_authorize.py)
            meta |= {
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "response_modes_supported": ["query", "fragment"],
                "code_challenge_methods_supported": ["S256"],
                "request_uri_parameter_supported": False,
            }
        return meta

    def _handle_get(self, tenant: str, rest: str) -> tuple[int, dict[str, Any]]:
        if tenant not in (self.tenant_id, "common", "organizations"):
            return 400, _aad_error("invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        if rest in ("v2.0/.well-known/openid-configuration", ".well-known/openid-configuration"):
            if tenant != self.tenant_id:
                return 400, _aad_error("invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
            return 200, self._metadata("2" if rest.startswith("v2.0") else "1")
        if rest in ("discovery/v2.0/keys", "discovery/keys"):
            return 200, self.jwks()
        return 404, {"error": "not_found", "error_description": f"No such endpoint: {rest}"}

    def _handle_token(
        self, tenant: str, form: Mapping[str, str], origin: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        if tenant != self.tenant_id:
            return 400, _aad_error("invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        grant_type = form.get("grant_type", "")
        if grant_type in ("authorization_code", "refresh_token"):
            return self._spa_grant(grant_type, form, origin)
        if grant_type == "client_credentials":
            return self._client_credentials(tenant, form)
        if grant_type == "password":
            return self._password(tenant, form)
        return 400, _aad_error(
            "unsupported_grant_type", 70003, f"The app requested unsupported grant type '{grant_type}'."
        )

    def _password(self, tenant: str, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """The lab's sign-in for tools: a scenario user's token by name or UPN, no password checked."""
        username = form.get("username", "")
        user = next((u for u in self.scenario.users if username in (u.name, u.upn)), None)
        if user is None:
            return 400, _aad_error(
                "invalid_grant", 50034, f"The user account {username} does not exist in directory {tenant}."
            )
        scopes = form.get("scope", "").split()
        resource = next((s.removesuffix("/.default") for s in scopes if s.endswith("/.default")), None)
        api_resources = self.api_resources
        azp = form.get("client_id") or AZURE_CLI_CLIENT_ID
        if resource in api_resources:
            claims = self.user_claims(user)
            claims["azp" if claims["ver"] == "2.0" else "appid"] = azp
        elif resource in ARM_RESOURCES:
            claims = self.user_claims(user, version="1")
            claims |= {"aud": ARM_AUDIENCE, "appid": azp}
            claims.pop("roles", None)
            claims["scp"] = API_SCOPE_NAME
        else:
            return 400, _aad_error(
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named {tenant}.",
            )
        access_token = self.sign(claims)
        return 200, {
            "token_type": "Bearer",
            "scope": " ".join(scopes),
            "expires_in": TOKEN_LIFETIME_S,
            "ext_expires_in": TOKEN_LIFETIME_S,
            "access_token": access_token,
        }

    def _spa_grant(
        self, grant_type: str, form: Mapping[str, str], origin: str | None
    ) -> tuple[int, dict[str, Any]]:
        """The SPA's grants (lab/issuer_authorize.py): a code with its verifier, or a refresh token."""
        try:
            if grant_type == "authorization_code":
                return 200, self._spa.redeem_code(form, origin)
            return 200, self._spa.redeem_refresh_token(form, origin)
        except AadError as refusal:
            return refusal.status, refusal.body()

    def _client_credentials(self, tenant: str, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """An application's own token (no user): what a daemon gets with its client id and secret."""
        client_id = form.get("client_id", "")
        app = next((a for a in self.client_apps if a.client_id == client_id), None)
        if app is None:
            return 400, _aad_error(
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        scope = form.get("scope", "")
        if not scope.endswith("/.default") or scope.removesuffix("/.default") not in self.api_resources:
            return 400, _aad_error(
                "invalid_resource",
                500011,
                f"The resource principal named {scope.removesuffix('/.default')} was not found in the tenant "
                f"named {tenant}.",
            )
        return 200, {
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_S,
            "ext_expires_in": TOKEN_LIFETIME_S,
            "access_token": self.sign(self.app_claims(app)),
        }

    def _handle_identity(
        self, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        if headers.get("x-identity-header") != self.identity_header:
            return 401, {"statusCode": 401, "message": "Missing or invalid X-IDENTITY-HEADER."}
        if query.get("api-version") != IDENTITY_API_VERSION:
            return 400, {"statusCode": 400, "message": f"api-version must be {IDENTITY_API_VERSION}."}
        resource = query.get("resource", "")
        if not resource:
            return 400, {"statusCode": 400, "message": "Missing required parameter 'resource'."}
        client_id = query.get("client_id")
        if client_id is not None and client_id != self.managed_identity.client_id:
            return 400, {"statusCode": 400, "message": f"No managed identity with client_id {client_id}."}
        claims = self.managed_identity_claims(resource)
        return 200, {
            "access_token": self.sign(claims),
            "expires_on": str(claims["exp"]),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": self.managed_identity.client_id,
        }


class _Server(ThreadingHTTPServer):
    """A threading HTTP server whose TLS handshake runs in the request's own thread, not the accept loop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], issuer: TokenIssuer, *, tls: ssl.SSLContext | None) -> None:
        self.issuer = issuer
        self.tls = tls
        self._open: set[socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        assert isinstance(request, socket)
        raw = request
        with self._open_lock:
            self._open.add(raw)
        try:
            if self.tls is not None:
                request.settimeout(10)
                try:
                    request = self.tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
            super().finish_request(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(raw)

    def close_connections(self) -> None:
        """End kept-alive connections too, so a stopped issuer really stops answering."""
        with self._open_lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "jit-lab-issuer"
    timeout = 30
    MAX_BODY: ClassVar[int] = 64 * 1024

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines may carry query strings, and the log is kept in `TokenIssuer.requests()`."""

    def do_GET(self) -> None:
        """Metadata, keys, sign-in, sign-out; on the plain-HTTP listener, the managed-identity endpoint."""
        issuer = self.server.issuer
        parts = urlsplit(self.path)
        if self.server.tls is None:
            if parts.path != "/msi/token":
                self._reply(404, {"statusCode": 404, "message": "Not found."})
                return
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            self._reply(*issuer._handle_identity(query, headers))
            return
        tenant, _, rest = parts.path.lstrip("/").partition("/")
        if rest in (_AUTHORIZE, _LOGOUT):
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            accept = self.headers.get("Accept", "")
            if rest == _AUTHORIZE:
                self._send(issuer._spa.authorize("GET", tenant, query, accept))
            else:
                self._send(issuer._spa.logout(tenant, query, accept))
            return
        self._reply(*issuer._handle_get(tenant, rest))

    def do_POST(self) -> None:
        """The token endpoint and the sign-in page's form."""
        issuer = self.server.issuer
        parts = urlsplit(self.path)
        tenant, _, rest = parts.path.lstrip("/").partition("/")
        length = int(self.headers.get("Content-Length") or 0)
        if self.server.tls is None or rest not in (_TOKEN_PATH, _AUTHORIZE) or length > self.MAX_BODY:
            self._reply(404, {"error": "not_found", "error_description": "No such endpoint."})
            return
        body = self.rfile.read(length).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        if rest == _AUTHORIZE:
            self._send(issuer._spa.authorize("POST", tenant, form, self.headers.get("Accept", "")))
            return
        self._reply(*issuer._handle_token(tenant, form, self.headers.get("Origin")))

    def do_OPTIONS(self) -> None:
        """CORS preflight for what a browser page reads cross-origin: discovery, keys, the token endpoint."""
        parts = urlsplit(self.path)
        _, _, rest = parts.path.lstrip("/").partition("/")
        if self.server.tls is None or rest not in _CORS_PATHS:
            self._reply(404, {"error": "not_found", "error_description": "No such endpoint."})
            return
        headers = [("Allow", "GET, POST, OPTIONS")]
        if self.server.issuer.allows_origin(self.headers.get("Origin")):
            headers += [
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                ("Access-Control-Max-Age", "600"),
            ]
            requested = cors_request_headers(self.headers.get("Access-Control-Request-Headers", ""))
            if requested:
                headers.append(("Access-Control-Allow-Headers", requested))
            if self.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
                headers.append(("Access-Control-Allow-Private-Network", "true"))
        self._send(HttpAnswer(204, headers=tuple(headers)))

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        self._send(HttpAnswer.json(status, body))

    def _send(self, answer: HttpAnswer) -> None:
        self.server.issuer._record(self.command, urlsplit(self.path).path, answer.status)
        self.send_response(answer.status)
        if answer.body or answer.status not in (204, 302):
            self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in answer.headers:
            self.send_header(name, value)
        if self.server.tls is not None:
            self._cors_headers()
        self.end_headers()
        self.wfile.write(answer.body)

    def _cors_headers(self) -> None:
        """Let a registered page read the answer: its origin, never `*`, and a cache keyed on `Origin`."""
        self.send_header("Vary", "Origin")
        origin = self.headers.get("Origin")
        if origin and self.server.issuer.allows_origin(origin):
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Expose-Headers", "x-ms-request-id")
        if self.command != "OPTIONS":
            self.send_header("x-ms-request-id", str(uuid.uuid4()))


_AUTHORIZE = "oauth2/v2.0/authorize"
_LOGOUT = "oauth2/v2.0/logout"
_TOKEN_PATH = "oauth2/v2.0/token"  # noqa: S105 - a path, not a secret
_CORS_PATHS = frozenset(
    {
        "v2.0/.well-known/openid-configuration",
        ".well-known/openid-configuration",
        "discovery/v2.0/keys",
        "discovery/keys",
        _TOKEN_PATH,
    }
)


def _aad_error(error: str, code: int, description: str) -> dict[str, Any]:
    """An error body shaped like Entra's token/metadata errors."""
    return aad_error_body(error, code, description)


def _pairwise_sub(oid: str, audience: str) -> str:
    """Entra's `sub` is pairwise: stable per user and application, different across applications."""
    return _b64url(hashlib.sha256(f"{oid}|{audience}".encode()).digest())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
