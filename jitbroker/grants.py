"""The grant lifecycle: request, extend, revoke — the state machine of DESIGN §4 over the adapters.

    pending (recorded with its expiry, before any rule) -> active (rules written) -> revoked | expired
                                                        \\-> failed (partial rules removed, reason recorded)

Rules are coalesced: one broker rule per (NSG, VM private IP, port), its sources every open grant's source.
The store is the only truth about what is open, and every change to it comes first: a grant is recorded
`pending` before its rule write, and a revoke, expiry or failure is recorded before the write that drops
its source. The writer reads the open set right before each write and again after it, writing until the
two agree (`jitbroker.network`), so broker processes converge without ever writing a whole NSG. A close
whose rule write fails still stands: the source is no longer open in the store, and the sweeper's orphan
pass removes it from the rule (the answer says so in `warnings`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from jitbroker import policy
from jitbroker.config import Settings
from jitbroker.durations import format_duration
from jitbroker.errors import (
    Conflict,
    InvalidRequest,
    JitError,
    NotAllowed,
    NotFound,
    UpstreamError,
    VmNotEligible,
)
from jitbroker.identity.principal import Principal
from jitbroker.model import AuditEvent, ConnectInfo, Grant, GrantStatus, NsgRuleRef, VmTopology
from jitbroker.rules import OpenSet

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
CLOSE_PENDING_NOTE = (
    "the grant is closed, but its NSG rule could not be updated just now; the sweeper removes the source "
    "from the rule within one sweep interval"
)


class GrantStorePort(Protocol):
    """What the lifecycle needs from the store (implemented by `jitbroker.store.GrantStore`)."""

    def create(self, grant: Grant) -> Grant: ...
    def get(self, grant_id: str) -> Grant: ...
    def replace(self, grant: Grant) -> Grant: ...
    def list_for_principal(self, oid: str, status: GrantStatus | None = None) -> list[Grant]: ...
    def list_all(self, status: GrantStatus | None = None) -> list[Grant]: ...
    def open_for_vm_port(self, vm_id: str, port: int) -> list[Grant]: ...
    def find_open(self, principal: str, vm_id: str, port: int, source: str) -> Grant | None: ...
    def record(self, event: AuditEvent) -> None: ...
    def note_nsgs(self, nsg_ids: Iterable[str]) -> None: ...


class TopologyPort(Protocol):
    """What the lifecycle needs to know about VMs (implemented by `jitbroker.topology.TopologyReader`)."""

    def resolve(self, vm_id: str) -> VmTopology: ...
    def list_vms(self, scope: str) -> list[VmTopology]: ...
    def nsg(self, nsg_id: str) -> dict[str, Any]: ...


class WriterPort(Protocol):
    """How the lifecycle changes NSGs (implemented by `jitbroker.network.NsgWriter`)."""

    def converge(
        self,
        nsg_id: str,
        *,
        vm_name: str,
        private_ip: str,
        port: int,
        wanted: Callable[[], OpenSet],
    ) -> NsgRuleRef | None: ...


# (VM, port, private IP, source, the priority of the broker's rule per NSG) -> warnings, computed after the
# write from the NSG view the writer just read.
WarningsFn = Callable[[VmTopology, int, str, str, Mapping[str, int]], list[str]]


@dataclass
class CloseReport:
    """What `close_many` did: the grants it closed, the ones someone else moved first, and what failed."""

    closed: list[Grant] = field(default_factory=list)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GrantRequest:
    """What a caller asks for, already shaped by the API (duration parsed, fields typed)."""

    vm: str
    resource_group: str | None = None
    subscription: str | None = None
    port: int | None = None
    protocol: str | None = None
    duration: timedelta | None = None
    source: str | None = None
    justification: str | None = None


@dataclass(frozen=True)
class VmSummary:
    """A VM the caller may request, as `GET /api/v1/vms` lists it."""

    name: str
    vm_id: str
    subscription: str
    resource_group: str
    ports: tuple[int, ...]
    power_state: str
    os: str
    max_duration: timedelta
    justification_required: bool


def new_grant_id() -> str:
    """A fresh, unguessable grant id."""
    return "g-" + secrets.token_hex(10)


class GrantService:
    """Requests, extends and revokes grants; the only place that moves a grant between states."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: GrantStorePort,
        topology: TopologyPort,
        writer: WriterPort,
        clock: Clock,
        new_id: Callable[[], str] = new_grant_id,
        warnings: WarningsFn | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._topology = topology
        self._writer = writer
        self._clock = clock
        self._new_id = new_id
        self._warnings = warnings

    # -- queries ---------------------------------------------------------------------------------------------

    def get(self, principal: Principal, grant_id: str) -> Grant:
        """One grant, for its owner or an admin."""
        grant = self._store.get(grant_id)
        self._require_owner_or_admin(principal, grant, "see")
        return grant

    def list_grants(
        self,
        principal: Principal,
        *,
        all_grants: bool = False,
        status: GrantStatus | None = None,
        vm: str | None = None,
    ) -> list[Grant]:
        """The caller's grants, or everyone's for an admin who asks; newest first."""
        if all_grants:
            if not policy.is_admin(principal.roles, self._settings):
                raise NotAllowed(f"listing every grant needs the {self._settings.admin_role} app role")
            grants = self._store.list_all(status=status)
        else:
            grants = self._store.list_for_principal(principal.oid, status=status)
        if vm:
            wanted = vm.lower()
            grants = [g for g in grants if wanted in (g.vm_name.lower(), g.vm_id.lower())]
        return sorted(grants, key=lambda g: g.created_at, reverse=True)

    def vms(self, principal: Principal) -> list[VmSummary]:
        """The VMs this caller may request, with their ports, power state and OS."""
        policy.require_requester(principal.roles, self._settings)
        found: dict[str, VmSummary] = {}
        for scope in self._settings.allowed_scopes:
            for vm in self._topology.list_vms(scope):
                try:
                    vm_policy = policy.eligible_policy(vm, principal.roles, self._settings)
                except JitError:
                    continue
                found[vm.vm_id.lower()] = VmSummary(
                    name=vm.name,
                    vm_id=vm.vm_id,
                    subscription=vm.subscription,
                    resource_group=vm.resource_group,
                    ports=tuple(sorted(vm_policy.ports)),
                    power_state=vm.power_state,
                    os=vm.os_type,
                    max_duration=policy.max_duration(vm_policy, self._settings),
                    justification_required=vm_policy.justification_required,
                )
        return sorted(found.values(), key=lambda v: (v.name.lower(), v.vm_id.lower()))

    # -- request ---------------------------------------------------------------------------------------------

    def request(
        self, principal: Principal, caller: policy.IpAddress | None, ask: GrantRequest
    ) -> tuple[Grant, bool]:
        """Open a port for the caller; returns (grant, created). An open grant for the same principal, VM,
        port and source is extended within policy instead of adding a second one (created is then False)."""
        try:
            return self._request(principal, caller, ask)
        except (NotAllowed, InvalidRequest, NotFound, Conflict) as err:
            self._audit("denied", None, principal, source=ask.source, reason=f"{err.code}: {err.message}")
            raise

    def _request(
        self, principal: Principal, caller: policy.IpAddress | None, ask: GrantRequest
    ) -> tuple[Grant, bool]:
        settings = self._settings
        policy.require_requester(principal.roles, settings)
        vm = self._find_vm(ask)
        vm_policy = policy.eligible_policy(vm, principal.roles, settings)
        port, protocol = policy.choose_port(
            vm_policy, port=ask.port, protocol=ask.protocol, os_type=vm.os_type
        )
        duration = policy.choose_duration(ask.duration, vm_policy, settings)
        justification = policy.check_justification(vm_policy, ask.justification)
        policy.require_running(vm)
        policy.require_nsg(vm)
        source = policy.choose_source(caller, ask.source, settings)
        private_ip = policy.choose_private_ip(vm, source)
        now = self._clock().replace(microsecond=0)  # whole seconds, as rule names carry them

        existing = self._store.find_open(principal.oid, vm.vm_id, port, str(source))
        if existing is not None:
            return self._extend(existing, duration, now), False

        grant = Grant(
            id=self._new_id(),
            principal=principal.oid,
            principal_name=principal.display_name,
            vm_id=vm.vm_id,
            vm_name=vm.name,
            port=port,
            protocol=protocol,
            source=str(source),
            status=GrantStatus.PENDING,
            created_at=now,
            expires_at=now + duration,
            updated_at=now,
            justification=justification,
            connect=_connect_info(vm, private_ip),
        )
        # Each event is written ahead of the record change it reports: a broker that dies between the two
        # leaves the event (the sweeper then finishes the record), never a record with no event.
        self._audit("requested", grant, principal, detail=justification)
        grant = self._store.create(grant)
        try:
            self._store.note_nsgs(vm.nsg_ids)  # before any rule, so a crash leaves the sweeper a trail
            refs = self._sync(grant, vm.nsg_ids)
        except Exception as err:
            self._fail(grant, vm.nsg_ids, err)
            raise _as_jit_error(err) from err
        warnings = self._warnings_for(vm, port, private_ip, str(source), refs)
        self._audit("granted", grant, principal, detail=",".join(r.rule_name for r in refs))
        active = self._transition(grant, status=GrantStatus.ACTIVE, nsg_rules=tuple(refs), warnings=warnings)
        return active, True

    def _warnings_for(
        self, vm: VmTopology, port: int, private_ip: str, source: str, refs: Iterable[NsgRuleRef]
    ) -> tuple[str, ...]:
        """Why the grant may be pointless or useless; never a reason to fail the grant."""
        if self._warnings is None:
            return ()
        priorities = {ref.nsg_id.lower(): ref.priority for ref in refs}
        try:
            return tuple(self._warnings(vm, port, private_ip, source, priorities))
        except Exception:
            log.warning("could not analyse the NSGs of %s for warnings", vm.name, exc_info=True)
            return ()

    def _find_vm(self, ask: GrantRequest) -> VmTopology:
        """The VM named by id, by subscription + resource group + name, or by a name unique in the scopes."""
        name = ask.vm.strip()
        if name.lower().startswith("/subscriptions/"):
            vm_id = name.rstrip("/")
        elif ask.subscription and ask.resource_group:
            vm_id = (
                f"/subscriptions/{ask.subscription}/resourceGroups/{ask.resource_group}"
                f"/providers/Microsoft.Compute/virtualMachines/{name}"
            )
        else:
            return self._find_vm_by_name(name, ask.resource_group, ask.subscription)
        if not _is_vm_id(vm_id):
            raise InvalidRequest(
                "vm is not a virtual machine: give its name or its resource id "
                "/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.Compute/virtualMachines/<name>"
            )
        if not policy.in_allowed_scope(vm_id, self._settings.allowed_scopes):
            raise VmNotEligible("that VM is outside the subscriptions and resource groups this broker serves")
        return self._topology.resolve(vm_id)

    def _find_vm_by_name(self, name: str, resource_group: str | None, subscription: str | None) -> VmTopology:
        matches: dict[str, VmTopology] = {}
        for scope in self._settings.allowed_scopes:
            for vm in self._topology.list_vms(scope):
                if vm.name.lower() != name.lower():
                    continue
                if resource_group and vm.resource_group.lower() != resource_group.lower():
                    continue
                if subscription and vm.subscription.lower() != subscription.lower():
                    continue
                matches[vm.vm_id.lower()] = vm
        if not matches:
            raise NotFound(
                f"no VM named {name!r} in the subscriptions and resource groups this broker serves"
            )
        if len(matches) > 1:
            raise InvalidRequest(
                f"more than one VM is named {name!r}: add resource_group (and subscription) or use its id"
            )
        (vm,) = matches.values()
        return vm

    # -- extend ----------------------------------------------------------------------------------------------

    def extend(self, principal: Principal, grant_id: str, duration: timedelta) -> Grant:
        """Push an open grant's expiry to now + duration, never past the policy's maximum total."""
        grant = self._store.get(grant_id)
        self._require_owner_or_admin(principal, grant, "extend")
        if not grant.status.is_open:
            raise Conflict(f"grant {grant.id} is {grant.status}; request a new one")
        limit = self._settings.max_duration
        try:
            vm_policy = policy.vm_policy(self._topology.resolve(grant.vm_id).tags)
        except NotFound:
            vm_policy = None
        if vm_policy is not None:
            limit = policy.max_duration(vm_policy, self._settings)
        if duration > limit:
            raise InvalidRequest(
                f"duration {format_duration(duration)} is longer than the maximum {format_duration(limit)}"
            )
        now = self._clock().replace(microsecond=0)
        if grant.expires_at <= now:
            raise Conflict(f"grant {grant.id} has expired; request a new one")
        return self._extend(grant, duration, now, strict=True)

    def _extend(self, grant: Grant, duration: timedelta, now: datetime, *, strict: bool = False) -> Grant:
        expires_at, capped = policy.extended_expiry(
            created_at=grant.created_at,
            expires_at=grant.expires_at,
            now=now,
            duration=duration,
            settings=self._settings,
        )
        total = format_duration(self._settings.max_total_duration)
        if strict and capped and expires_at <= grant.expires_at:
            raise Conflict(
                f"grant {grant.id} already runs to the maximum total of {total}; request a new one"
            )
        warnings = grant.warnings
        if capped:
            note = f"expiry capped by the maximum total duration of {total}"
            warnings = (*(w for w in warnings if w != note), note)
        if expires_at == grant.expires_at and warnings == grant.warnings:
            return grant
        # The record first: the rule's name carries the latest expiry of the open grants it reads.
        longer = self._transition(grant, expires_at=expires_at, warnings=warnings)
        if longer.status is GrantStatus.ACTIVE and longer.expires_at != grant.expires_at:
            refs = tuple(self._sync(longer, _nsgs_of(longer)))
            if refs and refs != longer.nsg_rules:
                longer = self._transition(longer, nsg_rules=refs)
        self._audit("extended", longer, None, detail=longer.expires_at.isoformat())
        return longer

    # -- revoke ----------------------------------------------------------------------------------------------

    def revoke(self, principal: Principal, grant_id: str) -> Grant:
        """Record the grant revoked, then take its source out of every rule; revoking twice is fine."""
        grant = self._store.get(grant_id)
        self._require_owner_or_admin(principal, grant, "revoke")
        return self.close(grant, GrantStatus.REVOKED, by=principal)

    def close(
        self, grant: Grant, status: GrantStatus, *, by: Principal | None = None, reason: str | None = None
    ) -> Grant:
        """End an open grant as revoked, expired or failed: the record moves first, then its source leaves
        every rule. A grant that is no longer open is returned unchanged. If the rule write fails the close
        still stands (the store no longer holds the source open); the answer carries a warning saying the
        sweeper will finish it."""
        if not grant.status.is_open:
            return grant
        closed = self._record_closed(grant, status, by=by, reason=reason)
        try:
            self._sync(closed, _nsgs_of(grant) or self._nsgs_for(grant))
        except Exception:
            log.warning("grant %s is %s but its rule write failed; the sweeper will", grant.id, closed.status)
            return replace(closed, warnings=(*closed.warnings, CLOSE_PENDING_NOTE))
        return closed

    def close_many(
        self, grants: Iterable[Grant], status: GrantStatus, *, reason: str | None = None, workers: int = 8
    ) -> CloseReport:
        """Close many open grants (the sweeper): record each closed, then one rule convergence per
        (VM address, port) and NSG, concurrently (the writer orders what one NSG must take in turn).
        A failed rule write is reported and left to the orphan pass; the grants stay closed."""
        report = CloseReport()
        todo = [g for g in grants if g.status.is_open]
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="close") as pool:
            for grant, outcome in zip(
                todo, pool.map(lambda g: self._try_record_closed(g, status, reason), todo), strict=True
            ):
                if isinstance(outcome, Grant):
                    report.closed.append(outcome)
                elif isinstance(outcome, (Conflict, NotFound)):
                    report.skipped += 1  # another sweep or a revoke got there first
                else:
                    report.errors.append(f"grant {grant.id}: {type(outcome).__name__}: {outcome}")
            by_nsg: dict[str, dict[tuple[str, int, str], Grant]] = {}
            for grant in todo:
                private_ip = grant.connect.private_ip if grant.connect else None
                if private_ip is None:
                    continue
                key = (grant.vm_id.lower(), grant.port, private_ip)
                for nsg_id in _nsgs_of(grant) or self._nsgs_for(grant):
                    by_nsg.setdefault(nsg_id, {}).setdefault(key, grant)
            work = [(nsg_id, key, grant) for nsg_id, keys in by_nsg.items() for key, grant in keys.items()]
            for failure in pool.map(lambda item: self._sync_key(*item), work):
                if failure is not None:
                    report.errors.append(failure)
        return report

    def _try_record_closed(self, grant: Grant, status: GrantStatus, reason: str | None) -> Grant | Exception:
        try:
            return self._record_closed(grant, status, by=None, reason=reason)
        except Exception as err:  # reported per grant by close_many
            return err

    def _record_closed(
        self, grant: Grant, status: GrantStatus, *, by: Principal | None, reason: str | None
    ) -> Grant:
        kind = {GrantStatus.REVOKED: "revoked", GrantStatus.EXPIRED: "expired"}.get(status, "failed")
        self._audit(kind, grant, by, reason=reason)  # the event ahead of the record change it reports
        return self._transition(grant, status=status, reason=reason)

    def _sync_key(self, nsg_id: str, key: tuple[str, int, str], grant: Grant) -> str | None:
        """Converge one rule key in one NSG; the error as text for the sweep report, or None."""
        _, port, private_ip = key
        try:
            self._writer.converge(
                nsg_id,
                vm_name=grant.vm_name,
                private_ip=private_ip,
                port=port,
                wanted=self._open_set_reader(grant.vm_id, port, private_ip),
            )
        except Exception as err:
            return f"rule for {private_ip}:{port} in {nsg_id}: {type(err).__name__}: {err}"
        return None

    # -- internals -------------------------------------------------------------------------------------------

    def _nsgs_for(self, grant: Grant) -> tuple[str, ...]:
        """NSGs on a grant's path when the record does not name them yet (it died pending)."""
        try:
            return self._topology.resolve(grant.vm_id).nsg_ids
        except NotFound:
            return ()

    def _sync(self, grant: Grant, nsg_ids: Iterable[str]) -> list[NsgRuleRef]:
        """Make the (NSG, private IP, port) rules let in exactly the open grants' sources as the store holds
        them, converging with other writers (`NsgWriter.converge`)."""
        private_ip = grant.connect.private_ip if grant.connect else None
        if private_ip is None:
            return []
        wanted = self._open_set_reader(grant.vm_id, grant.port, private_ip)
        refs: list[NsgRuleRef] = []
        for nsg_id in dict.fromkeys(nsg_ids):
            ref = self._writer.converge(
                nsg_id, vm_name=grant.vm_name, private_ip=private_ip, port=grant.port, wanted=wanted
            )
            if ref is not None:
                refs.append(ref)
        return refs

    def _open_set_reader(self, vm_id: str, port: int, private_ip: str) -> Callable[[], OpenSet]:
        def read() -> OpenSet:
            now = self._clock()
            open_grants = [
                g
                for g in self._store.open_for_vm_port(vm_id, port)
                if g.status.is_open
                and g.expires_at > now
                and g.connect is not None
                and g.connect.private_ip == private_ip
            ]
            if not open_grants:
                return OpenSet(frozenset(), None)
            return OpenSet(
                frozenset(g.source for g in open_grants),
                max(g.expires_at for g in open_grants),
                frozenset(g.id for g in open_grants),
            )

        return read

    def _fail(self, grant: Grant, nsg_ids: tuple[str, ...], err: Exception) -> None:
        reason = err.message if isinstance(err, JitError) else f"{type(err).__name__}: {err}"
        try:
            closed = self._record_closed(grant, GrantStatus.FAILED, by=None, reason=reason)
        except Exception:
            log.exception("could not mark grant %s failed; the sweeper will", grant.id)
            return  # still pending in the store, so its source stays wanted: the sweeper undoes it
        try:
            self._sync(closed, nsg_ids)
        except Exception:
            log.exception("could not remove grant %s's partial rules; the sweeper will", grant.id)

    def _transition(self, grant: Grant, **changes: Any) -> Grant:
        """Store a change with the grant's etag; on a concurrent change, re-read and apply it once more unless
        the other writer already ended the grant."""
        changes["updated_at"] = self._clock()
        try:
            return self._store.replace(replace(grant, **changes))
        except Conflict:
            current = self._store.get(grant.id)
            if not current.status.is_open:
                return current
            return self._store.replace(replace(current, **changes))

    def _require_owner_or_admin(self, principal: Principal, grant: Grant, verb: str) -> None:
        if grant.principal != principal.oid and not policy.is_admin(principal.roles, self._settings):
            raise NotAllowed(f"only the grant's owner or an admin may {verb} grant {grant.id}")

    def _audit(
        self,
        kind: str,
        grant: Grant | None,
        by: Principal | None,
        *,
        source: str | None = None,
        vm_id: str | None = None,
        port: int | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        event = AuditEvent(
            kind=kind,
            at=self._clock(),
            grant_id=grant.id if grant else None,
            principal=by.oid if by else (grant.principal if grant else None),
            source=grant.source if grant else source,
            vm_id=grant.vm_id if grant else vm_id,
            port=grant.port if grant else port,
            reason=reason,
            detail=detail,
        )
        try:
            self._store.record(event)
        except Exception:
            log.exception("could not record audit event %s for grant %s", kind, event.grant_id)


def _is_vm_id(vm_id: str) -> bool:
    """Exactly a VM's id: no `..`, empty or extra segments, no other provider or type riding in front."""
    parts = vm_id.split("/")
    fixed = [
        "",
        "subscriptions",
        None,
        "resourcegroups",
        None,
        "providers",
        "microsoft.compute",
        "virtualmachines",
    ]
    return (
        len(parts) == len(fixed) + 1
        and all(want is None or part.lower() == want for part, want in zip(parts, fixed, strict=False))
        and all(part and part not in (".", "..") for part in parts[1:])
    )


def _nsgs_of(grant: Grant) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ref.nsg_id for ref in grant.nsg_rules))


def _connect_info(vm: VmTopology, private_ip: str) -> ConnectInfo:
    address = next(a for a in vm.addresses if a.private_ip == private_ip)
    return ConnectInfo(
        host=address.fqdn or address.public_ip or address.private_ip,
        public_ip=address.public_ip,
        fqdn=address.fqdn,
        private_ip=address.private_ip,
        username=vm.admin_username,
        os=vm.os_type,
    )


def _as_jit_error(err: Exception) -> JitError:
    if isinstance(err, JitError):
        return err
    return UpstreamError("the broker could not open the port; the grant failed and nothing was left open")
