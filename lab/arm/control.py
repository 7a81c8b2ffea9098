"""The lab's own endpoint under `/_lab/` (no token): request log, knobs, faults, NSG state, power, reset.

Contract in `docs/lab.md`; the typed client is `lab.arm.admin.ArmAdmin`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from lab.arm.knobs import Fault, FaultBook, Knobs
from lab.arm.routes import Request, Response
from lab.arm.service import ArmService

_POWER = re.compile(r"^/_lab/vms/([^/]+)/power/?$")


class Control:
    """Serves `/_lab/…` against the emulator's parts."""

    def __init__(
        self,
        service: ArmService,
        *,
        faults: FaultBook,
        get_knobs: Callable[[], Knobs],
        set_knobs: Callable[[Knobs], None],
        log: Callable[[], list[dict[str, Any]]],
        clear_log: Callable[[], None],
        reset: Callable[[], None],
    ) -> None:
        self.service = service
        self.faults = faults
        self.get_knobs = get_knobs
        self.set_knobs = set_knobs
        self.log = log
        self.clear_log = clear_log
        self.reset = reset

    def handle(self, request: Request) -> Response:
        """Answer one admin request; 400 with a plain message on bad input, 404 on unknown paths."""
        try:
            return self._handle(request)
        except (ValueError, TypeError) as exc:
            return Response(400, {"error": {"code": "BadLabRequest", "message": str(exc)}})

    def _handle(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        found = _POWER.match(path)
        if found and request.method == "POST":
            return self._power(found.group(1), request)
        table: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", "/_lab/requests"): lambda r: Response(200, self.log()),
            ("DELETE", "/_lab/requests"): lambda r: self._done(self.clear_log),
            ("GET", "/_lab/knobs"): lambda r: Response(200, self.get_knobs().to_json()),
            ("PATCH", "/_lab/knobs"): self._patch_knobs,
            ("GET", "/_lab/faults"): lambda r: Response(200, self.faults.list()),
            ("POST", "/_lab/faults"): self._add_fault,
            ("DELETE", "/_lab/faults"): lambda r: self._done(self.faults.clear),
            ("GET", "/_lab/nsgs"): self._nsgs,
            ("POST", "/_lab/reset"): lambda r: self._done(self.reset),
        }
        serve = table.get((request.method, path))
        if serve is None:
            message = f"no lab endpoint {request.method} {path}"
            return Response(404, {"error": {"code": "NotFound", "message": message}})
        return serve(request)

    @staticmethod
    def _done(action: Callable[[], None]) -> Response:
        action()
        return Response(204)

    def _patch_knobs(self, request: Request) -> Response:
        knobs = self.get_knobs().patched(_object(request))
        self.set_knobs(knobs)
        return Response(200, knobs.to_json())

    def _add_fault(self, request: Request) -> Response:
        fault = Fault.from_json(_object(request))
        self.faults.add(fault)
        return Response(201, fault.to_json())

    def _nsgs(self, request: Request) -> Response:
        self.service.settle()
        return Response(200, self.service.all_nsgs())

    def _power(self, vm: str, request: Request) -> Response:
        state = _object(request).get("state")
        try:
            return Response(200, self.service.set_power(vm, str(state)))
        except KeyError:
            return Response(404, {"error": {"code": "NotFound", "message": f"no VM {vm!r}"}})


def _object(request: Request) -> dict[str, Any]:
    data = json.loads(request.body or b"{}")
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data
