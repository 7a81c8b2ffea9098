"""Access tokens for the broker: Azure sign-in through azure-identity, or the lab's token issuer.

The lab is a configuration switch (`auth = "lab"` plus `lab_issuer` and `lab_user`): the CLI still asks a
token endpoint over HTTPS and sends a signed token the broker verifies; nothing skips authentication.
Tokens are never printed or logged.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from jitcli.errors import AuthError, ConfigError
from jitcli.signin import InteractiveCredential, RememberedSignIn, SignInStore

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from jitcli.config import Settings

#: Renew a cached token this many seconds before it expires.
_EXPIRY_MARGIN_S = 120.0
AUTH_MODES = ("azure", "azure-cli", "device-code", "browser", "lab")
#: azure-identity's own default public client for browser / device-code sign-in (the Azure CLI's app).
_AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"


class TokenProvider(Protocol):
    """Something that hands out a current access token for the broker."""

    def token(self) -> str:
        """A bearer token valid for at least the next minute or two."""
        ...


class CachedToken:
    """Caches a token from `fetch` until shortly before it expires; safe to share with the lease thread."""

    def __init__(self, fetch: Callable[[], tuple[str, float]]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_on = 0.0

    def token(self) -> str:
        """The cached token, or a fresh one when it is close to expiry."""
        with self._lock:
            if self._token is None or time.time() > self._expires_on - _EXPIRY_MARGIN_S:
                self._token, self._expires_on = self._fetch()
            return self._token


def scope_for(settings: Settings) -> str:
    """The OAuth scope for the broker's API: its app ID URI with `/.default`."""
    scope = settings.require("scope")
    return scope if scope.endswith("/.default") else scope.rstrip("/") + "/.default"


def provider_for(settings: Settings) -> TokenProvider:
    """The token provider the settings ask for (`auth`), ready to use."""
    mode = settings.get("auth") or "azure"
    if mode not in AUTH_MODES:
        raise ConfigError(f"auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    if mode == "lab":
        return CachedToken(_lab_fetcher(settings))
    scope = scope_for(settings)
    credential = _azure_credential(mode, settings)

    def fetch() -> tuple[str, float]:
        from azure.core.exceptions import ClientAuthenticationError

        try:
            access = credential.get_token(scope)
        except ClientAuthenticationError as exc:
            raise AuthError(
                f"could not sign in to Azure for {scope}: {_first_line(str(exc))}",
                hint="run `az login` (or `azd auth login`); for browser or device code, set tenant_id",
            ) from exc
        return access.token, float(access.expires_on)

    return CachedToken(fetch)


def _azure_credential(mode: str, settings: Settings) -> TokenCredential:
    """azure-identity credentials in the order a developer machine most likely has them."""
    from azure.identity import (
        AzureCliCredential,
        AzureDeveloperCliCredential,
        ChainedTokenCredential,
        DeviceCodeCredential,
        InteractiveBrowserCredential,
    )

    tenant = settings.get("tenant_id")
    client = settings.get("client_id")
    interactive_args: dict[str, str] = {}
    if tenant:
        interactive_args["tenant_id"] = tenant
    if client:
        interactive_args["client_id"] = client

    # Browser and device-code sign-in are remembered between runs (jitcli.signin, setting token_cache).
    store = SignInStore.for_settings(settings)

    def remembered(make: Callable[..., InteractiveCredential]) -> TokenCredential:
        return RememberedSignIn(make, store, client_id=client or _AZURE_CLI_CLIENT_ID, tenant_id=tenant)

    def device_code(**remember: Any) -> DeviceCodeCredential:
        # The device-code prompt goes to stderr so `--json` output on stdout stays clean.
        def prompt(verification_uri: str, user_code: str, _expires: object) -> None:
            print(f"To sign in, open {verification_uri} and enter the code {user_code}", file=sys.stderr)

        return DeviceCodeCredential(
            tenant_id=tenant, client_id=client or _AZURE_CLI_CLIENT_ID, prompt_callback=prompt, **remember
        )

    def browser(**remember: Any) -> InteractiveBrowserCredential:
        return InteractiveBrowserCredential(**interactive_args, **remember)

    if mode == "azure-cli":
        return AzureCliCredential(tenant_id=tenant or "")
    if mode == "device-code":
        return remembered(device_code)
    if mode == "browser":
        return remembered(browser)
    interactive = remembered(browser if _has_browser() else device_code)
    return ChainedTokenCredential(
        AzureCliCredential(tenant_id=tenant or ""),
        AzureDeveloperCliCredential(tenant_id=tenant or ""),
        interactive,
    )


def _has_browser() -> bool:
    """False on remote or headless sessions, where device code is the usable interactive sign-in."""
    if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY"):
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _lab_fetcher(settings: Settings) -> Callable[[], tuple[str, float]]:
    """Ask the lab issuer's OAuth token endpoint for a token for the configured lab user."""
    issuer = settings.require("lab_issuer").rstrip("/")
    user = settings.require("lab_user")
    tenant = settings.require("tenant_id")
    scope = scope_for(settings)
    url = f"{issuer}/{tenant}/oauth2/v2.0/token"

    def fetch() -> tuple[str, float]:
        import requests

        form = {"grant_type": "password", "username": user, "scope": scope}
        try:
            response = requests.post(url, data=form, timeout=10)
        except requests.RequestException as exc:
            raise AuthError(f"cannot reach the lab token issuer at {issuer}: {exc}") from exc
        body = _json_or_empty(response)
        if response.status_code != 200 or "access_token" not in body:
            detail = body.get("error_description") or body.get("error") or response.reason
            raise AuthError(f"the lab token issuer refused a token for {user!r}: {detail}")
        expires_in = float(str(body.get("expires_in", 3600)))
        return str(body["access_token"]), time.time() + expires_in

    return fetch


def _json_or_empty(response: object) -> dict[str, object]:
    try:
        body = response.json()  # type: ignore[attr-defined]
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
