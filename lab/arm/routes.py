"""ARM's front door and URL table: bearer token, api-version, throttling, faults, latency, then the RP
handler.

Each route names the RBAC action it represents (`op`, logged per request so the deploy helper can derive the
broker's least-privilege role) and its operation kind (read/write/delete/poll, for latency and budgets)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from lab.arm import errors
from lab.arm.errors import ArmError
from lab.arm.knobs import Budget, FaultBook, Knobs
from lab.arm.service import ArmService, WriteContext, WriteResult
from lab.arm.versions import check_api_version

_LIMIT_HEADERS = {
    "read": "x-ms-ratelimit-remaining-subscription-reads",
    "poll": "x-ms-ratelimit-remaining-subscription-reads",
    "write": "x-ms-ratelimit-remaining-subscription-writes",
    "delete": "x-ms-ratelimit-remaining-subscription-deletes",
}
_SEG = r"([^/]+)"
_RG = rf"/subscriptions/{_SEG}/resourcegroups/{_SEG}"
_NET = rf"{_RG}/providers/microsoft\.network"
_CMP = rf"{_RG}/providers/microsoft\.compute"


@dataclass
class Request:
    """One HTTP request as the front door sees it."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


@dataclass
class Response:
    """One HTTP response: status, JSON body (None: empty) and headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """A path pattern and, per method, the RBAC action, operation kind and handler name."""

    pattern: re.Pattern[str]
    methods: Mapping[str, tuple[str, str, str]]


def _route(pattern: str, **methods: tuple[str, str, str]) -> Route:
    return Route(re.compile(f"^{pattern}/?$", re.IGNORECASE), methods)


_NSG_READ = "Microsoft.Network/networkSecurityGroups/read"
_VM_READ = "Microsoft.Compute/virtualMachines/read"
_DEFAULTS_READ = "Microsoft.Network/networkSecurityGroups/defaultSecurityRules/read"
_RULES = "Microsoft.Network/networkSecurityGroups/securityRules"
ROUTES = (
    _route(rf"/subscriptions/{_SEG}/providers/microsoft\.compute/virtualmachines",
           GET=("Microsoft.Compute/virtualMachines/read", "read", "list_vms_sub")),
    _route(rf"{_CMP}/virtualmachines", GET=("Microsoft.Compute/virtualMachines/read", "read", "list_vms_rg")),
    _route(rf"{_CMP}/virtualmachines/{_SEG}", GET=(_VM_READ, "read", "get_vm")),
    _route(rf"{_CMP}/virtualmachines/{_SEG}/instanceview",
           GET=("Microsoft.Compute/virtualMachines/instanceView/read", "read", "instance_view")),
    _route(rf"{_NET}/networkinterfaces/{_SEG}",
           GET=("Microsoft.Network/networkInterfaces/read", "read", "get_nic")),
    _route(rf"{_NET}/publicipaddresses/{_SEG}",
           GET=("Microsoft.Network/publicIPAddresses/read", "read", "get_pip")),
    _route(rf"{_NET}/virtualnetworks/{_SEG}/subnets/{_SEG}",
           GET=("Microsoft.Network/virtualNetworks/subnets/read", "read", "get_subnet")),
    _route(rf"/subscriptions/{_SEG}/providers/microsoft\.network/networksecuritygroups",
           GET=(_NSG_READ, "read", "list_nsgs_sub")),
    _route(rf"{_NET}/networksecuritygroups", GET=(_NSG_READ, "read", "list_nsgs_rg")),
    _route(rf"{_NET}/networksecuritygroups/{_SEG}",
           GET=(_NSG_READ, "read", "get_nsg"),
           PUT=("Microsoft.Network/networkSecurityGroups/write", "write", "put_nsg")),
    _route(rf"{_NET}/networksecuritygroups/{_SEG}/securityrules",
           GET=(f"{_RULES}/read", "read", "list_rules")),
    _route(rf"{_NET}/networksecuritygroups/{_SEG}/securityrules/{_SEG}",
           GET=(f"{_RULES}/read", "read", "get_rule"),
           PUT=(f"{_RULES}/write", "write", "put_rule"),
           DELETE=(f"{_RULES}/delete", "delete", "delete_rule")),
    _route(rf"{_NET}/networksecuritygroups/{_SEG}/defaultsecurityrules",
           GET=(_DEFAULTS_READ, "read", "list_default_rules")),
    _route(rf"{_NET}/networksecuritygroups/{_SEG}/defaultsecurityrules/{_SEG}",
           GET=(_DEFAULTS_READ, "read", "get_default_rule")),
    _route(rf"/subscriptions/{_SEG}/providers/microsoft\.network/locations/{_SEG}/operations/{_SEG}",
           GET=("Microsoft.Network/locations/operations/read", "poll", "op_status")),
    _route(rf"/subscriptions/{_SEG}/providers/microsoft\.network/locations/{_SEG}/operationresults/{_SEG}",
           GET=("Microsoft.Network/locations/operationResults/read", "poll", "op_result")),
)  # fmt: skip


def match(method: str, path: str) -> tuple[str | None, str, str | None, tuple[str, ...]]:
    """(RBAC op, kind, handler name, path parameters) for a request; handler None when nothing serves it."""
    kind = {"GET": "read", "DELETE": "delete"}.get(method, "write")
    for route in ROUTES:
        found = route.pattern.match(path)
        if found:
            entry = route.methods.get(method)
            if entry is None:
                return None, kind, None, ()
            return entry[0], entry[1], entry[2], found.groups()
    return None, kind, None, ()


class FrontDoor:
    """Turns requests into responses the way ARM does, in ARM's order of checks."""

    def __init__(
        self,
        service: ArmService,
        *,
        knobs: Callable[[], Knobs],
        faults: FaultBook,
        budget: Budget,
        base_url: Callable[[], str],
        token_validator: Callable[[str], bool] | None,
        stopping: threading.Event,
    ) -> None:
        self.service = service
        self.knobs = knobs
        self.faults = faults
        self.budget = budget
        self.base_url = base_url
        self.token_validator = token_validator
        self.stopping = stopping

    def handle(self, request: Request) -> tuple[Response, str | None]:
        """The response to an ARM request, and the RBAC op it represents (for the request log)."""
        op, kind, handler, params = match(request.method, request.path)
        try:
            response = self._handle(request, op, kind, handler, params)
        except ArmError as error:
            response = Response(error.status, error.body(), dict(error.headers))
        response.headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        response.headers.setdefault("x-ms-correlation-request-id", str(uuid.uuid4()))
        return response, op

    def _handle(
        self, request: Request, op: str | None, kind: str, handler: str | None, params: tuple[str, ...]
    ) -> Response:
        self._authenticate(request.headers.get("Authorization"))
        if handler is None:
            raise errors.no_route(request.method, request.path)
        api_version = self._check_api_version(request.query.get("api-version"), op, params)
        knobs = self.knobs()
        sub = params[0]
        remaining, retry_after = self.budget.spend(kind, knobs)
        limit_header = _LIMIT_HEADERS[kind]
        if retry_after is not None:
            error = errors.throttled("read" if kind in ("read", "poll") else "write", sub, retry_after)
            error.headers[limit_header] = "0"
            raise error
        latency = knobs.latency_ms.get(kind, 0)
        if latency:
            self.stopping.wait(latency / 1000)
        fault = self.faults.take(request.method, request.path, lro=False)
        if fault is not None:
            if fault.hang_ms:
                self.stopping.wait(fault.hang_ms / 1000)
            if fault.status is not None:
                raise errors.injected(fault.status, fault.code, fault.message, fault.retry_after)
        self.service.settle()
        try:
            serve: Callable[[Request, tuple[str, ...], Knobs, str], Response] = getattr(self, f"_{handler}")
            response = serve(request, params, knobs, api_version)
        finally:
            self.service.deliver()
        response.headers[limit_header] = str(remaining)
        return response

    def _check_api_version(self, api_version: str | None, op: str | None, params: tuple[str, ...]) -> str:
        """ARM's api-version checks; the provider and type come from the route's RBAC action."""
        provider, _, rest = (op or "").partition("/")
        rtype = rest.rsplit("/", 1)[0]
        locations = self.service.locations()
        if rtype.startswith("locations/"):
            where: str | None = params[1]
        else:
            where = self.service.rg_location(params[0], params[1]) if len(params) > 1 else None
        return check_api_version(api_version, provider, rtype, where or locations[0], locations)

    def _authenticate(self, header: str | None) -> None:
        if header is None:
            raise errors.missing_token()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.malformed_authorization()
        if self.token_validator is not None:
            try:
                ok = self.token_validator(token.strip())
            except Exception:
                ok = False
            if not ok:
                raise errors.invalid_token()

    # ---- handlers: (request, path params, knobs, api-version) -> Response ----------------------------------

    def _page(self, request: Request, items: list[dict[str, Any]], knobs: Knobs) -> Response:
        size = max(1, knobs.page_size)
        start = int(request.query.get("$skiptoken", "0") or 0)
        body: dict[str, Any] = {"value": items[start : start + size]}
        if start + size < len(items):
            query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
            query["$skiptoken"] = str(start + size)
            body["nextLink"] = f"{self.base_url()}{request.path}?{urlencode(query)}"
        return Response(200, body)

    def _list_vms_sub(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return self._page(r, self.service.list_vms(p[0], None), k)

    def _list_vms_rg(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return self._page(r, self.service.list_vms(p[0], p[1]), k)

    def _get_vm(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return Response(200, self.service.get_vm(*p, expand=r.query.get("$expand")))

    def _instance_view(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return Response(200, self.service.get_instance_view(*p))

    def _get_nic(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return _with_etag(Response(200, self.service.get_nic(*p)))

    def _get_pip(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return _with_etag(Response(200, self.service.get_public_ip(*p)))

    def _get_subnet(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return _with_etag(Response(200, self.service.get_subnet(*p)))

    def _list_nsgs_sub(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return self._page(r, self.service.list_nsgs(p[0], None), k)

    def _list_nsgs_rg(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return self._page(r, self.service.list_nsgs(p[0], p[1]), k)

    def _get_nsg(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return _with_etag(Response(200, self.service.get_nsg(*p)))

    def _list_rules(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return self._page(r, self.service.list_rules(*p), k)

    def _get_rule(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        return _with_etag(Response(200, self.service.get_rule(*p)))

    def _list_default_rules(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        sub, rg, nsg = p
        return Response(200, {"value": self.service.default_rules(sub, rg, nsg, None)})

    def _get_default_rule(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        sub, rg, nsg, name = p
        return _with_etag(Response(200, self.service.default_rules(sub, rg, nsg, name)))

    def _context(self, r: Request, k: Knobs, v: str) -> WriteContext:
        return WriteContext(
            lro_ms=k.lro_ms,
            concurrency=k.concurrency,
            fault=self.faults.take(r.method, r.path, lro=True),
            base_url=self.base_url(),
            api_version=v,
        )

    def _put_rule(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        body = _json_body(r)
        sub, rg, nsg, name = p
        result = self.service.put_rule(sub, rg, nsg, name, body=body, ctx=self._context(r, k, v))
        return self._accepted(result, v)

    def _delete_rule(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        sub, rg, nsg, name = p
        result = self.service.delete_rule(sub, rg, nsg, name, ctx=self._context(r, k, v))
        if result is None:
            return Response(204)
        return self._accepted(result, v)

    def _put_nsg(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        body = _json_body(r)
        sub, rg, name = p
        result = self.service.put_nsg(
            sub,
            rg,
            name,
            body=body,
            ctx=self._context(r, k, v),
            if_match=r.headers.get("If-Match"),
            if_none_match=r.headers.get("If-None-Match"),
        )
        response = self._accepted(result, v)
        response.headers["Azure-AsyncNotification"] = "Enabled"
        return response

    def _accepted(self, result: WriteResult, api_version: str) -> Response:
        op = result.operation
        base = self.base_url()
        headers = {
            "Azure-AsyncOperation": f"{base}{op.status_path()}?api-version={api_version}",
            "Retry-After": str(op.retry_after(self.service.ops.clock())),
        }
        if result.status == 202:
            headers["Location"] = f"{base}{op.result_path()}?api-version={api_version}"
        response = Response(result.status, result.body, headers)
        return _with_etag(response) if result.body else response

    def _op_status(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        op = self.service.operation(p[0], p[2])
        headers = {}
        if op.status == "InProgress":
            headers["Retry-After"] = str(op.retry_after(self.service.ops.clock()))
        return Response(200, op.status_json(), headers)

    def _op_result(self, r: Request, p: tuple[str, ...], k: Knobs, v: str) -> Response:
        op = self.service.operation(p[0], p[2])
        if op.status == "InProgress":
            return Response(
                202,
                None,
                {
                    "Location": f"{self.base_url()}{r.path}?api-version={v}",
                    "Retry-After": str(op.retry_after(self.service.ops.clock())),
                },
            )
        if op.status == "Succeeded":
            return Response(204)
        return Response(400, {"error": op.status_json()["error"]})


def _with_etag(response: Response) -> Response:
    if isinstance(response.body, dict) and "etag" in response.body:
        response.headers["ETag"] = response.body["etag"]
    return response


def _json_body(request: Request) -> Any:
    if not request.body:
        raise errors.invalid_request_format("The request body is empty.")
    try:
        return json.loads(request.body)
    except ValueError as exc:
        raise errors.invalid_request_format(f"The request body is not valid JSON: {exc}.") from exc
