"""A fault-injecting HTTP proxy in front of Azurite: real Table Storage failures for the broker's store.

The broker's store talks to the proxy through an ordinary connection string (SharedKey signatures cover the
path, not the port, so Azurite accepts what passes through). A test arms one trigger at a time:

- `outage(match, failures)`: from the first request `match` accepts, the next `failures` requests (that one
  included, and whatever follows it) are answered `503 ServerBusy`, as Table Storage does when it sheds load.
  The answer carries `retry-after-ms` so azure-core's own retries (three, for a status) happen at once
  instead of after seconds of backoff; the SDK still gives up and raises exactly as against Azure.
- `hold(match)`: the first matching request is held, unanswered, until `release()`, then forwarded (it lands
  even if its sender died meanwhile, as a write the service took before the client vanished), or until
  `drop()`, then answered 503 and never forwarded (its sender died before the write left it).
- `before(match, action)` / `after(match, action)`: run `action(request)` just before a matching request is
  forwarded, or just after Azurite answered it (a concurrent writer, or arming an ARM fault, at that moment).

Every trigger fires once; `reset()` drops it. `fired` tells whether it did.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lab.azurite import ACCOUNT_KEY, ACCOUNT_NAME

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"})
_HOLD_LIMIT_S = 120.0


@dataclass(frozen=True)
class StoreRequest:
    """One request on its way to Table Storage."""

    method: str
    path: str
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when it is not one)."""
        try:
            data = json.loads(self.body or b"{}")
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items()}


Match = Callable[[StoreRequest], bool]
Action = Callable[[StoreRequest], None]


@dataclass
class _Trigger:
    kind: str  # outage | hold | before | after
    match: Match
    failures: int = 0
    action: Action | None = None
    dropped: bool = False


class TableProxy:
    """`TableProxy(azurite_host, azurite_port).start()`; `.connection_string`; arm triggers; `.stop()`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._trigger: _Trigger | None = None
        self._held: _Trigger | None = None
        self._failing = 0
        self.fired = threading.Event()
        self.released = threading.Event()
        self.failed_requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="table-proxy", daemon=True)

    @property
    def connection_string(self) -> str:
        """A connection string for `azure-data-tables` that goes through the proxy."""
        port = self._server.server_address[1]
        endpoint = f"http://127.0.0.1:{port}/{ACCOUNT_NAME}"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={endpoint};"
        )

    def start(self) -> TableProxy:
        """Serve on a free loopback port."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release anything held and stop serving."""
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ triggers

    def reset(self) -> None:
        """No trigger, no outage, nothing held."""
        with self._lock:
            self._trigger = None
            self._held = None
            self._failing = 0
            self.failed_requests = 0
        self.released.set()
        self.fired = threading.Event()
        self.released = threading.Event()

    @property
    def armed(self) -> bool:
        """True while a trigger waits for its request or an outage has failures left to give."""
        with self._lock:
            return self._trigger is not None or self._failing > 0

    def outage(self, match: Match, failures: int) -> None:
        """From the first matching request on, fail the next `failures` requests with 503 ServerBusy."""
        self._arm(_Trigger("outage", match, failures=failures))

    def fail_next(self, failures: int) -> None:
        """Fail the next `failures` requests, whatever they are (an outage starting now)."""
        with self._lock:
            self._failing = failures
        self.fired.set()

    def hold(self, match: Match) -> None:
        """Hold the first matching request until `release()`."""
        self._arm(_Trigger("hold", match))

    def release(self) -> None:
        """Let a held request go on to Azurite."""
        self.released.set()

    def drop(self) -> None:
        """Answer a held request 503 without ever forwarding it."""
        with self._lock:
            if self._held is not None:
                self._held.dropped = True
        self.released.set()

    def before(self, match: Match, action: Action) -> None:
        """Run `action` just before the first matching request is forwarded."""
        self._arm(_Trigger("before", match, action=action))

    def after(self, match: Match, action: Action) -> None:
        """Run `action` just after Azurite answered the first matching request."""
        self._arm(_Trigger("after", match, action=action))

    def _arm(self, trigger: _Trigger) -> None:
        with self._lock:
            self._trigger = trigger

    # ------------------------------------------------------------------ the proxy's work

    def _take(self, request: StoreRequest) -> _Trigger | None:
        with self._lock:
            trigger = self._trigger
            if trigger is None or not trigger.match(request):
                return None
            self._trigger = None
        if trigger.kind == "outage":
            with self._lock:
                self._failing = trigger.failures
        if trigger.kind == "hold":
            with self._lock:
                self._held = trigger
        self.fired.set()
        return trigger

    def _should_fail(self) -> bool:
        with self._lock:
            if self._failing <= 0:
                return False
            self._failing -= 1
            self.failed_requests += 1
            return True

    def handle(self, request: StoreRequest, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """The answer to one request: injected, or Azurite's."""
        trigger = self._take(request)
        if trigger is not None and trigger.kind == "hold":
            self.released.wait(_HOLD_LIMIT_S)
            if trigger.dropped:
                return _server_busy()
        if trigger is not None and trigger.kind == "before" and trigger.action is not None:
            trigger.action(request)
        if self._should_fail():
            return _server_busy()
        answer = self._forward(request, headers)
        if trigger is not None and trigger.kind == "after" and trigger.action is not None:
            trigger.action(request)
        return answer

    def _forward(self, request: StoreRequest, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            connection.request(request.method, request.path, body=request.body or None, headers=headers)
            response = connection.getresponse()
            body = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            return response.status, out, body
        finally:
            connection.close()


def _server_busy() -> tuple[int, dict[str, str], bytes]:
    body = {"odata.error": {"code": "ServerBusy", "message": {"lang": "en-US", "value": "Server busy."}}}
    headers = {
        "Content-Type": "application/json;odata=minimalmetadata",
        "x-ms-error-code": "ServerBusy",
        "retry-after-ms": "10",
    }
    return 503, headers, json.dumps(body).encode()


def _handler_for(proxy: TableProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body:
                headers["Content-Length"] = str(len(body))
            status, out, payload = proxy.handle(StoreRequest(self.command, self.path, body), headers)
            try:
                self.send_response(status)
                for name, value in out.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the caller is gone (a killed broker); what it sent has landed all the same

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_MERGE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
