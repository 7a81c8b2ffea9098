"""Approvals: VMs tagged `jit-approval: required` open only when a second person says yes.

    awaiting_approval --approve--> pending -> active      (the clock starts at approval)
                      --deny-----> denied
                      --withdraw-> withdrawn              (the requester changed their mind)
                      --no answer within JIT_APPROVAL_WAIT--> expired   (the sweeper)

A request on such a VM is recorded `awaiting_approval` with no rule and its expiry set to the end of the
wait, so the sweeper's expiry pass ends unanswered requests like any other grant. An approver (the VM's
`jit-approvers` role, else JIT_APPROVER_ROLE) approves or denies with a reason, never their own request; on
approval the grant becomes `pending` with its requested duration counted from that moment, and from there
the ordinary lifecycle opens it (`GrantService.activate`). An approval that cannot open the door within
JIT_APPROVAL_USE_WINDOW lapses (the sweeper fails it), so an approval is never used later or twice: a
revoked grant needs a new request and a new approval. Every step is an audit event and a notification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

from jitbroker import policy
from jitbroker.closing import Closer
from jitbroker.config import Settings
from jitbroker.errors import Conflict, InvalidRequest, NotAllowed, VmNotEligible
from jitbroker.identity.principal import Principal
from jitbroker.model import Grant, GrantStatus, VmTopology

Clock = Callable[[], datetime]


class ApprovalStorePort(Protocol):
    """What approvals need from the store (implemented by `jitbroker.store.GrantStore`)."""

    def get(self, grant_id: str) -> Grant: ...
    def replace(self, grant: Grant, *, before: Grant | None = None) -> Grant: ...
    def awaiting(self) -> list[Grant]: ...


class TopologyPort(Protocol):
    """A VM read fresh at approval time (implemented by `jitbroker.topology.TopologyReader`)."""

    def resolve(self, vm_id: str) -> VmTopology: ...
    def invalidate(self, vm_id: str | None = None) -> None: ...


class ActivatorPort(Protocol):
    """Opens an approved grant (implemented by `jitbroker.grants.GrantService`)."""

    def activate(self, grant: Grant) -> Grant: ...


class NotAwaiting(Conflict):
    """The grant is not waiting for an approver (approved, denied, withdrawn or expired already)."""

    code = "not_awaiting_approval"


class ApprovalService:
    """Approve, deny, withdraw, and what waits for whom."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: ApprovalStorePort,
        topology: TopologyPort,
        activator: ActivatorPort,
        closer: Closer,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._store = store
        self._topology = topology
        self._activator = activator
        self._closer = closer
        self._clock = clock

    def awaiting_for(self, principal: Principal) -> list[Grant]:
        """The requests this caller may approve now (their role, not their own, still within the wait)."""
        now = self._clock()
        return [
            g
            for g in self._store.awaiting()
            if g.principal != principal.oid
            and (g.approver_role or self._settings.approver_role) in principal.roles
            and g.expires_at > now
        ]

    def approve(self, principal: Principal, grant_id: str, reason: str | None) -> Grant:
        """Say yes: the grant opens for its requested duration counted from now."""
        grant = self._waiting(grant_id, principal)
        try:
            vm = self._fresh_vm(grant)
        except VmNotEligible as refusal:  # no yes can open it any more: end the request, saying why
            self._end_request(grant, refusal)
            raise
        decided = self._clock()  # to the microsecond: the approved event sorts between its neighbours
        now = decided.replace(microsecond=0)  # the door's times in whole seconds, as rule names carry them
        seconds = grant.requested_seconds or int(self._settings.default_duration.total_seconds())
        approved = None
        # Etag-guarded: of two answers at once, one wins and the other is told who answered.
        for _ in range(3):
            try:
                approved = self._store.replace(
                    replace(
                        grant,
                        status=GrantStatus.PENDING,
                        expires_at=now + timedelta(seconds=seconds),
                        updated_at=now,
                        decided_by=principal.oid,
                        decided_by_name=principal.display_name,
                        decided_at=decided,
                        decision_reason=reason,
                        nsg_ids=vm.nsg_ids,
                    ),
                    before=grant,
                )
                break
            except Conflict:
                grant = self._store.get(grant_id)  # still waiting (another field changed): try again
                if grant.status is not GrantStatus.AWAITING_APPROVAL:
                    raise self._answered_meanwhile(grant_id) from None
        if approved is None:
            raise Conflict(f"grant {grant_id} kept changing; try again")
        # The event follows the record: an approval that lost the race must not read as given.
        self._closer.record_approval(approved, first=True)
        self._closer.publish("approved", approved, principal, reason=reason)
        return self._activator.activate(approved)

    def deny(self, principal: Principal, grant_id: str, reason: str) -> Grant:
        """Say no, with a reason the requester will read."""
        if not reason.strip():
            raise InvalidRequest("say why you deny the request: reason is required")
        grant = self._waiting(grant_id, principal)
        decided = replace(
            grant,
            decided_by=principal.oid,
            decided_by_name=principal.display_name,
            decided_at=self._clock().replace(microsecond=0),
            decision_reason=reason,
        )
        return self._decide(decided, GrantStatus.DENIED, principal, reason)

    def withdraw(self, principal: Principal, grant_id: str) -> Grant:
        """The requester (or an admin) drops a request nobody answered yet."""
        grant = self._store.get(grant_id)
        if grant.principal != principal.oid and not policy.is_admin(principal.roles, self._settings):
            raise NotAllowed(f"only the requester or an admin may withdraw grant {grant.id}")
        if grant.status is not GrantStatus.AWAITING_APPROVAL:
            if not grant.status.is_live:
                return grant  # withdrawing twice, or after it ended, changes nothing
            raise NotAwaiting(f"grant {grant.id} is already {grant.status}: revoke it instead")
        return self._decide(grant, GrantStatus.WITHDRAWN, principal, "withdrawn")

    def _decide(self, grant: Grant, status: GrantStatus, principal: Principal, reason: str) -> Grant:
        """End a waiting request, unless someone answered it first (then `NotAwaiting`, nothing recorded)."""
        try:
            return self._closer.record_closed(
                grant, status, by=principal, reason=reason, decided_on=GrantStatus.AWAITING_APPROVAL
            )
        except Conflict:
            raise self._answered_meanwhile(grant.id) from None

    def _end_request(self, grant: Grant, refusal: VmNotEligible) -> None:
        """A request no approval can open any more ends `failed`, in the refusal's words (unless answered)."""
        try:
            self._closer.record_closed(
                grant, GrantStatus.FAILED, reason=refusal.message, decided_on=GrantStatus.AWAITING_APPROVAL
            )
        except Conflict:
            raise self._answered_meanwhile(grant.id) from None

    def _answered_meanwhile(self, grant_id: str) -> NotAwaiting:
        grant = self._store.get(grant_id)
        decided = f" by {grant.decided_by_name}" if grant.decided_by_name else ""
        return NotAwaiting(f"grant {grant.id} was answered meanwhile: it is {grant.status}{decided}")

    def _waiting(self, grant_id: str, principal: Principal) -> Grant:
        grant = self._store.get(grant_id)
        role = grant.approver_role or self._settings.approver_role
        policy.require_approver(principal.roles, principal.oid, requester=grant.principal, role=role)
        if grant.status is not GrantStatus.AWAITING_APPROVAL:
            decided = f" by {grant.decided_by_name}" if grant.decided_by_name else ""
            raise NotAwaiting(f"grant {grant.id} is {grant.status}{decided}; there is nothing to decide")
        if grant.expires_at <= self._clock():
            raise NotAwaiting(
                f"grant {grant.id} waited too long for an approver; the requester must ask again"
            )
        return grant

    def _fresh_vm(self, grant: Grant) -> VmTopology:
        """The VM as it is now: still opted in for this port, and running (an approval never opens a door
        the policy closed meanwhile)."""
        self._topology.invalidate(grant.vm_id)
        vm = self._topology.resolve(grant.vm_id)
        vm_policy = policy.vm_policy(vm.tags)
        if vm_policy is None or grant.port not in vm_policy.ports:
            raise VmNotEligible(f"VM {vm.name} no longer opens port {grant.port} through jit-broker")
        policy.require_running(vm)  # a stopped VM: refused, the request waits for a start and a new yes
        policy.require_nsg(vm)
        return vm
