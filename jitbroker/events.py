"""What happened to a grant, as notifications tell it: one small event per lifecycle step.

The lifecycle publishes an `Event` after the step is recorded; a publisher only enqueues it (an Azure Storage
queue in Azure, Azurite's in the lab), and delivery to webhooks happens elsewhere, later, with retries — so a
notification can never block or fail a grant. `payload` is the one JSON shape every channel starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from jitbroker.model import Grant

#: Every kind of event a webhook may receive.
KINDS = (
    "requested",  # a grant that needs approval was asked for (approvers act on this one)
    "approved",
    "denied",
    "withdrawn",
    "granted",  # the door is open
    "expiring",  # the door closes in a few minutes: extend now if you still need it
    "expired",
    "revoked",
    "orphan_removed",  # the sweeper took out a broker rule nobody held
)


@dataclass(frozen=True)
class Actor:
    """Who caused the event (an approver, the requester, an admin); None for the broker itself."""

    oid: str
    name: str | None = None


@dataclass(frozen=True)
class Event:
    """One lifecycle step of one grant (or, for `orphan_removed`, of one rule)."""

    kind: str
    at: datetime
    grant: Grant | None
    actor: Actor | None = None
    reason: str | None = None
    detail: str | None = None

    def payload(self, broker_url: str | None = None) -> dict[str, Any]:
        """The generic JSON every channel is made from (and what the generic webhook receives, signed)."""
        body: dict[str, Any] = {
            "event": self.kind,
            "at": _iso(self.at),
            "actor": {"oid": self.actor.oid, "name": self.actor.name} if self.actor else None,
            "reason": self.reason,
            "detail": self.detail,
            "grant": _grant(self.grant) if self.grant else None,
        }
        if self.grant is not None and self.kind == "requested" and self.grant.approval_required:
            approve_path = f"/api/v1/grants/{self.grant.id}/approve"
            body["approve"] = {
                "command": f"jit approve {self.grant.id}",
                "deny_command": f"jit deny {self.grant.id} --reason '…'",
                "url": f"{broker_url.rstrip('/')}{approve_path}" if broker_url else None,
                "approver_role": self.grant.approver_role,
            }
        if self.grant is not None and self.kind == "expiring":
            body["extend"] = {"command": f"jit extend {self.grant.id} --duration 30m"}
        return body


class Publisher(Protocol):
    """Where the lifecycle hands events (implemented by `jitbroker.notify`); must never raise."""

    def publish(self, event: Event) -> None: ...


class NoPublisher:
    """Notifications off: events go nowhere."""

    def publish(self, event: Event) -> None:
        """Drop the event."""


def _grant(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "status": str(grant.status),
        "vm": grant.vm_name,
        "vm_id": grant.vm_id,
        "port": grant.port,
        "protocol": grant.protocol,
        "source": grant.source,
        "principal": grant.principal,
        "principal_name": grant.principal_name,
        "created_at": _iso(grant.created_at),
        "expires_at": _iso(grant.expires_at),
        "justification": grant.justification,
        "approval_required": grant.approval_required,
        "approver_role": grant.approver_role,
        "decided_by": grant.decided_by,
        "decision_reason": grant.decision_reason,
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
