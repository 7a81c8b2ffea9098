"""The lab issuer's sign-in for a single-page application: authorization code + PKCE, as Entra ID does it.

`TokenIssuer` (lab/issuer.py) serves this on its HTTPS listener, so MSAL.js (`@azure/msal-browser` v3 to
v5, a SPA public client) signs in against the lab exactly as against Entra ID, and the broker verifies the
same tokens:

* `GET /{tenant}/oauth2/v2.0/authorize` (the v2 metadata's `authorization_endpoint`): `client_id` (the
  lab's SPA client), `redirect_uri` (registered, exact match), `response_type=code`,
  `response_mode=fragment` (MSAL's default for SPAs) or `query` (the default when absent), `scope`
  (`openid profile offline_access email` and the broker's API scope: `{app_id_uri}/user_impersonation`,
  `{api_client_id}/user_impersonation` or either `/.default`; one resource only), `code_challenge` with
  `code_challenge_method=S256` (required: a missing challenge and `plain` are refused), `state` and
  `nonce` (echoed), `prompt` (`login`, `select_account`, `consent`, `create` show the page; `none`
  answers `login_required`, since the lab keeps no session), `login_hint` (name or UPN: that user is
  preselected). Answers a plain, server-rendered sign-in page (no script; a radio button per scenario
  user labelled with name, UPN and roles, then "Sign in" or "Cancel").
* `POST /{tenant}/oauth2/v2.0/authorize`: that page's form (`user=<scenario name>`,
  `action=sign_in|cancel`, the request's parameters again, checked again). Signing in redirects (302) to
  `redirect_uri` with `code`, `client_info` (when the request said `client_info=1`, as MSAL does),
  `state` and `session_state` in the fragment or query; Cancel redirects with `error=access_denied`. The
  code is single-use, lives 60 seconds (`AUTH_CODE_LIFETIME_S`) and is bound to the client, redirect URI,
  challenge, scopes, nonce and user.
* `POST /{tenant}/oauth2/v2.0/token`, `grant_type=authorization_code`: `client_id`, `code`, `redirect_uri`,
  `code_verifier`; `grant_type=refresh_token`: `client_id`, `refresh_token`, `scope`. Both must come
  cross-origin (an `Origin` header), as Entra demands of SPA clients (AADSTS9002327). The answer is Entra's:
  `token_type`, `scope`, `expires_in`, `ext_expires_in`, `access_token` (the broker's API token for the user,
  `azp` the SPA client), `refresh_token` and `refresh_token_expires_in` (when `offline_access` was asked for;
  SPA refresh tokens live 24 hours from sign-in and are not extended by use), `id_token` (when `openid` was:
  `aud` the SPA client, `nonce`, `oid`, `preferred_username`, `name`, `tid`) and `client_info` (base64url of
  `{"uid": oid, "utid": tid}`, from which MSAL builds its account).
* `GET /{tenant}/oauth2/v2.0/logout` (`end_session_endpoint`): stateless, nothing to clear; redirects to
  `post_logout_redirect_uri` (with `state`) when it is a registered redirect URI, else shows "signed out".

Refusals never redirect to an unknown client or an unregistered redirect URI: those get an error page
(HTML, or Entra's error JSON when the request accepts only JSON). Other authorize errors go back to the
redirect URI as `error`, `error_description` (`AADSTS…`) and `state`, which MSAL turns into a `ServerError`
or an `InteractionRequiredAuthError`. Token errors are Entra's JSON (`error`, `error_description`,
`error_codes`). The AADSTS codes are Entra's where the lab knows them and close stand-ins otherwise.

CORS: discovery, JWKS and the token endpoint answer `Access-Control-Allow-Origin: <Origin>` (and the
OPTIONS preflight MSAL's `X-AnchorMailbox` header causes) when the request's `Origin` is the origin of a
registered redirect URI; other origins get no CORS headers.

Redirect URIs: `https://` anywhere, `http://` on loopback only (127.0.0.0/8, ::1, localhost), no fragment,
as Entra allows for SPAs; given to `TokenIssuer(redirect_uris=[…])` or, once the page's port is known,
`issuer.register_redirect_uri("http://127.0.0.1:<port>/")`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from lab.scenario import UserSpec

if TYPE_CHECKING:
    from lab.issuer import TokenIssuer

AUTH_CODE_LIFETIME_S = 60
REFRESH_TOKEN_LIFETIME_S = 24 * 3600  # Entra's fixed lifetime for refresh tokens issued to SPAs
SPENT_CODE_MEMORY_S = 600  # how long a redeemed code is remembered, so a replay is named as one
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
PROMPTS = ("login", "select_account", "consent", "create", "none")
RESPONSE_MODES = ("fragment", "query")
MAX_REDIRECT_URI_CHARS = 256  # Entra's limit for a redirect URI
MAX_PARAM_CHARS = 4096
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_CARRIED = (  # the authorize parameters the sign-in page's form carries back
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "login_hint",
    "client_info",
)


@dataclass(frozen=True)
class HttpAnswer:
    """One HTTP response: status, body, content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, body: Mapping[str, Any]) -> HttpAnswer:
        """A JSON answer."""
        return cls(status, json.dumps(body).encode(), "application/json; charset=utf-8")

    @classmethod
    def redirect(cls, location: str) -> HttpAnswer:
        """A 302 to `location`, never cached."""
        return cls(302, headers=(("Location", location), ("Referrer-Policy", "no-referrer")))


@dataclass(frozen=True)
class AuthorizationRequest:
    """An authorize request that passed every check: what a code issued for it is bound to."""

    client_id: str
    redirect_uri: str
    response_mode: str
    scopes: tuple[str, ...]  # as asked for, OIDC scopes included
    api_scopes: tuple[str, ...]  # the broker's API scopes among them
    code_challenge: str
    state: str | None
    nonce: str | None
    prompt: str | None
    login_hint: str | None
    client_info: bool
    carried: tuple[tuple[str, str], ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class _Code:
    request: AuthorizationRequest
    user: str
    expires_at: float


@dataclass(frozen=True)
class _Refresh:
    client_id: str
    user: str
    expires_at: float


class AadError(Exception):
    """An Entra-shaped refusal: OAuth `error`, AADSTS number and words."""

    def __init__(self, error: str, code: int, description: str, status: int = 400) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.error = error
        self.code = code
        self.description = description
        self.status = status

    def body(self) -> dict[str, Any]:
        """Entra's JSON error body."""
        return aad_error_body(self.error, self.code, self.description)


class _PageError(AadError):
    """A refusal shown as an error page: the client or its redirect URI cannot be trusted with a redirect."""


def aad_error_body(error: str, code: int, description: str) -> dict[str, Any]:
    """An error body shaped like Entra's token/metadata errors."""
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {description}",
        "error_codes": [code],
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }


def check_redirect_uri(uri: str) -> str:
    """`uri` if Entra would let a SPA register it; ValueError saying why not otherwise."""
    if not isinstance(uri, str) or not uri or uri != uri.strip() or len(uri) > MAX_REDIRECT_URI_CHARS:
        raise ValueError(f"a redirect URI is an absolute URL of at most {MAX_REDIRECT_URI_CHARS} characters")
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"redirect URI {uri!r} must be an absolute https:// (or loopback http://) URL")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri):
        raise ValueError(f"redirect URI {uri!r} may carry no spaces or control characters")
    if "#" in uri or "*" in uri or "@" in parts.netloc:
        raise ValueError(f"redirect URI {uri!r} may carry no fragment, wildcard or user information")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(f"redirect URI {uri!r}: http:// is allowed for loopback addresses only")
    _ = parts.port  # ValueError for a malformed port
    return uri


def origin_of(uri: str) -> str:
    """The web origin of an absolute URL, as a browser writes it in `Origin` (default ports left out)."""
    parts = urlsplit(uri)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None and port != default else "")


def client_info(user: UserSpec, tenant_id: str) -> str:
    """Entra's `client_info`: base64url JSON naming the account's home object id and tenant."""
    raw = json.dumps({"uid": user.oid, "utid": tenant_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a code verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SpaSignIn:
    """The lab tenant's single-page application: its registered redirect URIs, codes and refresh tokens.

    State lives in memory only (codes, refresh tokens); nothing about who is signed in is kept, so logout has
    nothing to clear and `prompt=none` always answers `login_required`. Thread-safe.
    """

    def __init__(
        self,
        issuer: TokenIssuer,
        *,
        client_id: str,
        redirect_uris: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuer = issuer
        self.client_id = client_id
        self._clock = clock
        self._lock = threading.Lock()
        self._redirect_uris: list[str] = []
        self._codes: dict[str, _Code] = {}
        self._spent: dict[str, tuple[float, str | None]] = {}  # code -> (forget at, refresh token it gave)
        self._refresh: dict[str, _Refresh] = {}
        for uri in redirect_uris:
            self.register_redirect_uri(uri)

    # -- registration ----------------------------------------------------------------------------------------

    def register_redirect_uri(self, uri: str) -> str:
        """Add a SPA redirect URI (idempotent); ValueError when Entra would refuse it. Returns it."""
        check_redirect_uri(uri)
        with self._lock:
            if uri not in self._redirect_uris:
                self._redirect_uris.append(uri)
        return uri

    def unregister_redirect_uri(self, uri: str) -> None:
        """Remove a redirect URI (no error when it is not registered)."""
        with self._lock:
            if uri in self._redirect_uris:
                self._redirect_uris.remove(uri)

    @property
    def redirect_uris(self) -> tuple[str, ...]:
        """The registered redirect URIs, in registration order."""
        with self._lock:
            return tuple(self._redirect_uris)

    def is_registered(self, uri: str) -> bool:
        """True when `uri` is exactly a registered redirect URI."""
        with self._lock:
            return uri in self._redirect_uris

    def allows_origin(self, origin: str | None) -> bool:
        """True when a browser page at `origin` may read the issuer's answers (CORS)."""
        if not origin:
            return False
        with self._lock:
            return any(origin_of(uri) == origin.lower() for uri in self._redirect_uris)

    # -- authorize -------------------------------------------------------------------------------------------

    def authorize(self, method: str, tenant: str, params: Mapping[str, str], accept: str = "") -> HttpAnswer:
        """The authorize endpoint: the sign-in page (GET, or POST without a choice) or the code (POST)."""
        try:
            redirect_uri = self._trusted_redirect(tenant, params)
        except _PageError as refusal:
            return _error_page(refusal, accept)
        mode = params.get("response_mode") or "query"
        state = params.get("state")
        try:
            if mode not in RESPONSE_MODES:
                mode = "query"
                raise AadError(
                    "invalid_request", 90023, f"response_mode '{params['response_mode']}' is not supported."
                )
            request = self._check_request(params, redirect_uri, mode)
            action = params.get("action") if method == "POST" else None
            if action is None:
                if request.prompt == "none":
                    raise AadError(
                        "login_required", 50058, "A silent sign-in request was sent but no user is signed in."
                    )
                return self._page(tenant, request)
            if action == "cancel":
                raise AadError("access_denied", 65004, "User declined to consent to access the app.")
            user = self._user(params.get("user", ""))
            if action != "sign_in" or user is None:
                return self._page(tenant, request, problem="Choose a user to sign in as.", status=400)
            return self._issue_code(request, user)
        except AadError as refusal:
            answer = {"error": refusal.error, "error_description": str(refusal)}
            if state is not None:
                answer["state"] = state
            return HttpAnswer.redirect(_location(redirect_uri, mode, answer))

    def _trusted_redirect(self, tenant: str, params: Mapping[str, str]) -> str:
        """The request's redirect URI once tenant, client and URI are known; `_PageError` otherwise."""
        if tenant != self._issuer.tenant_id:
            raise _PageError("invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        client_id = params.get("client_id", "")
        if not client_id:
            raise _PageError(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            )
        if client_id.lower() != self.client_id.lower():
            raise _PageError(
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri:
            raise _PageError(
                "invalid_request", 900144, "The request must contain the following parameter: 'redirect_uri'."
            )
        if not self.is_registered(redirect_uri):
            raise _PageError(
                "invalid_request",
                50011,
                f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect "
                f"URIs configured for the application '{self.client_id}'. Register it first "
                "(TokenIssuer.register_redirect_uri).",
            )
        return redirect_uri

    def _check_request(self, params: Mapping[str, str], redirect_uri: str, mode: str) -> AuthorizationRequest:
        response_type = params.get("response_type", "")
        if response_type != "code":
            raise AadError(
                "unsupported_response_type",
                700054,
                f"response_type '{response_type}' is not enabled for the application; the lab issues "
                "codes only.",
            )
        for name in ("state", "nonce", "login_hint", "scope"):
            if len(params.get(name, "")) > MAX_PARAM_CHARS:
                raise AadError("invalid_request", 90023, f"The '{name}' parameter is too long.")
        scopes, api_scopes = self.parse_scopes(params.get("scope", ""))
        challenge = params.get("code_challenge", "")
        method = params.get("code_challenge_method", "")
        if not challenge:
            raise AadError(
                "invalid_request",
                9002325,
                "Proof Key for Code Exchange is required for cross-origin authorization code redemption.",
            )
        if method != "S256":
            raise AadError(
                "invalid_request",
                9002325,
                f"code_challenge_method '{method or 'plain'}' is not accepted: the lab requires S256 "
                "('plain', or no method, which means plain, is refused).",
            )
        if not _CHALLENGE.fullmatch(challenge):
            raise AadError(
                "invalid_request",
                9002325,
                "The code_challenge is not an S256 challenge (43 base64url characters).",
            )
        prompt = params.get("prompt") or None
        if prompt is not None and prompt not in PROMPTS:
            raise AadError("invalid_request", 90023, f"Invalid prompt value '{prompt}'.")
        carried = tuple((name, params[name]) for name in _CARRIED if params.get(name))
        return AuthorizationRequest(
            client_id=self.client_id,
            redirect_uri=redirect_uri,
            response_mode=mode,
            scopes=scopes,
            api_scopes=api_scopes,
            code_challenge=challenge,
            state=params.get("state"),
            nonce=params.get("nonce") or None,
            prompt=prompt,
            login_hint=params.get("login_hint") or None,
            client_info=params.get("client_info") == "1",
            carried=carried,
        )

    def parse_scopes(self, raw: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(every scope, the broker's API scopes among them); `AadError` for a scope the lab cannot grant."""
        scopes = tuple(dict.fromkeys(raw.split()))
        if not scopes:
            raise AadError(
                "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."
            )
        resources = {r.lower() for r in self._issuer.api_resources}
        api: list[str] = []
        for scope in scopes:
            if scope.lower() in OIDC_SCOPES:
                continue
            resource, _, value = scope.rpartition("/")
            if resource.lower() in resources and value in (".default", self._issuer.api_scope):
                api.append(scope)
                continue
            raise AadError(
                "invalid_scope",
                70011,
                f"The provided value for the input parameter 'scope' is not valid. The scope {scope} does "
                "not exist in the lab (it grants openid, profile, email, offline_access and the broker's "
                "API scope).",
            )
        return scopes, tuple(api)

    def _user(self, name: str) -> UserSpec | None:
        """The scenario user by name or UPN (UPNs compare without case, as Entra's sign-in names do)."""
        users = self._issuer.scenario.users
        return next((u for u in users if name and (name == u.name or name.lower() == u.upn.lower())), None)

    def _issue_code(self, request: AuthorizationRequest, user: UserSpec) -> HttpAnswer:
        code = secrets.token_urlsafe(48)
        now = self._clock()
        with self._lock:
            self._forget_expired(now)
            self._codes[code] = _Code(request, user.name, now + AUTH_CODE_LIFETIME_S)
        answer = {"code": code}
        if request.client_info:
            answer["client_info"] = client_info(user, self._issuer.tenant_id)
        if request.state is not None:
            answer["state"] = request.state
        answer["session_state"] = str(uuid.uuid4())
        return HttpAnswer.redirect(_location(request.redirect_uri, request.response_mode, answer))

    def _forget_expired(self, now: float) -> None:
        """Drop expired codes, refresh tokens and old spent-code records (call with the lock held)."""
        for code in [c for c, entry in self._codes.items() if entry.expires_at < now - SPENT_CODE_MEMORY_S]:
            del self._codes[code]
        for code in [c for c, (forget_at, _) in self._spent.items() if forget_at < now]:
            del self._spent[code]
        for token in [t for t, entry in self._refresh.items() if entry.expires_at < now]:
            del self._refresh[token]

    # -- the sign-in page ------------------------------------------------------------------------------------

    def _page(
        self, tenant: str, request: AuthorizationRequest, *, problem: str | None = None, status: int = 200
    ) -> HttpAnswer:
        users = self._issuer.scenario.users
        hint = self._user(request.login_hint or "")
        rows = []
        for index, user in enumerate(users):
            checked = " checked" if hint is not None and user.name == hint.name else ""
            roles = ", ".join(user.roles) if user.roles else "none"
            rows.append(
                f'<div class="user"><input type="radio" name="user" id="user-{index}" '
                f'value="{_attr(user.name)}" required{checked}>\n'
                f'<label for="user-{index}"><span class="name">{_text(user.display_name)}</span> '
                f'<span class="upn">{_text(user.upn)}</span> '
                f'<span class="roles">Roles: {_text(roles)}</span></label></div>'
            )
        hidden = "\n".join(
            f'<input type="hidden" name="{_attr(name)}" value="{_attr(value)}">'
            for name, value in request.carried
        )
        alert = f'<p class="problem" role="alert">{_text(problem)}</p>\n' if problem else ""
        asked = ", ".join(request.scopes)
        body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - jit-broker lab</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>Sign in</h1>
<p>The jit-broker lab's stand-in for Microsoft Entra ID (tenant <code>{_text(tenant)}</code>). No password is
asked: choose a user of the scenario.</p>
<p>Application <code>{_text(request.client_id)}</code> at
<code>{_text(origin_of(request.redirect_uri))}</code> asks for: {_text(asked)}.</p>
{alert}<form method="post" action="/{_attr(tenant)}/oauth2/v2.0/authorize">
{hidden}
<fieldset>
<legend>Sign in as</legend>
{chr(10).join(rows)}
</fieldset>
<button type="submit" name="action" value="sign_in">Sign in</button>
<button type="submit" name="action" value="cancel" formnovalidate>Cancel</button>
</form>
</main>
</body>
</html>
"""
        csp = (
            f"default-src 'none'; style-src '{_STYLE_HASH}'; form-action 'self' "
            f"{origin_of(request.redirect_uri)}; frame-ancestors 'none'; base-uri 'none'"
        )
        return _html(status, body, csp)

    # -- the token endpoint ----------------------------------------------------------------------------------

    def redeem_code(self, form: Mapping[str, str], origin: str | None) -> dict[str, Any]:
        """`grant_type=authorization_code`: the tokens for a code; `AadError` saying why not."""
        client_id = self._check_client(form, origin)
        code = form.get("code", "")
        if not code:
            raise AadError(
                "invalid_request", 900144, "The request body must contain the following parameter: 'code'."
            )
        now = self._clock()
        with self._lock:
            spent = self._spent.get(code)
            if spent is not None:
                if spent[1] is not None:  # a replayed code revokes what it gave (RFC 6749 section 4.1.2)
                    self._refresh.pop(spent[1], None)
                    self._spent[code] = (spent[0], None)
                raise AadError("invalid_grant", 54005, "OAuth2 Authorization code was already redeemed.")
            entry = self._codes.get(code)
            if entry is None:
                raise AadError(
                    "invalid_grant", 9002313, "Invalid request. The authorization code is not valid."
                )
            if now > entry.expires_at:
                raise AadError(
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                )
            del self._codes[code]  # single use: whatever follows, this code is spent
            self._spent[code] = (now + SPENT_CODE_MEMORY_S, None)
        request = entry.request
        if client_id.lower() != request.client_id.lower():
            raise AadError(
                "invalid_grant", 70000, "The provided authorization code was issued to another application."
            )
        redirect_uri = form.get("redirect_uri", "")
        if redirect_uri != request.redirect_uri:
            raise AadError(
                "invalid_grant",
                500112,
                f"The reply address '{redirect_uri}' does not match the reply address "
                f"'{request.redirect_uri}' provided when requesting Authorization code.",
            )
        verifier = form.get("code_verifier", "")
        if not verifier:
            raise AadError(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'code_verifier'.",
            )
        if not _VERIFIER.fullmatch(verifier) or not hmac.compare_digest(
            s256(verifier), request.code_challenge
        ):
            raise AadError(
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            )
        user = self._issuer.scenario.user(entry.user)
        refresh = None
        if "offline_access" in {s.lower() for s in request.scopes}:
            refresh = self._new_refresh(client_id, user, now + REFRESH_TOKEN_LIFETIME_S)
            with self._lock:
                self._spent[code] = (now + SPENT_CODE_MEMORY_S, refresh[0])
        return self._tokens(
            user,
            client_id=client_id,
            scopes=request.scopes,
            api_scopes=request.api_scopes,
            nonce=request.nonce,
            refresh=refresh,
            now=now,
        )

    def redeem_refresh_token(self, form: Mapping[str, str], origin: str | None) -> dict[str, Any]:
        """`grant_type=refresh_token`: fresh tokens and a new refresh token; `AadError` saying why not."""
        client_id = self._check_client(form, origin)
        token = form.get("refresh_token", "")
        if not token:
            raise AadError(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'refresh_token'.",
            )
        scopes, api_scopes = self.parse_scopes(form.get("scope", "") or "openid")
        now = self._clock()
        with self._lock:
            entry = self._refresh.get(token)
        if entry is None:
            raise AadError("invalid_grant", 9002313, "Invalid request. The refresh token is not valid.")
        if now > entry.expires_at:
            raise AadError(
                "invalid_grant",
                700084,
                "The refresh token was issued to a single page app (SPA), and therefore has a fixed, "
                "limited lifetime of 1.00:00:00, which cannot be extended. It is now expired and a new sign "
                "in request must be sent by the SPA to the sign in page.",
            )
        if client_id.lower() != entry.client_id.lower():
            raise AadError(
                "invalid_grant", 70000, "The provided refresh token was issued to another application."
            )
        user = self._issuer.scenario.user(entry.user)
        refresh = self._new_refresh(client_id, user, entry.expires_at)
        return self._tokens(
            user,
            client_id=client_id,
            scopes=scopes,
            api_scopes=api_scopes,
            nonce=None,
            refresh=refresh,
            now=now,
        )

    def _check_client(self, form: Mapping[str, str], origin: str | None) -> str:
        client_id = form.get("client_id", "")
        if not client_id:
            raise AadError(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            )
        if client_id.lower() != self.client_id.lower():
            raise AadError(
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self._issuer.tenant_id}'.",
            )
        if not origin:
            raise AadError(
                "invalid_request",
                9002327,
                "Tokens issued for the 'Single-Page Application' client-type may only be redeemed via "
                "cross-origin requests.",
            )
        return client_id

    def _new_refresh(self, client_id: str, user: UserSpec, expires_at: float) -> tuple[str, float]:
        token = secrets.token_urlsafe(64)
        with self._lock:
            self._forget_expired(self._clock())
            self._refresh[token] = _Refresh(client_id, user.name, expires_at)
        return token, expires_at

    def _tokens(
        self,
        user: UserSpec,
        *,
        client_id: str,
        scopes: tuple[str, ...],
        api_scopes: tuple[str, ...],
        nonce: str | None,
        refresh: tuple[str, float] | None,
        now: float,
    ) -> dict[str, Any]:
        issuer = self._issuer
        asked = {s.lower() for s in scopes}
        body: dict[str, Any] = {"token_type": "Bearer"}
        if api_scopes:
            claims = issuer.user_claims(user)
            claims["azp" if claims["ver"] == "2.0" else "appid"] = client_id
            full = f"{issuer.scenario.tenant.app_id_uri}/{issuer.api_scope}"
            granted = [full if s.endswith("/.default") else s for s in api_scopes]
            body |= {
                "scope": " ".join(dict.fromkeys(granted)),
                "expires_in": claims["exp"] - claims["iat"],
                "ext_expires_in": claims["exp"] - claims["iat"],
                "access_token": issuer.sign(claims),
            }
        else:
            body["scope"] = " ".join(s for s in scopes if s.lower() in OIDC_SCOPES)
        if refresh is not None:
            token, expires_at = refresh
            body["refresh_token"] = token
            body["refresh_token_expires_in"] = max(0, int(expires_at - now))
        if "openid" in asked:
            body["id_token"] = issuer.sign(issuer.id_token_claims(user, client_id, nonce=nonce))
        body["client_info"] = client_info(user, issuer.tenant_id)
        return body

    # -- logout ----------------------------------------------------------------------------------------------

    def logout(self, tenant: str, params: Mapping[str, str], accept: str = "") -> HttpAnswer:
        """The end-session endpoint: nothing to clear; back to `post_logout_redirect_uri` when registered."""
        if tenant != self._issuer.tenant_id:
            return _error_page(_PageError("invalid_tenant", 90002, f"Tenant '{tenant}' not found."), accept)
        target = params.get("post_logout_redirect_uri", "")
        if target and self.is_registered(target):
            state = params.get("state")
            if state is not None:
                target = (
                    f"{target}{'&' if '?' in target else '?'}{urlencode({'state': state}, quote_via=quote)}"
                )
            return HttpAnswer.redirect(target)
        note = (
            f"<p>The address to return to, <code>{_text(target)}</code>, is not a registered redirect URI, "
            "so the lab does not go there.</p>"
            if target
            else ""
        )
        return _html(
            200, _simple_page("Signed out", "<p>You have signed out of the lab.</p>" + note), _PLAIN_CSP
        )


def _location(redirect_uri: str, mode: str, params: Mapping[str, str]) -> str:
    encoded = urlencode(params, quote_via=quote)
    if mode == "fragment":
        return f"{redirect_uri}#{encoded}"
    return f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{encoded}"


def _error_page(refusal: AadError, accept: str) -> HttpAnswer:
    if "application/json" in accept and "text/html" not in accept:
        return HttpAnswer.json(refusal.status, refusal.body())
    content = (
        f"<p>Sorry, but the lab cannot sign you in.</p>\n<p><strong>{_text(refusal.error)}</strong>: "
        f"{_text(str(refusal))}</p>"
    )
    return _html(refusal.status, _simple_page("Sign-in refused", content), _PLAIN_CSP)


def _simple_page(title: str, content: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)} - jit-broker lab</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>{_text(title)}</h1>
{content}
</main>
</body>
</html>
"""


def _html(status: int, body: str, csp: str) -> HttpAnswer:
    headers = (
        ("Content-Security-Policy", csp),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    )
    return HttpAnswer(status, body.encode("utf-8"), "text/html; charset=utf-8", headers)


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def cors_request_headers(requested: str) -> str:
    """The preflight's `Access-Control-Request-Headers`, kept to well-formed header names."""
    names = [name.strip() for name in requested.split(",")]
    return ", ".join(name for name in names if _HEADER_NAME.fullmatch(name))


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0;background:#f3f2f1;color:#1b1b1b;line-height:1.4}"
    "main{max-width:36rem;margin:1rem auto;padding:1rem 1.5rem;background:#fff;border:1px solid #c8c6c4}"
    "fieldset{border:0;padding:0;margin:1rem 0}legend{font-weight:600;margin-bottom:.5rem}"
    ".user{display:flex;gap:.75rem;align-items:flex-start;padding:.5rem;border:1px solid #c8c6c4;"
    "margin:.25rem 0}.user input{margin-top:.3rem}.user label{display:flex;flex-direction:column}"
    ".upn,.roles{font-size:.9rem;color:#3b3a39}"
    "button{font:inherit;padding:.5rem 1.25rem;margin:.25rem .5rem .25rem 0}"
    ":focus-visible{outline:3px solid #0b5cad;outline-offset:2px}"
    ".problem{color:#a4262c;font-weight:600}code{word-break:break-all}"
)
_STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_PLAIN_CSP = (
    f"default-src 'none'; style-src '{_STYLE_HASH}'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
