"""The issuer's signing keys: OpenID discovery, then the JWKS, cached and refreshed with restraint.

One `SigningKeys` per verifier, shared by every request thread. The key set is fetched on first use and again
when its cache time runs out; an unknown `kid` triggers one early refresh (that is how a key rotation reaches
us), but at most one such refresh per cooldown, so a flood of tokens naming random kids cannot turn the broker
into a denial-of-service tool against the issuer. Fetches use HTTPS with the system trust store (the lab
points `SSL_CERT_FILE` at its CA bundle) and never follow redirects.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jwt

from jitbroker.errors import NotAuthenticated, UpstreamError

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_MAX_DOCUMENT_BYTES = 1024 * 1024
# After a failed fetch with nothing cached, wait this long before asking the issuer again.
_RETRY_AFTER_FAILURE_SECONDS = 5.0


class _KeyFetchError(Exception):
    """The metadata or key set could not be fetched or made no sense (message safe to log)."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Discovery and keys must come from exactly the configured place, never wherever a redirect points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class SigningKeys:
    """The RSA signing keys published by one OpenID Connect issuer, by `kid`."""

    def __init__(
        self,
        metadata_url: str,
        *,
        clock: Clock,
        cache_seconds: float,
        refresh_cooldown_seconds: float,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not metadata_url.startswith("https://"):
            raise ValueError(f"the OpenID metadata must be fetched over HTTPS, not {metadata_url!r}")
        self._metadata_url = metadata_url
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cooldown = refresh_cooldown_seconds
        self._timeout = timeout_seconds
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._fresh_until = 0.0
        self._last_kid_refresh: float | None = None
        self._failed_at: float | None = None

    def key_for(self, kid: str) -> jwt.PyJWK:
        """The published key named `kid`; `NotAuthenticated` if the issuer does not publish it.

        Raises `UpstreamError` only when no key set has ever been obtained (the issuer is unreachable).
        """
        # One lock for reads and fetches: concurrent cold starts and refreshes become a single fetch.
        with self._lock:
            now = self._clock().timestamp()
            keys, asked_now = self._current_keys(now)
            if kid in keys:
                return keys[kid]
            cooled_down = self._last_kid_refresh is None or now - self._last_kid_refresh >= self._cooldown
            if cooled_down and not asked_now:
                self._last_kid_refresh = now
                log.info("token names an unknown signing key; refreshing the issuer's key set once")
                try:
                    keys = self._refresh(now)
                except _KeyFetchError as exc:
                    log.warning("could not refresh the issuer's key set: %s", exc)
                if kid in keys:
                    return keys[kid]
        raise NotAuthenticated(
            "the token is signed with a key the identity provider does not publish; get a new token"
        )

    def _current_keys(self, now: float) -> tuple[dict[str, jwt.PyJWK], bool]:
        """The key set, and whether the issuer was asked just now; stale keys serve while it is down."""
        if self._keys is not None and now < self._fresh_until:
            return self._keys, False
        recently_failed = self._failed_at is not None and now - self._failed_at < _RETRY_AFTER_FAILURE_SECONDS
        if self._keys is None and recently_failed:
            raise UpstreamError("the identity provider's signing keys are unavailable; try again shortly")
        try:
            return self._refresh(now), True
        except _KeyFetchError as exc:
            self._failed_at = now
            if self._keys is None:
                log.error("could not fetch the identity provider's signing keys: %s", exc)
                raise UpstreamError(
                    "the broker could not fetch the identity provider's signing keys; try again shortly"
                ) from None
            log.warning("could not refresh the issuer's key set, keeping the cached one: %s", exc)
            self._fresh_until = now + min(self._cooldown, self._cache_seconds)
            return self._keys, True

    def _refresh(self, now: float) -> dict[str, jwt.PyJWK]:
        """Fetch discovery and JWKS now and replace the cache (caller holds the lock)."""
        metadata = _fetch_json(self._metadata_url, self._timeout)
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise _KeyFetchError(f"{self._metadata_url} names no HTTPS jwks_uri")
        keys = _parse_jwks(_fetch_json(jwks_uri, self._timeout), jwks_uri)
        self._keys = keys
        self._fresh_until = now + self._cache_seconds
        self._failed_at = None
        log.info("fetched %d signing key(s) from %s", len(keys), jwks_uri)
        return keys


def _fetch_json(url: str, timeout: float) -> dict[str, Any]:
    """GET a JSON object over verified HTTPS, bounded in time and size."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context()), _RefuseRedirects()
    )
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (https only)
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(_MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise _KeyFetchError(f"GET {url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _KeyFetchError(f"GET {url} failed: {reason}") from None
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise _KeyFetchError(f"GET {url} returned more than {_MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise _KeyFetchError(f"GET {url} did not return JSON") from None
    if not isinstance(document, dict):
        raise _KeyFetchError(f"GET {url} did not return a JSON object")
    return document


def _parse_jwks(document: dict[str, Any], url: str) -> dict[str, jwt.PyJWK]:
    """The RSA signature keys of a JWKS by kid; keys for other uses or algorithms are ignored."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise _KeyFetchError(f"{url} is not a JWK set")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("kty") != "RSA":
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
            continue
        try:
            keys[kid] = jwt.PyJWK(entry, algorithm="RS256")
        except jwt.PyJWTError as exc:
            log.warning("ignoring unusable key %r from %s: %s", kid, url, exc)
    if not keys:
        raise _KeyFetchError(f"{url} publishes no usable RSA signing key")
    return keys
