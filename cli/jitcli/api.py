"""The broker's HTTP API (docs/api.md) over `requests`: clear errors, a `--verbose` trace without secrets."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TextIO

from jitcli.durations import iso_duration, parse_seconds
from jitcli.errors import BrokerError, BrokerUnreachable, InsecureBrokerUrl, InvalidDuration
from jitcli.models import Grant

if TYPE_CHECKING:
    from collections.abc import Iterator

    import requests

    from jitcli.auth import TokenProvider

#: The broker's error code for "you came over IPv6 but the VM is reachable over IPv4 only"
#: (docs/design.md §5): the CLI then repeats the request over IPv4 so the broker sees the address that can
#: actually connect.
IPV4_RETRY_CODES = frozenset({"address_family_mismatch"})
#: Connect and read timeouts. The broker answers every request within 25 s (a grant whose NSG write takes
#: longer is answered `202 Accepted` and polled), so a read that takes 35 s means the broker is not answering.
_TIMEOUT_S = (10.0, 35.0)
#: Hosts a plain http:// broker URL may name: the bearer token then never leaves this machine.
_LOOPBACK_NAMES = frozenset({"localhost"})
#: Items per page `jit` asks a list for (the broker's most): fewer round trips; `nextLink` brings the rest.
PAGE_LIMIT = 1000


def wire_duration(duration: str | int) -> str | int:
    """A duration as `jit` sends it: text checked against the broker's grammar (InvalidDuration, before any
    request, when the broker would answer 400) and written as ISO 8601, which every broker version reads;
    whole seconds as they are."""
    if isinstance(duration, int):
        return duration
    try:
        return iso_duration(parse_seconds(duration))
    except ValueError as exc:
        raise InvalidDuration(str(exc), hint="e.g. 30m, 2h, 1h30m or PT1H30M") from None


def wire_moment(text: str, what: str) -> str:
    """An audit query's `since`/`until` as `jit` sends it, read as the broker reads it: an ISO 8601 time with
    its zone (`2030-05-01T12:00:00Z`, sent as written), or a duration back from now (`24h`, `PT2H`, sent as
    ISO 8601); InvalidDuration, before any request, for what the broker would refuse."""
    raw = text.strip()
    if raw[:1].isdigit() and ("-" in raw[1:] or ":" in raw):
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidDuration(
                f"{what} {raw!r} is not an ISO 8601 time or a duration like 24h",
                hint="e.g. 24h, PT2H or 2030-05-01T12:00:00Z",
            ) from None
        if moment.tzinfo is None:
            raise InvalidDuration(f"{what} needs a time zone (e.g. {raw}Z)", hint="add Z (UTC) or +HH:MM")
        return raw
    try:
        return iso_duration(parse_seconds(raw, what=what))
    except ValueError as exc:
        raise InvalidDuration(
            str(exc), hint="a duration back from now (24h, PT2H) or an ISO 8601 time"
        ) from None


def check_broker_url(url: str) -> str:
    """The broker URL if it is https://, or http:// to a loopback address; InsecureBrokerUrl otherwise.

    Over plain http:// the bearer token travels in clear text, so only a broker on this machine qualifies:
    127.0.0.0/8, ::1 or `localhost`.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    scheme = parts.scheme.lower() if parts else ""
    if scheme not in ("https", "http") or not host:
        raise InsecureBrokerUrl(
            f"broker_url must be an https:// URL with a host, not {url!r}",
            hint="set it with `jit config set broker_url https://…` or JIT_BROKER_URL",
        )
    if scheme == "http" and not is_loopback(host):
        raise InsecureBrokerUrl(
            f"refusing the plain http:// broker URL {url!r}: your access token would travel in clear text",
            hint="use the broker's https:// URL; http:// is accepted only for a broker on this machine "
            "(127.0.0.0/8, ::1, localhost)",
        )
    return url


def is_loopback(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1 (an IPv6 address may come with its brackets)."""
    import ipaddress

    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class Answer:
    """A successful response: its JSON body, the server's clock at the time (from the Date header), and for a
    `202 Accepted` where to poll (Location, made absolute) and when (Retry-After, in seconds)."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        server_time: datetime | None,
        *,
        location: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.server_time = server_time
        self.location = location
        self.retry_after = retry_after


class BrokerClient:
    """Calls the broker with a bearer token; BrokerError / BrokerUnreachable carry the broker's words."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        *,
        verbose: bool = False,
        trace: TextIO | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._verbose = verbose
        self._trace = trace or sys.stderr
        self._session: requests.Session | None = None
        self._ipv4_only = False

    # -- the API ---------------------------------------------------------------------------------------------

    def create_grant(self, request: dict[str, Any]) -> tuple[Grant, Answer]:
        """Open a port (201 new, 200 existing grant extended, 202 accepted and still `pending`: poll it with
        `poll_grant`); retried over IPv4 when the broker says so."""
        body = {k: v for k, v in request.items() if v is not None}
        if "duration" in body:
            body["duration"] = wire_duration(body["duration"])
        try:
            answer = self.call("POST", "/api/v1/grants", body)
        except BrokerError as exc:
            if exc.code not in IPV4_RETRY_CODES or self._ipv4_only:
                raise
            self._ipv4_only = True
            self._session = None
            self._say(f"* the broker needs an IPv4 source ({exc.message}); retrying over IPv4")
            answer = self.call("POST", "/api/v1/grants", body)
        return Grant.from_json(answer.body), answer

    def list_grants(self, *, all_principals: bool = False, status: str | None = None) -> list[dict[str, Any]]:
        """My grants (everyone's with `all_principals`, admins only), every page."""
        params = {"all": "true"} if all_principals else {}
        if status:
            params["status"] = status
        return self.collect("/api/v1/grants", "grants", params)

    def get_grant(self, grant_id: str) -> Grant:
        """One grant by id."""
        return Grant.from_json(self.call("GET", f"/api/v1/grants/{_quote(grant_id)}").body)

    def poll_grant(self, grant_id: str, location: str | None = None) -> tuple[Grant, Answer]:
        """The grant a `202 Accepted` answer named, read at its Location when that is on the broker's own
        origin (the token goes nowhere else), else at `/api/v1/grants/{id}`."""
        url = self._own_url(location) or f"{self.base_url}/api/v1/grants/{_quote(grant_id)}"
        answer = self._request("GET", url)
        grant = Grant.from_json(answer.body)
        if grant.id != grant_id:
            raise BrokerError(
                answer.status, "bad_response", f"polling grant {grant_id} answered grant {grant.id} instead"
            )
        return grant, answer

    def revoke(self, grant_id: str) -> dict[str, Any]:
        """Revoke a grant (idempotent); returns the grant with status `revoked`."""
        return self.call("DELETE", f"/api/v1/grants/{_quote(grant_id)}").body

    def withdraw(self, grant_id: str) -> dict[str, Any]:
        """Withdraw a request still awaiting approval (the requester or an admin; idempotent): the grant with
        status `withdrawn` (or as it ended before); 409 `not_awaiting_approval` once it was approved."""
        return self.call("POST", f"/api/v1/grants/{_quote(grant_id)}/withdraw").body

    def approve(self, grant_id: str, reason: str | None = None) -> tuple[Grant, Answer]:
        """Approve a request (an approver, never on your own request): 200 with the grant `active`, or 202
        while the broker still opens the door (`pending`)."""
        body = {"reason": reason} if reason else {}
        answer = self.call("POST", f"/api/v1/grants/{_quote(grant_id)}/approve", body)
        return Grant.from_json(answer.body), answer

    def deny(self, grant_id: str, reason: str) -> Grant:
        """Deny a request, saying why (an approver, never on your own request): the grant `denied`."""
        answer = self.call("POST", f"/api/v1/grants/{_quote(grant_id)}/deny", {"reason": reason})
        return Grant.from_json(answer.body)

    def awaiting_me(self) -> list[dict[str, Any]]:
        """The requests waiting for an approver that the caller may approve, every page."""
        return self.collect("/api/v1/grants", "grants", {"awaiting": "me"})

    def extend(self, grant_id: str, duration: str | int | None) -> tuple[Grant, Answer]:
        """Extend a grant, within the policy's maximum total (200, or 202 and `pending`: poll it)."""
        body = {"duration": wire_duration(duration)} if duration is not None else {}
        answer = self.call("POST", f"/api/v1/grants/{_quote(grant_id)}/extend", body)
        return Grant.from_json(answer.body), answer

    def vms(self) -> list[dict[str, Any]]:
        """VMs the caller may request, every page."""
        return self.collect("/api/v1/vms", "vms")

    def whoami(self) -> dict[str, Any]:
        """Principal, roles and the address the broker sees."""
        return self.call("GET", "/api/v1/whoami").body

    def audit(self, params: dict[str, str], *, most: int | None = None) -> tuple[list[dict[str, Any]], bool]:
        """Audit events (admins and auditors), newest first, every page or the newest `most`; and whether
        more matched than `most` let through."""
        ask = dict(params)
        ask["limit"] = str(min(most or PAGE_LIMIT, PAGE_LIMIT))
        events: list[dict[str, Any]] = []
        for page, more in self.pages("/api/v1/audit", "events", ask):
            events += page
            if most is not None and len(events) >= most:
                return events[:most], more or len(events) > most
        return events, False

    # -- paging --------------------------------------------------------------------------------------------

    def collect(self, path: str, key: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every item of a paged list (`{key: [...], "nextLink": ...}`), all pages followed to the end."""
        items: list[dict[str, Any]] = []
        for page, _ in self.pages(path, key, {"limit": str(PAGE_LIMIT), **(params or {})}):
            items += page
        return items

    def pages(
        self, path: str, key: str, params: dict[str, str] | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], bool]]:
        """The pages of a list, one request each: (this page's `key` items, whether a `nextLink` follows).

        A list answers at most `limit` items and a `nextLink` (a relative URL carrying the filters and a
        cursor) while more remain, null on the last page; a broker without paging answers no `nextLink` and is
        read in one request. A `nextLink` is followed only on the broker's own origin (the token goes nowhere
        else), and one the broker already gave ends the walk with an error instead of a loop.
        """
        answer = self.call("GET", path, params=params)
        current = self.base_url + path
        followed: set[str] = set()
        while True:
            items = answer.body.get(key, [])
            if not isinstance(items, list):
                raise BrokerError(
                    answer.status, "bad_response", f"the broker's {path} answer has no {key} list"
                )
            link = answer.body.get("nextLink")
            yield items, bool(link)
            if not link:
                return
            current = self._link_url(str(link), path, current)
            if current in followed:
                raise BrokerError(
                    answer.status, "bad_response", f"the broker's nextLink for {path} repeats itself: {link}"
                )
            followed.add(current)
            answer = self._request("GET", current)

    def _link_url(self, link: str, path: str, current: str) -> str:
        """A `nextLink` as a URL: a path (`/api/v1/…?…`) goes to the broker's base URL, like every call; any
        other link, resolved against the page that gave it, only when it is on the broker's origin
        (BrokerError otherwise: a list must not stop silently)."""
        if link.startswith("/") and not link.startswith("//"):
            return self.base_url + link
        own = self._own_url(_absolute(current, link))
        if own is None:
            raise BrokerError(
                200,
                "bad_response",
                f"the broker's nextLink for {path} points elsewhere ({link}); not sending the token there",
            )
        return own

    # -- transport -----------------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
    ) -> Answer:
        """One authenticated request; the JSON answer, or the broker's error raised as BrokerError."""
        return self._request(method, self.base_url + path, body, params=params)

    def _request(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
    ) -> Answer:
        import requests

        headers = {"Authorization": f"Bearer {self._tokens.token()}", "Accept": "application/json"}
        self._trace_request(method, url, params, body)
        started = time.monotonic()
        try:
            response = self._http().request(
                method, url, json=body, params=params, headers=headers, timeout=_TIMEOUT_S
            )
        except requests.exceptions.SSLError as exc:
            raise BrokerUnreachable(
                f"TLS to the broker at {self.base_url} failed: {exc}",
                hint="if you use a private CA, point REQUESTS_CA_BUNDLE at its bundle",
            ) from exc
        except requests.RequestException as exc:
            raise BrokerUnreachable(
                f"cannot reach the broker at {self.base_url}: {_reason(exc)}",
                hint="check broker_url (`jit config get broker_url`) and your network",
            ) from exc
        self._trace_response(response, time.monotonic() - started)
        payload = _json_body(response)
        if response.status_code >= 400:
            raise _broker_error(
                response.status_code, payload, response.reason, response.headers.get("x-ms-error-code")
            )
        if not isinstance(payload, dict):
            raise BrokerError(
                response.status_code,
                "bad_response",
                f"the broker answered {method} {url} without a JSON object",
            )
        location = response.headers.get("Location")
        return Answer(
            response.status_code,
            payload,
            _server_time(response.headers.get("Date")),
            location=_absolute(response.url or url, location) if location else None,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )

    def _own_url(self, url: str | None) -> str | None:
        """`url` when it is on the broker's scheme, host and port; None (and a trace line) otherwise."""
        if not url:
            return None
        if _origin(url) == _origin(self.base_url):
            return url
        self._say(f"* not following Location {url}: it is not the broker's origin ({self.base_url})")
        return None

    def close(self) -> None:
        """Close pooled connections."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def _http(self) -> requests.Session:
        if self._session is None:
            import requests

            session = requests.Session()
            if self._ipv4_only:
                adapter = _ipv4_adapter()
                session.mount("https://", adapter)
                session.mount("http://", adapter)
            self._session = session
        return self._session

    # -- trace ---------------------------------------------------------------------------------------------

    def _say(self, line: str) -> None:
        if self._verbose:
            print(line, file=self._trace, flush=True)

    def _trace_request(self, method: str, url: str, params: dict[str, str] | None, body: object) -> None:
        if not self._verbose:
            return
        query = "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""
        self._say(f"> {method} {url}{query}")
        self._say("> Authorization: Bearer [redacted]")
        if body is not None:
            self._say(f"> {json.dumps(body)}")

    def _trace_response(self, response: requests.Response, elapsed: float) -> None:
        if not self._verbose:
            return
        self._say(f"< {response.status_code} {response.reason} ({elapsed * 1000:.0f} ms)")
        shown = ("Date", "Content-Type", "Location", "Retry-After", "x-ms-error-code", "x-ms-request-id")
        for name in (*shown, "x-request-id"):
            if name in response.headers:
                self._say(f"< {name}: {response.headers[name]}")
        text = response.text
        self._say(f"< {text[:2000]}{'…' if len(text) > 2000 else ''}")


def _broker_error(status: int, payload: object, reason: str, header_code: str | None = None) -> BrokerError:
    """The broker's `{"error": {"code", "message"}}` as an exception; the status line when it is not that.
    The code is the body's, else the `x-ms-error-code` header's (every broker error carries it, also when a
    proxy on the way replaced the body), else `http_<status>`."""
    error = payload.get("error") if isinstance(payload, dict) else None
    fallback = (header_code or "").strip() or f"http_{status}"
    if isinstance(error, dict):
        code = str(error.get("code") or fallback)
        message = str(error.get("message") or reason)
    elif isinstance(payload, dict) and "detail" in payload:
        code, message = fallback, str(payload["detail"])
    else:
        code, message = fallback, f"HTTP {status} {reason}"
    hint = None
    if status == 401:
        hint = "sign in again (`az login`), and check scope and tenant_id (`jit config get`)"
    return BrokerError(status, code, message, hint=hint)


def _json_body(response: requests.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _server_time(header: str | None) -> datetime | None:
    if not header:
        return None
    try:
        return parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None


def retry_after_seconds(header: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None when absent or unreadable."""
    if not header:
        return None
    text = header.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    moment = _server_time(text)
    if moment is None:
        return None
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def _absolute(base: str, location: str) -> str:
    """A Location header (possibly relative) resolved against the URL that answered it."""
    from urllib.parse import urljoin

    return urljoin(base, location)


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ("", url, None)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or {"https": 443, "http": 80}.get(scheme)


def _reason(exc: Exception) -> str:
    """The innermost useful reason of a requests error (`Connection refused`, not the urllib3 pool repr)."""
    text = str(exc)
    for marker in ("] ", "Error("):
        if marker in text:
            tail = text.rsplit(marker, 1)[-1].rstrip("')\"")
            if tail:
                return tail
    return text


def _quote(part: str) -> str:
    from urllib.parse import quote

    return quote(part, safe="")


def _ipv4_adapter() -> requests.adapters.HTTPAdapter:
    """An adapter whose sockets bind an IPv4 source, so connections can only be made over IPv4."""
    from requests.adapters import HTTPAdapter

    class IPv4Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["source_address"] = ("0.0.0.0", 0)
            super().init_poolmanager(*args, **kwargs)

    return IPv4Adapter()
