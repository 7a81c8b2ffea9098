"""The broker's domain objects: small, frozen, and free of I/O, shared by every layer below the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class GrantStatus(StrEnum):
    """Where a grant is in its lifecycle (docs/design.md §4):

    [awaiting_approval ->] pending -> active -> revoked | expired, or failed
    awaiting_approval -> denied | withdrawn | expired (nobody answered in time)
    """

    AWAITING_APPROVAL = "awaiting_approval"
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"
    FAILED = "failed"
    DENIED = "denied"
    WITHDRAWN = "withdrawn"

    @property
    def is_open(self) -> bool:
        """True while the grant may have (or be about to have) a door open."""
        return self in (GrantStatus.PENDING, GrantStatus.ACTIVE)

    @property
    def is_live(self) -> bool:
        """True until the grant reaches a final status: open, or still waiting for an approver."""
        return self.is_open or self is GrantStatus.AWAITING_APPROVAL


@dataclass(frozen=True)
class NsgRuleRef:
    """One broker-owned security rule that carries (among others, when coalesced) a grant's source."""

    nsg_id: str
    rule_name: str
    priority: int


@dataclass(frozen=True)
class ConnectInfo:
    """Where the grantee connects: the best host to dial plus every address we know."""

    host: str | None
    public_ip: str | None
    fqdn: str | None
    private_ip: str | None
    username: str | None
    os: str | None


@dataclass(frozen=True)
class Grant:
    """A person's time-bounded permission to reach one port of one VM from one source prefix.

    `nsg_ids` are the NSGs on the VM's path when the grant was recorded: the ones whose rules hold its
    source. `etag` is the store's concurrency token for the record it was read from (None before it is
    stored).
    """

    id: str
    principal: str
    principal_name: str
    vm_id: str
    vm_name: str
    port: int
    protocol: str
    source: str
    status: GrantStatus
    created_at: datetime
    expires_at: datetime
    updated_at: datetime
    justification: str | None = None
    nsg_rules: tuple[NsgRuleRef, ...] = ()
    connect: ConnectInfo | None = None
    warnings: tuple[str, ...] = ()
    reason: str | None = None
    nsg_ids: tuple[str, ...] = ()
    approval_required: bool = False
    approver_role: str | None = None
    requested_seconds: int | None = None  # how long the door stays open once approved (the clock starts then)
    decided_by: str | None = None
    decided_by_name: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    etag: str | None = field(default=None, compare=False)

    @property
    def private_ip(self) -> str | None:
        """The VM address the grant's rules let traffic in to."""
        return self.connect.private_ip if self.connect else None


@dataclass(frozen=True)
class NicAddress:
    """One IP configuration of a NIC: its private address and what sits in front of it."""

    private_ip: str
    version: int
    public_ip: str | None
    fqdn: str | None
    subnet_id: str | None


#: `VmTopology.power_state` of a VM that ARM no longer knows (deleted since a listing saw it).
VM_DELETED = "deleted"


@dataclass(frozen=True)
class VmTopology:
    """Where a VM's traffic is filtered and how to reach it: VM -> NICs -> addresses -> NIC + subnet NSGs."""

    vm_id: str
    name: str
    subscription: str
    resource_group: str
    location: str
    os_type: str
    admin_username: str | None
    power_state: str
    tags: dict[str, str]
    addresses: tuple[NicAddress, ...]
    nsg_ids: tuple[str, ...]

    @property
    def is_running(self) -> bool:
        """Only a running VM gets a door: a stopped one would keep it open for whoever comes later."""
        return self.power_state == "running"


@dataclass(frozen=True)
class AuditEvent:
    """One line of the append-only audit trail."""

    kind: str
    at: datetime
    grant_id: str | None
    principal: str | None
    source: str | None
    vm_id: str | None
    port: int | None
    reason: str | None = None
    detail: str | None = None
    actor: str | None = None  # who acted when not the grant's owner: an approver, an admin who revoked
    once: str | None = None  # the identity of an event that may be written again (by whoever carries on)


@dataclass(frozen=True)
class Opening:
    """One open grant as its NSG's reconciler needs it: who gets in, to which VM and port, until when."""

    grant_id: str
    principal: str
    vm_id: str
    vm_name: str
    private_ip: str
    port: int
    source: str
    expires_at: datetime
    created_at: datetime
    opened_at: datetime | None = None  # when its door began to open: the VM opened first keeps an address

    @property
    def opened(self) -> datetime:
        """When the grant's rows were written (its creation for rows that do not say)."""
        return self.opened_at or self.created_at


@dataclass(frozen=True)
class AuditQuery:
    """Which audit events to read: a time range (UTC), optionally one kind, principal or VM (name or id)."""

    since: datetime
    until: datetime
    kind: str | None = None
    principal: str | None = None
    vm: str | None = None
    limit: int = 100
