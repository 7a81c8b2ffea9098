"""The HTTP API v1 (docs/api.md): thin routes over `GrantService`, and every error as `{"error": {...}}`.

Read it as the product's table of contents; the work happens in `grants` and below.
"""

from __future__ import annotations

import base64
import bisect
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jitbroker.approvals import ApprovalService
from jitbroker.audit import KINDS as AUDIT_KINDS
from jitbroker.audit import AuditAsk, AuditReader
from jitbroker.config import Settings
from jitbroker.deadline import AnswerClock
from jitbroker.durations import format_duration, parse_duration
from jitbroker.errors import InvalidRequest, JitError, NotAuthenticated
from jitbroker.grants import GrantRequest, GrantService, VmSummary
from jitbroker.identity import Principal, bearer_token, caller_address
from jitbroker.model import AuditEvent, Grant, GrantStatus
from jitbroker.policy import may_name_sources
from jitbroker.readiness import ReadinessReport
from jitbroker.web import install_web

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BODY_BYTES = 16 * 1024
POLL_AFTER_SECONDS = 2  # a pending grant's NSG pass usually ends within one ARM operation
APPROVAL_POLL_SECONDS = 5  # a person answers in seconds to minutes
API_VERSION = "1"


class Verifier(Protocol):
    """Turns a bearer token into a verified principal (implemented by `jitbroker.identity.TokenVerifier`)."""

    def verify(self, token: str) -> Principal: ...


@dataclass(frozen=True)
class Services:
    """What the routes need, built once per process by `jitbroker.runtime`."""

    settings: Settings
    grants: GrantService
    verifier: Verifier
    audit: AuditReader | None = None
    approvals: ApprovalService | None = None


# -- request and response models: the OpenAPI document -----------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GrantIn(_Strict):
    """Open a port: `vm` is a name (unique in the broker's scopes, or narrowed) or a full resource id."""

    vm: str = Field(min_length=1, max_length=400, examples=["web-01"])
    resource_group: str | None = Field(default=None, min_length=1, max_length=90)
    subscription: str | None = Field(default=None, min_length=1, max_length=64)
    port: int | None = Field(default=None, ge=1, le=65535, examples=[22])
    protocol: str | None = Field(default=None, min_length=1, max_length=16, examples=["ssh"])
    duration: StrictStr | StrictInt | None = Field(
        default=None, examples=["PT30M", "30m", 1800], description="ISO 8601, 30m/2h/90s, or seconds"
    )
    source: str | None = Field(default=None, min_length=1, max_length=64, examples=["203.0.113.10/32"])
    justification: str | None = Field(default=None, max_length=500)


class ApproveIn(_Strict):
    """An approver's yes, with an optional reason for the audit trail."""

    reason: str | None = Field(default=None, max_length=500)


class DenyIn(_Strict):
    """An approver's no: the reason is required, and the requester reads it."""

    reason: str = Field(min_length=1, max_length=500)


class ExtendIn(_Strict):
    """Push the expiry to now + duration, never past the policy's maximum total."""

    duration: StrictStr | StrictInt = Field(examples=["PT30M", "30m", 1800])


class RuleOut(BaseModel):
    """One broker-owned NSG rule carrying this grant's source."""

    nsg_id: str
    rule_name: str
    priority: int


class ConnectOut(BaseModel):
    """Where to connect."""

    host: str | None
    public_ip: str | None
    fqdn: str | None
    private_ip: str | None
    username: str | None
    os: str | None


class ApprovalOut(BaseModel):
    """A grant's approval, on VMs that need one: who may approve, until when the request waits, the answer."""

    approver_role: str | None
    wait_until: str | None = Field(description="while awaiting_approval: when the request expires unanswered")
    requested_duration: str | None
    decided_by: str | None
    decided_by_name: str | None
    decided_at: str | None
    reason: str | None


class GrantOut(BaseModel):
    """A grant, as every grant route returns it."""

    id: str
    status: GrantStatus
    principal: str
    principal_name: str
    vm: str
    vm_id: str
    port: int
    protocol: str
    source: str
    created_at: str
    updated_at: str
    expires_at: str
    justification: str | None
    reason: str | None
    nsg_rules: list[RuleOut]
    connect: ConnectOut | None
    warnings: list[str]
    approval: ApprovalOut | None = None

    @classmethod
    def of(cls, grant: Grant) -> GrantOut:
        """The wire form of a domain grant."""
        connect = grant.connect
        return cls(
            id=grant.id,
            status=grant.status,
            principal=grant.principal,
            principal_name=grant.principal_name,
            vm=grant.vm_name,
            vm_id=grant.vm_id,
            port=grant.port,
            protocol=grant.protocol,
            source=grant.source,
            created_at=_iso(grant.created_at),
            updated_at=_iso(grant.updated_at),
            expires_at=_iso(grant.expires_at),
            justification=grant.justification,
            reason=grant.reason,
            nsg_rules=[
                RuleOut(nsg_id=r.nsg_id, rule_name=r.rule_name, priority=r.priority) for r in grant.nsg_rules
            ],
            connect=ConnectOut(**vars(connect)) if connect else None,
            warnings=list(grant.warnings),
            approval=_approval(grant),
        )


def _approval(grant: Grant) -> ApprovalOut | None:
    if not grant.approval_required:
        return None
    waiting = grant.status is GrantStatus.AWAITING_APPROVAL
    seconds = grant.requested_seconds
    return ApprovalOut(
        approver_role=grant.approver_role,
        wait_until=_iso(grant.expires_at) if waiting else None,
        requested_duration=format_duration(timedelta(seconds=seconds)) if seconds else None,
        decided_by=grant.decided_by,
        decided_by_name=grant.decided_by_name,
        decided_at=_iso(grant.decided_at) if grant.decided_at else None,
        reason=grant.decision_reason,
    )


class GrantList(BaseModel):
    """`GET /api/v1/grants`: one page; `nextLink` is the next page's URL, null on the last."""

    grants: list[GrantOut]
    nextLink: str | None = None


class VmOut(BaseModel):
    """A VM the caller may request."""

    name: str
    id: str
    subscription: str
    resource_group: str
    ports: list[int]
    power_state: str
    os: str
    max_duration: str
    justification_required: bool
    approval_required: bool
    approver_role: str | None = None

    @classmethod
    def of(cls, vm: VmSummary) -> VmOut:
        """The wire form of a VM summary."""
        return cls(
            name=vm.name,
            id=vm.vm_id,
            subscription=vm.subscription,
            resource_group=vm.resource_group,
            ports=list(vm.ports),
            power_state=vm.power_state,
            os=vm.os,
            max_duration=format_duration(vm.max_duration),
            justification_required=vm.justification_required,
            approval_required=vm.approver_role is not None,
            approver_role=vm.approver_role,
        )


class VmList(BaseModel):
    """`GET /api/v1/vms`: one page; `nextLink` is the next page's URL, null on the last."""

    vms: list[VmOut]
    nextLink: str | None = None


_AUDIT_KIND_ENUM: list[JsonValue] = [*sorted(AUDIT_KINDS)]


class AuditEventOut(BaseModel):
    """One line of the audit trail."""

    kind: str = Field(json_schema_extra={"enum": _AUDIT_KIND_ENUM})  # documented; old rows still read
    at: str
    grant_id: str | None
    principal: str | None
    source: str | None
    vm_id: str | None
    port: int | None
    reason: str | None
    detail: str | None
    actor: str | None = None

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventOut:
        """The wire form of an audit event."""
        return cls(**{**vars(event), "at": _iso(event.at)})


class AuditList(BaseModel):
    """`GET /api/v1/audit`: one page, newest first; `nextLink` is the next page's URL, null on the last."""

    events: list[AuditEventOut]
    nextLink: str | None = None


class Readiness(BaseModel):
    """Whether this instance can serve: each dependency `ok` or `failed: <kind>`."""

    status: str
    checks: dict[str, str]


class WhoAmI(BaseModel):
    """Who the broker thinks you are, and the address it sees."""

    principal: str
    name: str | None
    upn: str | None
    tenant_id: str
    roles: list[str]
    is_admin: bool
    address: str | None
    may_name_sources: bool = Field(
        description="you hold the role that lets you name a source other than your own address on any VM "
        "(inside the VM's jit-sources allow-list when it has one); without it, only VMs whose jit-sources "
        "tag lists the source let you name it"
    )


class Health(BaseModel):
    """Liveness."""

    status: str


class ErrorBody(BaseModel):
    """The one error shape."""

    code: str
    message: str


class ErrorOut(BaseModel):
    """`{"error": {"code", "message"}}` with the matching status."""

    error: ErrorBody


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- the app -----------------------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 413, 422, 429, 502, 503)
}
_grant_id = PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
_bearer = HTTPBearer(
    auto_error=False, description="An Entra ID access token for the broker's app registration"
)


def authenticate(request: Request, _: Annotated[Any, Depends(_bearer)] = None) -> Principal:
    """The verified caller; every route but health depends on it."""
    token = bearer_token(request.headers.get("authorization"))
    provide: Callable[[], Services] = request.app.state.services
    return provide().verifier.verify(token)


Caller = Annotated[Principal, Depends(authenticate)]


# Routes are sync and spend most of a grant waiting on ARM's long-running operations, one at a time per NSG.
# With anyio's default 40 threads a burst of grants on one NSG queues behind itself instead of joining the
# coalesced write in flight; waiting threads cost little, so allow a burst well beyond that.
REQUEST_THREADS = 200


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
    yield


def create_app(
    services: Services | Callable[[], Services],
    *,
    readiness: Callable[[], ReadinessReport] | None = None,
) -> FastAPI:
    """The broker's ASGI app; `services` may be a factory so a process builds them on first use, and
    `readiness` answers `GET /api/ready` (checked without a token, so it must never need one)."""
    provide: Callable[[], Services] = services if callable(services) else (lambda: services)
    app = FastAPI(
        lifespan=_lifespan,
        title="jit-broker",
        version=API_VERSION,
        summary="Just-in-time network access to Azure VMs",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        responses=_ERRORS,
    )
    _install_error_handlers(app)
    _install_middleware(app)

    app.state.services = provide

    @app.get("/api/health", response_model=Health, tags=["meta"])
    def health() -> Health:
        """Liveness; no auth, no secrets, no calls to Azure."""
        return Health(status="ok")

    @app.post(
        "/api/v1/grants",
        response_model=GrantOut,
        status_code=201,
        tags=["grants"],
        responses={
            200: {"model": GrantOut, "description": "The caller's open grant for it, extended"},
            202: {
                "model": GrantOut,
                "description": "Recorded and still being written to the NSGs: poll `Location` (the grant) "
                "after `Retry-After` seconds until its status is no longer `pending`",
            },
        },
    )
    def request_grant(body: GrantIn, principal: Caller, request: Request) -> JSONResponse:
        """Open a port for the caller (201), extend the caller's open grant for the same thing (200), or
        answer within the time budget with the grant still pending (202, poll `Location`). A new grant beyond
        the per-person limits is refused with 429 and `Retry-After`."""
        ask = GrantRequest(
            vm=body.vm,
            resource_group=body.resource_group,
            subscription=body.subscription,
            port=body.port,
            protocol=body.protocol,
            duration=None if body.duration is None else parse_duration(body.duration),
            source=body.source,
            justification=body.justification,
        )
        services = provide()
        caller = _requester_address(services, request, principal)
        grant, created = services.grants.request(principal, caller, ask)
        return _grant_answer(grant, 201 if created else 200)

    @app.post(
        "/api/v1/grants/{grant_id}/approve",
        response_model=GrantOut,
        tags=["approvals"],
        responses={202: {"model": GrantOut, "description": "Approved; the door is still being opened"}},
    )
    def approve_grant(
        grant_id: Annotated[str, _grant_id], principal: Caller, body: ApproveIn | None = None
    ) -> JSONResponse:
        """Approve a request (the VM's approver role, never your own): the door opens now for the requested
        duration, counted from this moment."""
        approvals = _approvals(provide())
        grant = approvals.approve(principal, grant_id, body.reason if body else None)
        return _grant_answer(grant, 200)

    @app.post("/api/v1/grants/{grant_id}/deny", response_model=GrantOut, tags=["approvals"])
    def deny_grant(grant_id: Annotated[str, _grant_id], body: DenyIn, principal: Caller) -> GrantOut:
        """Deny a request, saying why (the VM's approver role, never your own)."""
        return GrantOut.of(_approvals(provide()).deny(principal, grant_id, body.reason))

    @app.post("/api/v1/grants/{grant_id}/withdraw", response_model=GrantOut, tags=["approvals"])
    def withdraw_grant(grant_id: Annotated[str, _grant_id], principal: Caller) -> GrantOut:
        """Withdraw your request while it waits for an approver (idempotent)."""
        return GrantOut.of(_approvals(provide()).withdraw(principal, grant_id))

    @app.get("/api/v1/grants", response_model=GrantList, tags=["grants"])
    def list_grants(  # noqa: PLR0917 - query parameters, each its own
        principal: Caller,
        request: Request,
        page: Paging,
        all_grants: Annotated[
            bool, Query(alias="all", description="every principal's grants (admins)")
        ] = False,
        status: GrantStatus | None = None,
        vm: Annotated[str | None, Query(max_length=400)] = None,
        awaiting: Annotated[
            Literal["me"] | None,
            Query(description="`me`: the requests waiting for an approver that you may approve"),
        ] = None,
    ) -> GrantList:
        """The caller's grants, newest first; `all=true` for admins; filtered by status and VM name or id;
        paged (`limit`, then follow `nextLink`)."""
        if awaiting == "me":
            shown, next_link = page.cut(_approvals(provide()).awaiting_for(principal), request, _oldest_first)
        else:
            grants = provide().grants.list_grants(principal, all_grants=all_grants, status=status, vm=vm)
            shown, next_link = page.cut(grants, request, _newest_first)
        return GrantList(grants=[GrantOut.of(g) for g in shown], nextLink=next_link)

    @app.get("/api/v1/grants/{grant_id}", response_model=GrantOut, tags=["grants"])
    def get_grant(grant_id: Annotated[str, _grant_id], principal: Caller) -> GrantOut:
        """One grant (its owner or an admin)."""
        return GrantOut.of(provide().grants.get(principal, grant_id))

    @app.delete("/api/v1/grants/{grant_id}", response_model=GrantOut, tags=["grants"])
    def revoke_grant(grant_id: Annotated[str, _grant_id], principal: Caller) -> GrantOut:
        """Revoke (owner or admin); revoking an ended grant returns it unchanged."""
        return GrantOut.of(provide().grants.revoke(principal, grant_id))

    @app.post("/api/v1/grants/{grant_id}/extend", response_model=GrantOut, tags=["grants"])
    def extend_grant(grant_id: Annotated[str, _grant_id], body: ExtendIn, principal: Caller) -> GrantOut:
        """Extend an open grant, never past the policy's maximum total."""
        duration = parse_duration(body.duration)
        return GrantOut.of(provide().grants.extend(principal, grant_id, duration))

    @app.get("/api/v1/vms", response_model=VmList, tags=["vms"])
    def list_vms(principal: Caller, request: Request, page: Paging) -> VmList:
        """The VMs the caller may request, with ports, power state and OS; paged like every list."""
        shown, next_link = page.cut(provide().grants.vms(principal), request, _by_name)
        return VmList(vms=[VmOut.of(vm) for vm in shown], nextLink=next_link)

    @app.get("/api/v1/whoami", response_model=WhoAmI, tags=["meta"])
    def whoami(principal: Caller, request: Request) -> WhoAmI:
        """The principal, roles and the address the broker sees for the caller."""
        try:
            seen: str | None = str(_seen_address(request, provide().settings))
        except JitError:
            seen = None
        settings = provide().settings
        return WhoAmI(
            principal=principal.oid,
            name=principal.name,
            upn=principal.upn,
            tenant_id=principal.tenant_id,
            roles=sorted(principal.roles),
            is_admin=settings.admin_role in principal.roles,
            address=seen,
            may_name_sources=may_name_sources(principal.roles, settings),
        )

    _install_operations_routes(app, provide, readiness)
    install_web(app, lambda: provide().settings)  # the page at / (docs/web.md)
    return app


def _install_operations_routes(
    app: FastAPI, provide: Callable[[], Services], readiness: Callable[[], ReadinessReport] | None
) -> None:
    """What the people who run the broker call: readiness for the platform, the audit trail for auditors."""

    @app.get("/api/ready", response_model=Readiness, tags=["meta"], responses={503: {"model": Readiness}})
    def ready() -> JSONResponse:
        """Readiness for a platform probe: Table Storage and ARM reachable with the broker's identity (200),
        else 503 naming the dependency that failed. No token, no secrets; results are cached briefly."""
        report = readiness() if readiness is not None else ReadinessReport({"readiness": "failed: not wired"})
        body = Readiness(status="ready" if report.ready else "not_ready", checks=dict(report.checks))
        return JSONResponse(body.model_dump(), status_code=200 if report.ready else 503)

    @app.get("/api/v1/audit", response_model=AuditList, tags=["audit"])
    def read_audit(
        principal: Caller, request: Request, query: Annotated[AuditParams, Depends()]
    ) -> AuditList:
        """Audit events (admins and auditors), newest first, filtered by time range (default the last 24 h),
        kind, principal and VM; paged with `nextLink`."""
        reader = provide().audit
        if reader is None:
            raise JitError("the audit trail is not wired in this broker")
        found = reader.page(principal, query.ask())
        next_link = None
        if found.cursor is not None:  # the same absolute range: a relative `since` must not move on
            since, until = found.since.isoformat(), found.until.isoformat()
            rest = {"cursor": found.cursor, "since": since, "until": until}
            next_link = _relative(str(request.url.include_query_params(**rest)))
        return AuditList(events=[AuditEventOut.of(e) for e in found.events], nextLink=next_link)


_KIND_HELP = "one of " + ", ".join(sorted(AUDIT_KINDS))


class AuditParams:
    """`GET /api/v1/audit`'s query: a time range, filters and paging."""

    def __init__(  # noqa: PLR0917 - FastAPI fills each query parameter by name
        self,
        since: Annotated[str | None, Query(max_length=40, description="24h, PT2H or ISO 8601 time")] = None,
        until: Annotated[str | None, Query(max_length=40, description="ISO 8601 time; default now")] = None,
        kind: Annotated[str | None, Query(max_length=40, description=_KIND_HELP)] = None,
        user: Annotated[str | None, Query(max_length=128, description="a principal's object id")] = None,
        vm: Annotated[str | None, Query(max_length=400, description="a VM's name or resource id")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(description="from a nextLink")] = None,
    ) -> None:
        self._ask = AuditAsk(
            since=since, until=until, kind=kind, principal=user, vm=vm, limit=limit, cursor=cursor
        )

    def ask(self) -> AuditAsk:
        """The query as the audit reader takes it."""
        return self._ask


AuditQueryParams = Annotated[AuditParams, Depends()]


def _seen_address(request: Request, settings: Settings) -> Any:
    """The caller's address as the broker's trust setting reads it (`InvalidRequest` when it cannot)."""
    peer = request.client.host if request.client else None
    return caller_address(request.headers, peer, settings.client_address_from)


def _requester_address(services: Services, request: Request, principal: Principal) -> Any:
    """The address a grant would let in; one the broker cannot open to is refused and audited like any
    refusal of a request."""
    try:
        return _seen_address(request, services.settings)
    except JitError as err:
        services.grants.audit_refusal(principal, err)
        raise


def _approvals(services: Services) -> ApprovalService:
    if services.approvals is None:
        raise JitError("approvals are not wired in this broker")
    return services.approvals


def _grant_answer(grant: Grant, status: int) -> JSONResponse:
    """A grant with the status it earned: 202 + `Location` while it waits for an approver or for its NSG
    writes (poll the grant), else `status`."""
    body = GrantOut.of(grant).model_dump(mode="json")
    if grant.status in (GrantStatus.PENDING, GrantStatus.AWAITING_APPROVAL):
        after = POLL_AFTER_SECONDS if grant.status is GrantStatus.PENDING else APPROVAL_POLL_SECONDS
        headers = {"Location": f"/api/v1/grants/{grant.id}", "Retry-After": str(after)}
        return JSONResponse(body, status_code=202, headers=headers)
    return JSONResponse(body, status_code=status)


# -- errors: mapped to JSON in exactly one place -----------------------------------------------------------


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error shape every failure leaves the broker in; `x-ms-error-code` repeats the code, as Azure
    services do, so a client can tell errors apart without reading the body."""
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={**(headers or {}), "x-ms-error-code": code},
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def on_jit_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, JitError)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, NotAuthenticated) else None
        if exc.retry_after is not None:
            headers = {**(headers or {}), "Retry-After": str(exc.retry_after)}
        if exc.status >= 500:
            log.warning("request failed: %s: %s", exc.code, exc.message)
        return error_response(exc.status, exc.code, exc.message, headers)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_request", "the request body is not valid JSON")
        return error_response(422, "invalid_request", "; ".join(_describe(e) for e in errors[:5]))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        messages = {404: "no such route", 405: "method not allowed on this route"}
        code = codes.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal_error")
        message = messages.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, dict(exc.headers or {}) or None)

    async def on_anything(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "the broker failed unexpectedly; nothing was opened")

    app.add_exception_handler(JitError, on_jit_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_anything)


class Page:
    """`?limit=` (1 to 1000, default 100) and the opaque `?cursor=` of a list's page; `cut` gives the page and
    the next page's `nextLink` (a relative URL with the same filters), so no list stops silently.

    The cursor is the last shown item's place in the list's order, not a position: the next page starts after
    that item whatever was added or removed meanwhile, so following `nextLink` never shows an item twice and
    never skips one that was there all along."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=1000, description="items per page")] = 100,
        cursor: Annotated[str | None, Query(description="from a nextLink")] = None,
    ) -> None:
        self.limit = limit
        self.after = _after(cursor)

    def cut(
        self, items: Iterable[T], request: Request, order: Callable[[T], str]
    ) -> tuple[list[T], str | None]:
        """This page of `items` in `order` (a string per item that sorts as the list reads), and the link to
        the next one (None on the last page)."""
        keyed = sorted(((order(item), item) for item in items), key=lambda pair: pair[0])
        keys = [key for key, _ in keyed]
        start = 0 if self.after is None else bisect.bisect_right(keys, self.after)
        end = start + self.limit
        shown = [item for _, item in keyed[start:end]]
        if end >= len(keyed):
            return shown, None
        cursor = _CURSOR_TAG + base64.urlsafe_b64encode(keys[end - 1].encode()).decode().rstrip("=")
        return shown, _relative(str(request.url.include_query_params(cursor=cursor)))


Paging = Annotated[Page, Depends()]
_CURSOR_TAG = "k"
_CURSOR_MAX = 1200


def _after(cursor: str | None) -> str | None:
    """The place a cursor names; a cursor this broker could not have handed out is refused (400)."""
    if cursor is None:
        return None
    refused = InvalidRequest("cursor is not one this broker handed out; start again without it")
    if len(cursor) > _CURSOR_MAX or not cursor.startswith(_CURSOR_TAG):
        raise refused
    text = cursor[len(_CURSOR_TAG) :]
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise refused from None


def _newest_first(grant: Grant) -> str:
    """A grant's place in a newest-first list."""
    return f"{_LATEST - grant.created_at.timestamp():020.6f}|{grant.id}"


def _oldest_first(grant: Grant) -> str:
    """A waiting request's place in the approvers' list (the longest waiting first)."""
    return f"{grant.created_at.timestamp():020.6f}|{grant.id}"


def _by_name(vm: VmSummary) -> str:
    return f"{vm.name.lower()}|{vm.vm_id.lower()}"


_LATEST = 99_999_999_999.0  # seconds since 1970 past any grant's creation: newest first sorts ascending


def _relative(url: str) -> str:
    """A link without scheme and host: the broker may sit behind a proxy that rewrites them."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
    if error.get("type") == "extra_forbidden":
        return f"unknown field {location!r}"
    if error.get("type") == "missing":
        return f"{location or 'body'}: required"
    return f"{location or 'body'}: {error.get('msg', 'invalid')}"


def _install_middleware(app: FastAPI) -> None:
    app.add_middleware(BodySizeLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(AnswerClock)  # outermost (added last): the clock starts before the body is read


class BodySizeLimit:
    """Refuses request bodies over `limit` bytes with 413, whether or not Content-Length announces them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body up front (it is small by contract), then replay it to the app."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        too_large = error_response(
            413, "payload_too_large", f"request bodies are limited to {self._limit} bytes"
        )
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._limit):
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self._app(scope, _replay([], message), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self._app(scope, _replay(chunks, None), send)


def _replay(chunks: list[bytes], final: Message | None) -> Receive:
    body = b"".join(chunks)
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if final is not None:
                return final
            return {"type": "http.request", "body": body, "more_body": False}
        # After the body, a receive only waits for the client to go away.
        return {"type": "http.disconnect"}

    return receive
