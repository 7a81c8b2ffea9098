"""The broker's answers as the CLI uses them (docs/api.md), keeping the raw JSON for `--json` output."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jitcli.durations import parse_time

#: Statuses of a grant whose door is (or is about to be) open; every other status is closed for good.
OPEN_STATUSES = ("pending", "active")
#: A request on a VM tagged `jit-approval: required`, recorded with no rule until an approver says yes.
AWAITING_APPROVAL = "awaiting_approval"
#: Statuses `jit` waits through (a `202 Accepted` answer): for an approver, then for the broker's NSG writes.
WAITING_STATUSES = (AWAITING_APPROVAL, "pending")
#: Statuses a request that was never approved ends in.
UNAPPROVED_ENDS = ("denied", "withdrawn", "expired")
#: How the broker's revoke answer begins a warning when the NSG rule write failed: the close stands, and the
#: sweeper takes the source out of the rule within one sweep interval.
CLOSE_PENDING_PREFIX = "the grant is closed, but its NSG rule could not be updated just now"


def closes_within_sweep(body: dict[str, Any]) -> bool:
    """True when a revoke answer says the door is not shut yet: the sweeper finishes the close."""
    return any(_warning_text(w).startswith(CLOSE_PENDING_PREFIX) for w in body.get("warnings") or ())


def door_after_revoke(body: dict[str, Any], port: object, vm: object) -> str:
    """`port 22 on web-01 is closed again`, or (the broker's warning) that it closes within one sweep."""
    if closes_within_sweep(body):
        return (
            f"the door to port {port} on {vm} closes within one sweep "
            "(the broker could not update its NSG rule just now)"
        )
    return f"port {port} on {vm} is closed again"


def closed_line(body: dict[str, Any], port: object, vm: object) -> str:
    """What a revoke or withdraw answer means: `Revoked grant g-…: port 22 on web-01 is closed again`, or for
    a request that was still waiting for an approver (which the broker withdraws), that nothing was opened."""
    grant_id = body.get("id")
    if body.get("status") == "withdrawn":
        return (
            f"Withdrew request {grant_id} for port {port} on {vm}: nobody can approve it now "
            "(nothing was opened)"
        )
    return f"Revoked grant {grant_id}: {door_after_revoke(body, port, vm)}"


@dataclass(frozen=True)
class ConnectInfo:
    """Where to connect once the grant is active, and as whom."""

    host: str | None
    username: str | None
    os: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any] | None) -> ConnectInfo:
        """Pick the best address the broker offers: host, then public IP, FQDN, private IP."""
        body = body or {}
        host = body.get("host") or body.get("public_ip") or body.get("fqdn") or body.get("private_ip")
        return cls(host=host, username=body.get("username"), os=body.get("os"))


@dataclass(frozen=True)
class Approval:
    """A grant's approval, on VMs that need one (docs/api.md): who may approve, until when the request waits,
    and the answer once given."""

    approver_role: str | None
    wait_until: datetime | None
    requested_duration: str | None
    decided_by: str | None
    decided_by_name: str | None
    decided_at: datetime | None
    reason: str | None

    @classmethod
    def from_json(cls, body: object) -> Approval | None:
        """The `approval` object of a grant; None on grants that need no approval."""
        if not isinstance(body, dict):
            return None

        def text(key: str) -> str | None:
            value = body.get(key)
            return None if value in (None, "") else str(value)

        wait_until, decided_at = text("wait_until"), text("decided_at")
        return cls(
            approver_role=text("approver_role"),
            wait_until=parse_time(wait_until) if wait_until else None,
            requested_duration=text("requested_duration"),
            decided_by=text("decided_by"),
            decided_by_name=text("decided_by_name"),
            decided_at=parse_time(decided_at) if decided_at else None,
            reason=text("reason"),
        )

    @property
    def decider(self) -> str:
        """Who decided, by name when the broker knows it: `Carol Operator`, else their object id."""
        return self.decided_by_name or self.decided_by or "an approver"


@dataclass(frozen=True)
class Grant:
    """A grant: what was opened, for whom, until when."""

    id: str
    status: str
    vm: str
    port: int
    source: str
    expires_at: datetime
    created_at: datetime | None
    connect: ConnectInfo
    warnings: tuple[str, ...]
    approval: Approval | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Grant:
        """A Grant from the broker's JSON (ValueError/KeyError when the shape is not a grant)."""
        created = body.get("created_at")
        return cls(
            id=str(body["id"]),
            status=str(body.get("status", "")),
            vm=str(body.get("vm", "")),
            port=int(body["port"]),
            source=str(body.get("source", "")),
            expires_at=parse_time(str(body["expires_at"])),
            created_at=parse_time(str(created)) if created else None,
            connect=ConnectInfo.from_json(body.get("connect")),
            warnings=tuple(_warning_text(w) for w in body.get("warnings") or ()),
            approval=Approval.from_json(body.get("approval")),
            raw=body,
        )


def _warning_text(warning: object) -> str:
    """Warnings may be plain strings or `{code, message}` objects; show the message either way."""
    if isinstance(warning, dict):
        return str(warning.get("message") or warning.get("code") or warning)
    return str(warning)
