"""The web page (docs/web.md): served at `/` by the broker's own app, from files shipped in the package.

`make setup` (`npm run build`) bundles `web/` — the page, its style, its script with MSAL.js from npm — into
`jitbroker/static/`, which the Functions package keeps (`.funcignore`). Nothing is loaded from a CDN: the page
asks the broker for its files and its settings, and the sign-in authority for tokens, and nothing else.

Routes (outside the OpenAPI document, no token needed; every answer carries the page's security headers):
- `GET /`: the page (`index.html`);
- `GET /web/config.json`: what MSAL.js needs to sign in: the authority (`{JIT_AUTHORITY_HOST}/{tenant}`),
  the SPA's client id (`JIT_WEB_CLIENT_ID`, by default the broker's own `JIT_API_CLIENT_ID`), the broker's
  delegated scope (`{JIT_API_APP_ID_URI}/{JIT_API_SCOPE}`) and the role names the page shows sections for;
- `GET /web/<file>`: the built script, style and icon.

The Content-Security-Policy allows scripts and styles from the broker only (no inline script or style, no
`eval`), connections to the broker and the authority's origin only, no frames, no plugins, no forms posting
anywhere, and no framing of the page (`frame-ancestors 'none'`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from jitbroker.config import Settings

STATIC_DIR = Path(__file__).with_name("static")
INDEX = "index.html"
# The files the page is made of, by the name it asks for them under /web/ (nothing else is served).
MEDIA_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
NOT_BUILT = "the web page is not built in this package: run `make setup` (npm ci && npm run build)"


@dataclass(frozen=True)
class WebConfig:
    """What the page needs to sign in with MSAL.js and call the broker: public values, no secret."""

    authority: str
    client_id: str
    scope: str
    known_authority: str
    admin_role: str
    auditor_role: str
    approver_role: str

    @classmethod
    def of(cls, settings: Settings) -> WebConfig:
        """The page's settings from the broker's: the same authority and tenant the broker verifies."""
        return cls(
            authority=f"{settings.authority_host}/{settings.tenant_id}",
            client_id=settings.web_client_id or settings.api_client_id,
            scope=f"{settings.app_id_uri.rstrip('/')}/{settings.api_scope}",
            known_authority=urlsplit(settings.authority_host).netloc,
            admin_role=settings.admin_role,
            auditor_role=settings.auditor_role,
            approver_role=settings.approver_role,
        )

    def as_json(self) -> dict[str, Any]:
        """The body of `/web/config.json`, in the names MSAL.js and the page use."""
        return {
            "authority": self.authority,
            "clientId": self.client_id,
            "knownAuthorities": [self.known_authority],
            "scopes": [self.scope],
            "roles": {"admin": self.admin_role, "auditor": self.auditor_role, "approver": self.approver_role},
        }


def authority_origin(authority_host: str) -> str:
    """`https://host[:port]` of the sign-in authority: the one other origin the page may connect to."""
    parts = urlsplit(authority_host)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(authority_host: str) -> str:
    """The page's policy: its own script and style only, connections to itself and the authority only."""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            f"connect-src 'self' {authority_origin(authority_host)}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-src 'none'",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "manifest-src 'none'",
        )
    )


def security_headers(authority_host: str) -> dict[str, str]:
    """Headers on every file of the page (and its config)."""
    return {
        "Content-Security-Policy": content_security_policy(authority_host),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        "Cache-Control": "no-cache",  # revalidate: a deploy changes the files under the same names
    }


def install_web(app: FastAPI, settings: Callable[[], Settings], static_dir: Path = STATIC_DIR) -> None:
    """Serve the page on `app`; `settings` is called per request (the broker builds them on first use)."""

    def answer(body: bytes, media_type: str) -> Response:
        return Response(body, media_type=media_type, headers=security_headers(settings().authority_host))

    def read(name: str) -> bytes:
        try:
            return (static_dir / name).read_bytes()
        except FileNotFoundError:
            raise HTTPException(503, NOT_BUILT) from None

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return answer(read(INDEX), "text/html; charset=utf-8")

    @app.get("/web/config.json", include_in_schema=False)
    def config() -> Response:
        body = json.dumps(WebConfig.of(settings()).as_json()).encode()
        return answer(body, "application/json")

    @app.get("/web/{name}", include_in_schema=False)
    def asset(name: Annotated[str, PathParam(max_length=40)]) -> Response:
        media_type = MEDIA_TYPES.get(name)
        if media_type is None:
            raise HTTPException(404)
        return answer(read(name), media_type)
