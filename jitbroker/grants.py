"""The grant lifecycle: request, extend, revoke — the state machine of docs/design.md over the adapters.

    pending (recorded with its expiry, before any rule) -> active (rules written) -> revoked | expired
                                                        \\-> failed (reason recorded, sources taken out)

The store is the only truth about what is open: a grant is recorded `pending` and made visible to its NSGs'
reconcilers before any rule, and the reconciler (`jitbroker.reconciler`) makes each NSG hold exactly its open
grants' sources. A request waits for its NSGs' passes within the answer budget; a grant whose pass is not
done by then is answered `202` while still pending, and the pass (or the caller's next `GET`) finishes it.
Closing lives in `jitbroker.closing`, shared with the sweeper.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

from jitbroker import limits, policy, rules
from jitbroker.closing import Closer
from jitbroker.config import Settings
from jitbroker.deadline import remaining
from jitbroker.durations import format_duration
from jitbroker.errors import (
    AddressAmbiguous,
    Conflict,
    InvalidRequest,
    JitError,
    NotAllowed,
    NotFound,
    TooManyGrants,
    UpstreamError,
    VmNotEligible,
)
from jitbroker.identity.principal import Principal
from jitbroker.model import ConnectInfo, Grant, GrantStatus, NsgRuleRef, Opening, VmTopology
from jitbroker.overlap import together
from jitbroker.reconciler import PassResult, StillWorking
from jitbroker.vmlookup import find_vm

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class GrantStorePort(Protocol):
    """What the lifecycle needs from the store (implemented by `jitbroker.store.GrantStore`)."""

    def create(self, grant: Grant, *, alongside: Callable[[], object] | None = None) -> Grant: ...
    def get(self, grant_id: str) -> Grant: ...
    def replace(self, grant: Grant, *, before: Grant | None = None) -> Grant: ...
    def open_rows(self, grant: Grant) -> None: ...
    def extend_open_rows(self, grant: Grant) -> None: ...
    def drop_open_rows(self, grant: Grant) -> None: ...
    def awaiting(self) -> list[Grant]: ...
    def openings(self, nsg_id: str, *, private_ip: str | None = None) -> list[Opening]: ...
    def open_for_principal(self, oid: str) -> list[Opening]: ...
    def list_for_principal(self, oid: str, status: GrantStatus | None = None) -> list[Grant]: ...
    def list_all(self, status: GrantStatus | None = None) -> list[Grant]: ...


class TopologyPort(Protocol):
    """What the lifecycle needs to know about VMs (implemented by `jitbroker.topology.TopologyReader`)."""

    def resolve(self, vm_id: str) -> VmTopology: ...
    def list_vms(self, scope: str) -> list[VmTopology]: ...
    def invalidate(self, vm_id: str | None = None) -> None: ...


class ReconcilerPort(Protocol):
    """How the lifecycle has NSGs follow the store (implemented by `jitbroker.reconciler.NsgReconciler`)."""

    def reconcile_all(
        self, nsg_ids: Iterable[str], *, timeout: float | None = None
    ) -> dict[str, PassResult]: ...


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
    approver_role: str | None = None  # the app role whose holders approve a request; None: no approval


def new_grant_id() -> str:
    """A fresh, unguessable grant id."""
    return "g-" + secrets.token_hex(10)


class GrantService:
    """Requests, extends and revokes grants; with `Closer`, the only code that moves a grant's state."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: GrantStorePort,
        topology: TopologyPort,
        reconciler: ReconcilerPort,
        closer: Closer,
        clock: Clock,
        new_id: Callable[[], str] = new_grant_id,
        answer_budget: float = 20.0,
    ) -> None:
        self._settings = settings
        self._store = store
        self._topology = topology
        self._reconciler = reconciler
        self._closer = closer
        self._clock = clock
        self._new_id = new_id
        self._budget = answer_budget

    # -- queries ---------------------------------------------------------------------------------------------

    def get(self, principal: Principal, grant_id: str) -> Grant:
        """One grant, for its owner or an admin; a pending one is driven on towards active first."""
        grant = self._store.get(grant_id)
        self._require_owner_or_admin(principal, grant, "see")
        if grant.status is GrantStatus.PENDING and self._still_fresh(grant):
            return self.activate(grant)  # rows again (a broker may have died between them), then the passes
        return grant

    def _still_fresh(self, grant: Grant) -> bool:
        """A pending grant still worth driving on: within the pending grace of its request, or of its
        approval for one a person approved (the sweeper undoes it after that)."""
        if grant.decided_at is not None:
            return grant.decided_at + self._settings.approval_use_window > self._clock()
        return grant.created_at + self._settings.pending_grace > self._clock()

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
                    approver_role=_approvers(vm_policy, self._settings),
                )
        return sorted(found.values(), key=lambda v: (v.name.lower(), v.vm_id.lower()))

    # -- request ---------------------------------------------------------------------------------------------

    def request(
        self, principal: Principal, caller: policy.IpAddress | None, ask: GrantRequest
    ) -> tuple[Grant, bool]:
        """Open a port for the caller; returns (grant, created). An open grant for the same principal, VM,
        port and source is extended within policy instead of adding a second one (created is then False).
        A grant still `pending` when returned is being written; its `GET` finishes it."""
        vm: VmTopology | None = None
        try:
            policy.require_requester(principal.roles, self._settings)
            vm = find_vm(
                self._topology,
                self._settings.allowed_scopes,
                ask.vm,
                resource_group=ask.resource_group,
                subscription=ask.subscription,
            )
            return self._request(principal, caller, ask, vm)
        except (NotAllowed, InvalidRequest, NotFound, Conflict, TooManyGrants) as err:
            source = ask.source if ask.source is not None else (str(caller) if caller is not None else None)
            vm_id = vm.vm_id if vm is not None else None  # the VM it was refused for, when it was found
            self.audit_refusal(principal, err, source=source, vm_id=vm_id, port=ask.port)
            raise

    def audit_refusal(
        self,
        principal: Principal,
        err: JitError,
        *,
        source: str | None = None,
        vm_id: str | None = None,
        port: int | None = None,
    ) -> None:
        """A request refused before it named a grant (also for an address the broker cannot open to)."""
        reason = f"{err.code}: {err.message}"
        self._closer.audit("denied", None, principal, source=source, vm_id=vm_id, port=port, reason=reason)

    def _request(
        self, principal: Principal, caller: policy.IpAddress | None, ask: GrantRequest, vm: VmTopology
    ) -> tuple[Grant, bool]:
        settings = self._settings
        vm_policy = policy.eligible_policy(vm, principal.roles, settings)
        port, protocol = policy.choose_port(
            vm_policy, port=ask.port, protocol=ask.protocol, os_type=vm.os_type
        )
        duration = policy.choose_duration(ask.duration, vm_policy, settings)
        justification = policy.check_justification(vm_policy, ask.justification)
        policy.require_running(vm)
        policy.require_nsg(vm)
        choice = policy.choose_source(
            caller, ask.source, settings, roles=principal.roles, vm_policy=vm_policy, vm_name=vm.name
        )
        source = choice.network
        private_ip = policy.choose_private_ip(vm, source)
        now = self._clock().replace(microsecond=0)  # whole seconds, as rule names carry them
        if vm_policy.approval_required:
            waiting = self._waiting_request(principal.oid, vm.vm_id, port, now)
            if waiting is not None:
                return waiting, False  # the same person asking again while it waits: the same request

        # Both reads at once: what is open at this address behind the VM's NSGs, and what the caller holds.
        *on_path, mine = together(
            *(partial(self._store.openings, nsg_id, private_ip=private_ip) for nsg_id in vm.nsg_ids),
            partial(self._store.open_for_principal, principal.oid),
        )
        existing = self._open_on_path(
            principal.oid, vm, port, str(source), on_path, private_ip=private_ip, now=now
        )
        if existing is not None and existing.approval_required:
            return existing, False  # an approved door is not stretched by asking again: extend it
        if existing is not None and not vm_policy.approval_required:
            return self._extend(existing, duration, now), False
        # (an open grant from before the VM wanted approvals is not stretched either: this asks an approver)
        limits.require_within_limits(
            mine,
            str(source),
            now,
            max_open=settings.max_open_grants_per_principal,
            max_sources=settings.max_sources_per_principal,
        )

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
            nsg_ids=vm.nsg_ids,
        )
        if vm_policy.approval_required:
            grant = replace(
                grant,
                status=GrantStatus.AWAITING_APPROVAL,
                expires_at=now + settings.approval_wait,  # the request's own deadline; the door's comes later
                approval_required=True,
                approver_role=policy.approver_role(vm_policy, settings),
                requested_seconds=int(duration.total_seconds()),
            )
        # Each event is written ahead of the record change it reports: a broker that dies between the two
        # leaves the event (the sweeper then finishes the record), never a record with no event.
        named = (
            f"source named by {principal.display_name} ({principal.oid}), allowed by {choice.named_via}"
            if choice.named
            else None
        )
        event = partial(self._closer.audit, "requested", grant, principal, reason=named, detail=justification)
        grant = self._store.create(grant, alongside=event)
        if grant.status is GrantStatus.AWAITING_APPROVAL:
            self._closer.publish("requested", grant)  # the requester and the justification are the grant's
            return grant, True
        return self.activate(grant), True

    def activate(self, grant: Grant) -> Grant:
        """Open a recorded `pending` grant: make its NSGs see it, then wait (within the answer budget) for
        their passes. Used by a request, and by an approval (`jitbroker.approvals`)."""
        try:
            self._store.open_rows(grant)
            if not self._store.get(grant.id).status.is_open:  # closed while we indexed it (a stalled broker)
                self._store.drop_open_rows(grant)
                return self._store.get(grant.id)
        except Exception as err:
            raise self._fail(grant, err) from err
        return self._settle(grant)

    def _waiting_request(self, oid: str, vm_id: str, port: int, now: datetime) -> Grant | None:
        """The caller's request for this VM and port still waiting for an approver, if any."""
        for grant in self._store.awaiting():
            same = grant.principal == oid and grant.vm_id.lower() == vm_id.lower() and grant.port == port
            if same and grant.expires_at > now:
                return grant
        return None

    def _open_on_path(
        self,
        oid: str,
        vm: VmTopology,
        port: int,
        source: str,
        on_path: Iterable[list[Opening]],
        *,
        private_ip: str,
        now: datetime,
    ) -> Grant | None:
        """The caller's open grant for this VM, port and source, if any, among `on_path` (what is open at the
        VM's address behind each of its NSGs); refuses a VM whose private address another VM behind the same
        NSG holds a grant for (a rule could not tell them apart)."""
        for openings in on_path:
            for opening in openings:
                if opening.expires_at <= now or opening.private_ip != private_ip:
                    continue
                if opening.vm_id.lower() != vm.vm_id.lower():
                    raise AddressAmbiguous(
                        f"VM {opening.vm_name} behind the same network security group has the same "
                        f"private address {private_ip} and an open grant; a rule cannot tell the two apart. "
                        "Try again when that grant has ended, or ask an admin to give one VM another address"
                    )
                if opening.principal == oid and opening.port == port and _same_source(opening.source, source):
                    grant = self._store.get(opening.grant_id)
                    if grant.status.is_open:
                        return grant
        return None

    def _settle(self, grant: Grant) -> Grant:
        """Wait (within the answer budget) for the grant's NSG passes; active when every NSG holds its
        source, failed with the reason when one refuses it, still pending when the passes run long."""
        try:
            results = self._reconciler.reconcile_all(grant.nsg_ids, timeout=remaining(self._budget))
        except StillWorking:
            return grant
        except Exception as err:
            raise self._fail(grant, err) from err
        refs: list[NsgRuleRef] = []
        for nsg_id, result in results.items():
            refusal = result.plan.refused.get(grant.id)
            if refusal is not None:
                raise self._fail(grant, refusal)
            placed = result.plan.rule_for(grant.id)
            if placed is None:  # closed or expired meanwhile: the store says what happened
                return self._store.get(grant.id)
            refs.append(NsgRuleRef(nsg_id, placed.name, placed.priority))
        try:
            warnings = (*grant.warnings, *self._warnings_for(grant, results, refs))
            if grant.decided_at is not None:  # the yes is on record before the door it opened
                self._closer.record_approval(grant)
            self._closer.audit("granted", grant, None, detail=",".join(r.rule_name for r in refs))
            active = self._transition(
                grant,
                status=GrantStatus.ACTIVE,
                nsg_rules=tuple(refs),
                warnings=tuple(dict.fromkeys(warnings)),
            )
            if active.status is GrantStatus.ACTIVE:
                self._closer.publish("granted", active)
            return active
        except Exception as err:
            raise self._fail(grant, err) from err

    def _warnings_for(
        self, grant: Grant, results: Mapping[str, PassResult], refs: Iterable[NsgRuleRef]
    ) -> list[str]:
        """Why the grant may be pointless or useless (read from the NSGs the passes saw); never a failure."""
        priorities = {ref.nsg_id.lower(): ref.priority for ref in refs}
        band = (self._settings.priority_min, self._settings.priority_max)
        found: list[str] = []
        for nsg_id, result in results.items():
            found.extend(
                rules.exposure_warnings(
                    result.security_rules,
                    port=grant.port,
                    private_ip=grant.private_ip or "",
                    band=band,
                    source=grant.source,
                    priority=priorities.get(nsg_id.lower()),
                )
            )
        return found

    # -- extend ----------------------------------------------------------------------------------------------

    def extend(self, principal: Principal, grant_id: str, duration: timedelta) -> Grant:
        """Push an open grant's expiry to now + duration, never past the policy's maximum total.

        An extend re-checks what a request checks, with the same refusals: the requester role, the VM's scope,
        opt-in (`jit-ports` still lists the grant's port), `jit-required-role` and power state, read fresh
        from ARM (not from the topology cache), so a role or tag removed a moment ago ends the renewals. Only
        the grant's owner may extend it: an admin's token says nothing about whether the owner may still have
        the door open, so admins revoke other people's grants but do not extend them. The source was checked
        when the grant was made and an extend never changes it."""
        grant = self._store.get(grant_id)
        now = self._clock().replace(microsecond=0)
        try:  # every refusal of a grant that exists is a `denied` event of that grant, as a request's is
            self._require_extendable(principal, grant, duration, now)
        except (NotAllowed, InvalidRequest, NotFound, Conflict) as err:
            self._closer.audit(
                "denied", grant, principal, reason=f"{err.code}: {err.message}", detail="extend"
            )
            raise
        return self._extend(grant, duration, now)

    def _require_extendable(
        self, principal: Principal, grant: Grant, duration: timedelta, now: datetime
    ) -> None:
        """Refuse an extend the way a request would be refused, or when it cannot move the expiry at all."""
        self._require_owner_or_admin(principal, grant, "extend")
        if grant.principal != principal.oid:
            raise NotAllowed(
                f"only the grant's owner may extend grant {grant.id}: the broker cannot tell from your token "
                "whether they may still have it (an admin may revoke it)"
            )
        if grant.status is GrantStatus.AWAITING_APPROVAL:
            raise Conflict(f"grant {grant.id} still waits for an approver; its clock starts at approval")
        if not grant.status.is_open:
            raise Conflict(f"grant {grant.id} is {grant.status}; request a new one")
        vm_policy = self._still_eligible(principal, grant)
        if vm_policy.approval_required and not grant.approval_required:
            raise Conflict(
                f"VM {grant.vm_name} now needs an approval: grant {grant.id}, opened before that, is not "
                "extended; ask again, and the door stays open for the new request once an approver says yes"
            )
        limit = policy.max_duration(vm_policy, self._settings)
        if duration > limit:
            raise InvalidRequest(
                f"duration {format_duration(duration)} is longer than the maximum {format_duration(limit)}"
            )
        if grant.expires_at <= now:
            raise Conflict(f"grant {grant.id} has expired; request a new one")
        expires_at, capped = self._new_expiry(grant, duration, now)
        if capped and expires_at <= grant.expires_at:
            total = format_duration(self._settings.max_total_duration)
            raise Conflict(
                f"grant {grant.id} already runs to the maximum total of {total}; request a new one"
            )

    def _still_eligible(self, principal: Principal, grant: Grant) -> policy.VmPolicy:
        """The VM's policy if the owner may still hold the grant (read fresh); else the request's refusal."""
        settings = self._settings
        policy.require_requester(principal.roles, settings)
        self._topology.invalidate(grant.vm_id)  # a tag removed or a VM stopped a moment ago counts
        vm = self._topology.resolve(grant.vm_id)
        vm_policy = policy.eligible_policy(vm, principal.roles, settings)
        if grant.port not in vm_policy.ports:
            opens = ", ".join(str(p) for p in sorted(vm_policy.ports))
            raise VmNotEligible(
                f"port {grant.port} is no longer opted in for VM {vm.name} (it opens {opens})"
            )
        policy.require_running(vm)
        return vm_policy

    def _new_expiry(self, grant: Grant, duration: timedelta, now: datetime) -> tuple[datetime, bool]:
        """The expiry an extend by `duration` gives, and whether the maximum total capped it."""
        return policy.extended_expiry(
            created_at=grant.created_at,
            expires_at=grant.expires_at,
            now=now,
            duration=duration,
            settings=self._settings,
        )

    def _extend(self, grant: Grant, duration: timedelta, now: datetime) -> Grant:
        expires_at, capped = self._new_expiry(grant, duration, now)
        total = format_duration(self._settings.max_total_duration)
        warnings = grant.warnings
        if capped:
            note = f"expiry capped by the maximum total duration of {total}"
            warnings = (*(w for w in warnings if w != note), note)
        if expires_at == grant.expires_at and warnings == grant.warnings:
            return self.activate(grant) if grant.status is GrantStatus.PENDING else grant
        # The record first, then the rows its reconcilers read: a rule's name carries the latest expiry.
        longer = self._transition(grant, expires_at=expires_at, warnings=warnings)
        self._store.extend_open_rows(longer)
        self._closer.audit("extended", longer, None, detail=longer.expires_at.isoformat())
        if longer.status is GrantStatus.PENDING:
            return self.activate(longer)
        if longer.status is GrantStatus.ACTIVE and longer.expires_at != grant.expires_at:
            try:
                results = self._reconciler.reconcile_all(longer.nsg_ids, timeout=remaining(self._budget))
            except StillWorking:
                return longer  # the record holds the new expiry; the pass renames the rule shortly
            refs = tuple(
                NsgRuleRef(nsg_id, placed.name, placed.priority)
                for nsg_id, result in results.items()
                if (placed := result.plan.rule_for(longer.id)) is not None
            )
            if refs and refs != longer.nsg_rules:
                longer = self._transition(longer, nsg_rules=refs)
        return longer

    # -- revoke ----------------------------------------------------------------------------------------------

    def revoke(self, principal: Principal, grant_id: str) -> Grant:
        """Record the grant revoked, then take its source out of every rule; revoking twice is fine."""
        grant = self._store.get(grant_id)
        self._require_owner_or_admin(principal, grant, "revoke")
        if grant.status is GrantStatus.AWAITING_APPROVAL:  # nothing was opened: the request is withdrawn
            try:
                return self._closer.record_closed(
                    grant,
                    GrantStatus.WITHDRAWN,
                    by=principal,
                    reason="withdrawn",
                    decided_on=GrantStatus.AWAITING_APPROVAL,
                )
            except Conflict:
                grant = self._store.get(grant_id)  # approved (or ended) meanwhile: revoke what it is now
        return self._closer.close(grant, GrantStatus.REVOKED, by=principal)

    # -- internals -------------------------------------------------------------------------------------------

    def _fail(self, grant: Grant, err: BaseException) -> JitError:
        """End a grant that could not be opened (its sources leave every NSG) and say why to the caller."""
        reason = err.message if isinstance(err, JitError) else "the broker could not open the port"
        if not isinstance(err, JitError):
            log.error("grant %s failed: %s", grant.id, type(err).__name__, exc_info=err)
        try:
            self._closer.close(grant, GrantStatus.FAILED, reason=reason)
        except Exception:
            log.exception("could not mark grant %s failed; the sweeper will", grant.id)
        return _as_jit_error(err)

    def _transition(self, grant: Grant, **changes: Any) -> Grant:
        """Store a change with the grant's etag; on a concurrent change, re-read and apply it once more unless
        the other writer already ended the grant."""
        changes["updated_at"] = self._clock()
        try:
            return self._store.replace(replace(grant, **changes), before=grant)
        except Conflict:
            current = self._store.get(grant.id)
            if not current.status.is_live:
                return current
            return self._store.replace(replace(current, **changes), before=current)

    def _require_owner_or_admin(self, principal: Principal, grant: Grant, verb: str) -> None:
        if grant.principal != principal.oid and not policy.is_admin(principal.roles, self._settings):
            raise NotAllowed(f"only the grant's owner or an admin may {verb} grant {grant.id}")


def _approvers(vm_policy: policy.VmPolicy, settings: Settings) -> str | None:
    """The app role whose holders approve requests for the VM; None when it opens without approval."""
    return policy.approver_role(vm_policy, settings) if vm_policy.approval_required else None


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


def _same_source(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_network(a, strict=False) == ipaddress.ip_network(b, strict=False)
    except ValueError:
        return a == b


def _as_jit_error(err: BaseException) -> JitError:
    if isinstance(err, JitError):
        return err
    return UpstreamError("the broker could not open the port; the grant failed and nothing was left open")
