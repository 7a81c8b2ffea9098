"""The HTTPS server: a thread per connection (so a hanging request blocks nobody else), TLS, the request log.

`ArmEmulator` wires the parts: the service (the emulated RPs), the front door (ARM's checks and URL table),
the lab control endpoint, and the clock thread that settles long-running operations."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from lab.arm.control import Control
from lab.arm.knobs import Budget, Fault, FaultBook, Knobs
from lab.arm.routes import FrontDoor, Request, Response
from lab.arm.service import ArmService, NsgCallback
from lab.scenario import Scenario

log = logging.getLogger(__name__)

_REASONS = {429: "Too Many Requests"}


class CertPair(Protocol):
    """Anything with a server certificate chain and key on disk (e.g. `lab.tls.LabCA`)."""

    @property
    def certfile(self) -> Path: ...

    @property
    def keyfile(self) -> Path: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], context: ssl.SSLContext, dispatch: Callable[[Request], Response]
    ):
        self.context = context
        self.dispatch = dispatch
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        # The TLS handshake happens in the connection's own thread (see _Handler.setup), so a slow or broken
        # client never holds up the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def close_connections(self) -> None:
        with self.connections_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall
    server: _Server
    timeout = 120

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.request)
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError):
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.request)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ssl.SSLError, ConnectionError, TimeoutError):
            self.close_connection = True

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=unquote(url.path),
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers=_Headers(self.headers.items()),
            body=body,
        )
        try:
            response = self.server.dispatch(request)
        except Exception:
            log.exception("ARM emulator failed on %s %s", self.command, self.path)
            response = Response(500, {"error": {"code": "InternalServerError", "message": "The lab failed."}})
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(response.status, _REASONS.get(response.status))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_PUT = do_DELETE = do_POST = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("arm: " + format, *args)


class _Headers(dict[str, str]):
    """Case-insensitive header lookup."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class ArmEmulator:
    """The local Azure Resource Manager for the scenario's world, over HTTPS on 127.0.0.1.

    `ArmEmulator(scenario, ca)` or `ArmEmulator(scenario, certfile=…, keyfile=…)`; `.start()`, `.url`,
    `.stop()`, or use it as a context manager. `token_validator(token) -> bool` decides bearer tokens (any
    token when None). Knobs and faults may be given here too; `reset()` returns to them.
    """

    def __init__(
        self,
        scenario: Scenario,
        ca: CertPair | None = None,
        *,
        certfile: Path | str | None = None,
        keyfile: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token_validator: Callable[[str], bool] | None = None,
        knobs: Knobs | dict[str, Any] | None = None,
        faults: Iterable[Fault | dict[str, Any]] = (),
    ) -> None:
        if ca is not None:
            certfile, keyfile = ca.certfile, ca.keyfile
        if certfile is None or keyfile is None:
            raise ValueError("ArmEmulator needs a certificate: pass a LabCA or certfile and keyfile")
        self.scenario = scenario
        self._certfile, self._keyfile = Path(certfile), Path(keyfile)
        self._host, self._port = host, port
        self._initial_knobs = knobs if isinstance(knobs, Knobs) else Knobs().patched(knobs or {})
        self._initial_faults = [f if isinstance(f, Fault) else Fault.from_json(f) for f in faults]
        self._knobs = self._initial_knobs
        self._stopping = threading.Event()
        self._log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self.service = ArmService(scenario.azure)
        self.faults = FaultBook()
        for fault in self._initial_faults:
            self.faults.add(Fault(**fault.to_json()))
        self.budget = Budget()
        self._front = FrontDoor(
            self.service,
            knobs=lambda: self._knobs,
            faults=self.faults,
            budget=self.budget,
            base_url=lambda: self.url,
            token_validator=token_validator,
            stopping=self._stopping,
        )
        self._control = Control(
            self.service,
            faults=self.faults,
            get_knobs=lambda: self._knobs,
            set_knobs=self._set_knobs,
            log=self.requests,
            clear_log=self.clear_requests,
            reset=self.reset,
        )
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # ---- lifecycle -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`https://127.0.0.1:PORT` (the `base_url` for the Azure SDK clients)."""
        if self._server is None:
            raise RuntimeError("the ARM emulator is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self._server.server_address[1]}"

    def start(self) -> ArmEmulator:
        """Bind and serve in background threads; returns self."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._certfile, self._keyfile)
        self._stopping.clear()
        self._server = _Server((self._host, self._port), context, self._dispatch)
        serve = threading.Thread(target=self._server.serve_forever, name="arm-emulator", daemon=True)
        clock = threading.Thread(target=self._clock, name="arm-emulator-lro", daemon=True)
        self._threads = [serve, clock]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests and close open connections."""
        self._stopping.set()
        self.service.ops.wake()
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> ArmEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _clock(self) -> None:
        while not self._stopping.is_set():
            due = self.service.ops.next_due()
            now = self.service.ops.clock()
            if due is not None and due <= now:
                self.service.settle()
                continue
            self.service.ops.wait(0.5 if due is None else min(0.5, due - now))

    # ---- in-process API ------------------------------------------------------------------------------------

    def subscribe(self, callback: NsgCallback) -> None:
        """Call `callback(nsg_id, nsg_json)` after every NSG change (write accepted, LRO settled, reset)."""
        self.service.subscribe(callback)

    @property
    def knobs(self) -> Knobs:
        """The current knobs."""
        return self._knobs

    def set_knobs(self, **changes: Any) -> Knobs:
        """Change knobs in-process (same rules as `PATCH /_lab/knobs`)."""
        self._set_knobs(self._knobs.patched(changes))
        return self._knobs

    def _set_knobs(self, knobs: Knobs) -> None:
        self._knobs = knobs
        self.budget.reset()

    def requests(self) -> list[dict[str, Any]]:
        """The request log: ARM requests only, oldest first."""
        with self._log_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._log_lock:
            self._log.clear()

    def reset(self) -> None:
        """Restore the scenario's world and the knobs and faults given at construction; empty the log."""
        self.faults.clear()
        for fault in self._initial_faults:
            self.faults.add(Fault(**fault.to_json()))
        self._set_knobs(self._initial_knobs)
        self.clear_requests()
        self.service.reset()

    # ---- dispatch ------------------------------------------------------------------------------------------

    def _dispatch(self, request: Request) -> Response:
        if request.path.startswith("/_lab/") or request.path == "/_lab":
            return self._control.handle(request)
        started = time.time()
        t0 = time.perf_counter()
        response, op = self._front.handle(request)
        entry = {
            "method": request.method,
            "path": request.path,
            "query": "&".join(f"{k}={v}" for k, v in request.query.items()),
            "status": response.status,
            "started": started,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
            "op": op,
        }
        with self._log_lock:
            self._log.append(entry)
        return response
