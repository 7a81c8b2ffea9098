"""A scripted stand-in for the broker, for answers the lab broker does not give (yet): `202 Accepted` grants,
refused renewals, revoke warnings, odd connect details, and approvals timed to the test's liking.

It is a `ThreadingHTTPServer` on 127.0.0.1 over plain HTTP (a loopback broker URL `jit` accepts), as the lab's
token issuer and the identity tests' mini issuer are. Each `(method, path)` has a queue of replies: each
request takes the next, the last one repeats. Without a script, `GET` and `DELETE` of a grant's path answer
the grant as `active` / `revoked`. Every request is recorded (method, path, Host header, JSON body, time,
query string); scripts match on the path alone, so a list's pages are a queue of replies for one path.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GRANTS = "/api/v1/grants"


@dataclass
class Reply:
    """One scripted answer."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    """A request the fake broker received."""

    method: str
    path: str
    host: str
    authorization: str
    body: Any
    at: float
    query: str = ""


Script = Reply | Callable[[], Reply]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeBroker:
    """A broker that answers what the test scripted (see the module docstring)."""

    def __init__(self) -> None:
        self.grant_id = "g-fake0001"
        self.lifetime = timedelta(minutes=10)
        #: How long a request on a VM that needs approval waits for an approver (its `wait_until`).
        self.approval_wait = timedelta(hours=1)
        self.connect: dict[str, Any] = {"host": "127.0.0.1", "username": "azureuser", "os": "Linux"}
        self.seen: list[Seen] = []
        self._scripts: dict[tuple[str, str], list[Script]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- scripting ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def grant_path(self) -> str:
        return f"{GRANTS}/{self.grant_id}"

    def grant(self, status: str = "active", **changes: Any) -> dict[str, Any]:
        """The grant's JSON as the broker shows it now (expiry `lifetime` from now)."""
        now = datetime.now(UTC)
        body: dict[str, Any] = {
            "id": self.grant_id,
            "status": status,
            "principal": "00000000-0000-0000-0000-00000000a11c",
            "principal_name": "alice@contoso.test",
            "vm": "web-01",
            "port": 22,
            "protocol": "ssh",
            "source": "127.0.0.1/32",
            "created_at": iso(now),
            "updated_at": iso(now),
            "expires_at": iso(now + self.lifetime),
            "justification": None,
            "reason": None,
            "nsg_rules": [],
            "connect": dict(self.connect),
            "warnings": [],
        }
        body.update(changes)
        return body

    def answer(
        self, status: str = "active", code: int = 200, *, retry_after: str | None = None, **changes: Any
    ) -> Callable[[], Reply]:
        """A reply with the grant in `status`, built when the request comes (so its expiry is fresh)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return lambda: Reply(code, self.grant(status, **changes), headers)

    def accepted(self, *, location: str | None = None, retry_after: str | None = "1") -> Callable[[], Reply]:
        """`202 Accepted`: the pending grant, a Location (relative unless given) and a Retry-After."""

        def reply() -> Reply:
            headers = {"Location": location or self.grant_path}
            if retry_after is not None:
                headers["Retry-After"] = retry_after
            return Reply(202, self.grant("pending"), headers)

        return reply

    def approval(self, **changes: Any) -> dict[str, Any]:
        """The grant's `approval` object while it waits (until `approval_wait` from now), with `changes`."""
        body: dict[str, Any] = {
            "approver_role": "JIT.Approver",
            "wait_until": iso(datetime.now(UTC) + self.approval_wait),
            "requested_duration": "PT10M",
            "decided_by": None,
            "decided_by_name": None,
            "decided_at": None,
            "reason": None,
        }
        body.update(changes)
        return body

    def decided(self, reason: str | None = None, by: str = "carol@contoso.test") -> dict[str, Any]:
        """The `approval` object once `by` decided, now, saying `reason`."""
        return self.approval(
            wait_until=None,
            decided_by="ca201000-0000-4000-8000-000000000003",
            decided_by_name=by,
            decided_at=iso(datetime.now(UTC)),
            reason=reason,
        )

    def awaiting(
        self, code: int = 202, *, retry_after: str | None = "0", **changes: Any
    ) -> Callable[[], Reply]:
        """The grant `awaiting_approval` (202 with Location and Retry-After, as the broker answers a request
        and its polls); its expiry is the end of the wait (`approval_wait` from when this is scripted), as on
        the broker."""
        wait_until = iso(datetime.now(UTC) + self.approval_wait)

        def reply() -> Reply:
            approval = self.approval(wait_until=wait_until)
            headers = {"Location": self.grant_path}
            if retry_after is not None:
                headers["Retry-After"] = retry_after
            body = self.grant(
                "awaiting_approval", expires_at=approval["wait_until"], approval=approval, **changes
            )
            return Reply(code, body, headers)

        return reply

    @staticmethod
    def error(status: int, code: str, message: str) -> Reply:
        """The broker's error body."""
        return Reply(status, {"error": {"code": code, "message": message}})

    def on(self, method: str, path: str, *replies: Script) -> None:
        """Script the answers to `method path` (the last one repeats)."""
        with self._lock:
            self._scripts[(method, path)] = list(replies)

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """What was asked, optionally only `method` and/or `path`."""
        with self._lock:
            return [s for s in self.seen if (method in (None, s.method)) and (path in (None, s.path))]

    # -- serving --------------------------------------------------------------------------------------------

    def _next(self, method: str, path: str) -> Reply:
        with self._lock:
            queue = self._scripts.get((method, path))
            script = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else None
        if script is None:
            if path == self.grant_path and method == "GET":
                return Reply(200, self.grant("active"))
            if path == self.grant_path and method == "DELETE":
                return Reply(200, self.grant("revoked"))
            return self.error(404, "not_found", f"no script for {method} {path}")
        return script() if callable(script) else script

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path, _, query = handler.path.partition("?")
        with self._lock:
            self.seen.append(
                Seen(
                    handler.command,
                    path,
                    handler.headers.get("Host", ""),
                    handler.headers.get("Authorization", ""),
                    json.loads(raw) if raw else None,
                    time.monotonic(),
                    query,
                )
            )
        reply = self._next(handler.command, path)
        data = json.dumps(reply.body).encode()
        handler.send_response(reply.status)  # adds the Date header the lease reads the broker's clock from
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def start(self) -> FakeBroker:
        broker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                broker._handle(self)

            def do_POST(self) -> None:
                broker._handle(self)

            def do_DELETE(self) -> None:
                broker._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-broker", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @contextmanager
    def running(self) -> Iterator[FakeBroker]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
