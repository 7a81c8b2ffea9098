"""A local webhook receiver for tests and the demo: records what arrived and checks the broker's signature.

`WebhookReceiver(secret).start()` serves HTTP on 127.0.0.1 (a free port). Each format has its path —
`url("generic")`, `url("teams")`, `url("slack")` — and `settings()` gives the broker's `JIT_WEBHOOKS` and
`JIT_WEBHOOK_SECRET` for them. A POST to `/generic…` must carry a valid `X-Jit-Signature` over the exact
body and a recent `X-Jit-Timestamp` (docs/notifications.md), else it is answered 401, as a real receiver
would; the other paths record what came, signed or not. `fail_next(n)` answers the next n POSTs 500, to
exercise the queue's retries and its poison queue. `.received` holds every accepted delivery
(`Delivery(headers, json, path, body, verified)`); `.attempts` counts every POST, refused ones too.

`python -m lab.webhooks --port 8089 --secret S` runs one in the foreground and prints what arrives.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from jitbroker.webhooks import verify

SIGNED_PREFIX = "/generic"
_MAX_BODY = 1 << 20


class Delivery(NamedTuple):
    """One accepted POST: its headers, parsed JSON body, path, raw bytes, and whether its signature held
    (None: it carried none)."""

    headers: dict[str, str]
    json: Any
    path: str
    body: bytes
    verified: bool | None


class WebhookReceiver:
    """An HTTP server recording webhook deliveries; a context manager."""

    def __init__(self, secret: str | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.secret = secret
        self.host = host
        self._requested_port = port
        self.received: list[Delivery] = []
        self.attempts = 0
        self.refused = 0
        self._fail = 0
        self._fail_status = 500
        self._lock = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.on_delivery: Any = None  # called with each Delivery (the CLI prints them)

    @property
    def port(self) -> int:
        """The port it listens on (after start)."""
        assert self._server is not None, "the receiver is not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://{self.host}:{self.port}"

    def url(self, fmt: str = "generic", name: str = "") -> str:
        """The URL a webhook of format `fmt` posts to (`name` tells several of one format apart)."""
        return f"{self.base_url}/{fmt}{'/' + name if name else ''}"

    def settings(
        self, formats: tuple[str, ...] = ("generic",), *, events: list[str] | None = None
    ) -> dict[str, str]:
        """`JIT_WEBHOOKS` (one webhook per format, each on its own path) and `JIT_WEBHOOK_SECRET`."""
        hooks: list[dict[str, Any]] = []
        for fmt in formats:
            hook: dict[str, Any] = {"name": f"lab-{fmt}", "url": self.url(fmt), "format": fmt}
            if events is not None:
                hook["events"] = events
            hooks.append(hook)
        return {"JIT_WEBHOOKS": json.dumps(hooks), "JIT_WEBHOOK_SECRET": self.secret or ""}

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next `n` POSTs with `status` (recorded in `.attempts`, not in `.received`)."""
        with self._lock:
            self._fail = n
            self._fail_status = status

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivery]:
        """Block until at least `count` deliveries arrived; AssertionError with what did after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.received)} of {count} deliveries arrived in {timeout:g} s "
                        f"({self.attempts} POSTs, {self.refused} refused)"
                    )
                self._lock.wait(left)
            return list(self.received)

    def clear(self) -> None:
        """Forget every delivery and counter (between tests)."""
        with self._lock:
            self.received.clear()
            self.attempts = self.refused = self._fail = 0

    def start(self) -> WebhookReceiver:
        """Listen and serve in a background thread."""
        if self._server is not None:
            return self
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
                body = self.rfile.read(length)
                status = receiver._take(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        self._server = ThreadingHTTPServer((self.host, self._requested_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            self.attempts += 1
            if self._fail > 0:
                self._fail -= 1
                self.refused += 1
                return self._fail_status
        signed = any(k.lower() == "x-jit-signature" for k in headers)
        verified: bool | None = None
        if signed or path.startswith(SIGNED_PREFIX):
            verified = bool(self.secret) and verify(self.secret or "", headers, body)
            if not verified:
                with self._lock:
                    self.refused += 1
                return HTTPStatus.UNAUTHORIZED
        try:
            document = json.loads(body)
        except ValueError:
            with self._lock:
                self.refused += 1
            return HTTPStatus.BAD_REQUEST
        delivery = Delivery(headers, document, path, body, verified)
        with self._lock:
            self.received.append(delivery)
            self._lock.notify_all()
        if self.on_delivery is not None:
            self.on_delivery(delivery)
        return HTTPStatus.OK


def main(argv: list[str] | None = None) -> int:
    """`python -m lab.webhooks [--port N] [--secret S]`: print each delivery until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m lab.webhooks")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", default=None, help="JIT_WEBHOOK_SECRET, to check generic deliveries")
    args = parser.parse_args(argv)
    receiver = WebhookReceiver(args.secret, port=args.port)

    def show(delivery: Delivery) -> None:
        mark = {True: "signed ok", False: "BAD SIGNATURE", None: "unsigned"}[delivery.verified]
        print(f"{delivery.path} ({mark}): {json.dumps(delivery.json)[:400]}", flush=True)

    receiver.on_delivery = show
    with receiver:
        print(f"receiving on {receiver.base_url}/generic, /teams, /slack (Ctrl-C ends)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
