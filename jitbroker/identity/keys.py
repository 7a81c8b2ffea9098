"""The issuer's signing keys: OpenID discovery, then the JWKS, cached and refreshed with restraint.

One `SigningKeys` per issuer (v2 and, when enabled, v1 metadata), shared by every request thread:

- The key set is fetched on first use; requests arriving meanwhile wait for that one fetch (single flight).
- When its cache time runs out, requests keep verifying with the cached keys while one refresh runs in the
  background; a request whose `kid` is known never waits for a fetch.
- An unknown `kid` triggers one early refresh (that is how a key rotation reaches us), but at most one per
  cooldown (minutes), counted from that refresh: a flood of tokens naming random kids costs the issuer one
  fetch and is otherwise refused at once, without waiting on anything.
- The lock guards the cache only; it is never held during a fetch. Cache lifetimes count from when a fetch
  completed, not from when it began.

Fetches use HTTPS with the system trust store (the lab points `SSL_CERT_FILE` at its CA bundle) and never
follow redirects.
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
Keys = dict[str, jwt.PyJWK]

_MAX_DOCUMENT_BYTES = 1024 * 1024
# After a failed fetch with nothing cached, wait this long before asking the issuer again.
_RETRY_AFTER_FAILURE_SECONDS = 5.0


class _KeyFetchError(Exception):
    """The metadata or key set could not be fetched or made no sense (message safe to log)."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Discovery and keys must come from exactly the configured place, never wherever a redirect points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Flight:
    """One fetch of the key set in progress: whoever needs its outcome waits on `done`."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.keys: Keys | None = None  # None: the fetch failed


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
        # Two requests (metadata, JWKS), each bounded by the timeout; a waiter gives up a little after that.
        self._wait_seconds = 2 * timeout_seconds + 5.0
        # Guards the fields below, and nothing else: never held while fetching.
        self._lock = threading.Lock()
        self._keys: Keys | None = None
        self._fresh_until = 0.0
        self._last_kid_refresh: float | None = None
        self._failed_at: float | None = None
        self._flight: _Flight | None = None

    def key_for(self, kid: str) -> jwt.PyJWK:
        """The published key named `kid`; `NotAuthenticated` if the issuer does not publish it.

        Raises `UpstreamError` only when no key set has ever been obtained (the issuer is unreachable).
        """
        with self._lock:
            now = self._now()
            keys = self._keys
            if keys is None:
                if self._failed_at is not None and now - self._failed_at < _RETRY_AFTER_FAILURE_SECONDS:
                    raise UpstreamError(
                        "the identity provider's signing keys are unavailable; try again shortly"
                    )
                flight, mine = self._join_or_start()
                cold = True
            else:
                if now >= self._fresh_until and self._flight is None:
                    self._start_in_background()
                if kid in keys:
                    return keys[kid]
                cooled_down = self._last_kid_refresh is None or now - self._last_kid_refresh >= self._cooldown
                if not cooled_down:
                    raise _not_published()
                self._last_kid_refresh = now
                log.info("token names an unknown signing key; refreshing the issuer's key set once")
                flight, mine = self._join_or_start()
                cold = False
        if mine:
            self._run(flight)
        else:
            flight.done.wait(self._wait_seconds)
        if flight.keys is None:
            if cold:
                raise UpstreamError(
                    "the broker could not fetch the identity provider's signing keys; try again shortly"
                )
            raise _not_published()
        if kid in flight.keys:
            return flight.keys[kid]
        raise _not_published()

    def wait_for_refresh(self, timeout: float) -> bool:
        """Wait for a fetch in progress, if any, to finish; False if it is still running after `timeout`."""
        with self._lock:
            flight = self._flight
        return flight is None or flight.done.wait(timeout)

    def _now(self) -> float:
        return self._clock().timestamp()

    def _join_or_start(self) -> tuple[_Flight, bool]:
        """The fetch in progress, or a new one for the caller to run (then True); the lock is held."""
        if self._flight is not None:
            return self._flight, False
        self._flight = _Flight()
        return self._flight, True

    def _start_in_background(self) -> None:
        """Refresh expired keys behind the requests still using them (lock held)."""
        flight, _ = self._join_or_start()
        threading.Thread(target=self._run, args=(flight,), name="jit-signing-keys", daemon=True).start()

    def _run(self, flight: _Flight) -> None:
        """Fetch the key set (no lock held), then publish the outcome to the cache and to the waiters."""
        keys: Keys | None = None
        error = "the fetch failed unexpectedly"
        try:
            keys = self._fetch()
        except _KeyFetchError as exc:
            error = str(exc)
        except Exception:
            log.exception("unexpected failure fetching the issuer's signing keys")
        finally:
            with self._lock:
                now = self._now()  # lifetimes count from now, when the fetch is over
                if keys is not None:
                    self._keys = keys
                    self._fresh_until = now + self._cache_seconds
                    self._failed_at = None
                else:
                    self._failed_at = now
                    if self._keys is not None:
                        # Keep serving the cached keys; ask again after a cooldown, not on every request.
                        self._fresh_until = now + min(self._cooldown, self._cache_seconds)
                self._flight = None
                had_keys = self._keys is not None
            flight.keys = keys
            flight.done.set()
        if keys is not None:
            return
        if had_keys:
            log.warning("could not refresh the issuer's key set, keeping the cached one: %s", error)
        else:
            log.error("could not fetch the identity provider's signing keys: %s", error)

    def _fetch(self) -> Keys:
        """Discovery, then the JWKS it names: the key set as the issuer publishes it now."""
        metadata = _fetch_json(self._metadata_url, self._timeout)
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise _KeyFetchError(f"{self._metadata_url} names no HTTPS jwks_uri")
        keys = _parse_jwks(_fetch_json(jwks_uri, self._timeout), jwks_uri)
        log.info("fetched %d signing key(s) from %s", len(keys), jwks_uri)
        return keys


def _not_published() -> NotAuthenticated:
    return NotAuthenticated(
        "the token is signed with a key the identity provider does not publish; get a new token"
    )


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


def _parse_jwks(document: dict[str, Any], url: str) -> Keys:
    """The RSA signature keys of a JWKS by kid; keys for other uses or algorithms are ignored."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise _KeyFetchError(f"{url} is not a JWK set")
    keys: Keys = {}
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
