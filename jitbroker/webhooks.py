"""Webhook bodies and their transport: the generic JSON (signed), Microsoft Teams and Slack.

Every body is made from `Event.payload()` (docs/notifications.md shows one of each):

- **generic**: the payload itself, compact JSON, signed with HMAC-SHA256. The signed string is the
  timestamp, a dot, and the exact body bytes: `X-Jit-Signature: sha256=<hex of HMAC(secret, f"{t}." + body)>`
  with `X-Jit-Timestamp: t` (Unix seconds). A receiver recomputes it over the bytes it read, compares in
  constant time, and refuses a timestamp older than a few minutes, so a captured delivery cannot be replayed.
- **teams**: what a Teams Workflows flow "when a Teams webhook request is received" posts to a channel: a
  message with one Adaptive Card attachment (`{"type": "message", "attachments": [{"contentType":
  "application/vnd.microsoft.card.adaptive", "content": {AdaptiveCard 1.4}}]}`). Workflows take Adaptive
  Cards only, not the retired connectors' MessageCard.
- **slack**: an incoming-webhook message: Block Kit `blocks` plus a plain `text` that notifications and
  clients without blocks show.

Transport is `urllib.request` (the broker has no `requests` of its own): one POST, a short timeout, no
redirects followed (a webhook that moved is a configuration error, not somewhere to send a signed body).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

SIGNATURE_HEADER = "X-Jit-Signature"
TIMESTAMP_HEADER = "X-Jit-Timestamp"
EVENT_HEADER = "X-Jit-Event"
DELIVERY_HEADER = "X-Jit-Delivery"
#: How far a receiver should let a timestamp be from its own clock (seconds): older is a replay.
REPLAY_TOLERANCE_S = 300
HTTP_TIMEOUT_S = 10.0
USER_AGENT = "jit-broker-webhooks/1"
_TEXT_LIMIT = 500  # a person's reason or justification, cut to this many characters in chat formats
_BRAND = "jit-broker"

#: POSTs `body` to `url` with `headers`; returns the HTTP status, raises `OSError` when it gets none.
Post = Callable[[str, bytes, Mapping[str, str]], int]


class WebhookError(RuntimeError):
    """A webhook did not take a delivery (no answer, or not 2xx); the queue tries it again later."""


# ---------------------------------------------------------------- signing


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Jit-Signature` value: `sha256=` and the hex HMAC-SHA256 of `f"{timestamp}."` + body."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = REPLAY_TOLERANCE_S,
) -> bool:
    """What a receiver does: the signature matches the exact body and the timestamp is recent."""
    lowered = {key.lower(): value for key, value in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    signature = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature, sign(secret, timestamp, body))


# ---------------------------------------------------------------- bodies


def request_for(
    fmt: str, payload: Mapping[str, Any], *, secret: str | None, delivery: str, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body bytes and headers of one delivery of `payload` in format `fmt`."""
    if fmt == "generic":
        document: Mapping[str, Any] = payload
    elif fmt == "teams":
        document = teams_message(payload)
    elif fmt == "slack":
        document = slack_message(payload)
    else:
        raise ValueError(f"unknown webhook format {fmt!r}")
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: str(payload.get("event", "")),
        DELIVERY_HEADER: delivery,
    }
    if fmt == "generic":
        if not secret:
            raise ValueError("a generic webhook needs JIT_WEBHOOK_SECRET to sign its body")
        timestamp = str(int(time.time() if now is None else now))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return body, headers


def summary(payload: Mapping[str, Any]) -> str:
    """One line saying what happened, for a card's title and Slack's fallback text."""
    kind = str(payload.get("event"))
    grant = payload.get("grant") or {}
    who = _person(grant)
    door = f"{grant.get('vm', '?')} port {grant.get('port', '?')}"
    actor = _actor(payload)
    minutes = _minutes_left(payload.get("at"), grant.get("expires_at"))
    unanswered = bool(grant.get("approval_required")) and not grant.get("decided_by")
    lines = {
        "requested": f"{who} asks for {door}: approval needed",
        "approved": f"{actor or 'An approver'} approved {who}'s request for {door}",
        "denied": f"{actor or 'An approver'} denied {who}'s request for {door}",
        "withdrawn": f"{who} withdrew the request for {door}",
        "granted": f"{door} is open for {who} until {_clock(grant.get('expires_at'))}",
        "expiring": f"{door} closes for {who} "
        + (f"in {minutes} min" if minutes is not None else "soon")
        + ": extend now if you still need it",
        "expired": f"{who}'s request for {door} expired: nobody answered in time"
        if unanswered
        else f"{door} closed for {who}: the grant expired",
        "revoked": f"{who}'s access to {door} was revoked" + (f" by {actor}" if actor else ""),
        "orphan_removed": "The sweeper removed a broker rule no open grant held",
    }
    return lines.get(kind, f"jit-broker: {kind}")


def facts(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (title, value) lines every chat format shows under the summary."""
    grant = payload.get("grant") or {}
    lines: list[tuple[str, str]] = []
    if grant:
        lines += [
            ("Grant", str(grant.get("id"))),
            ("Person", _person(grant)),
            ("VM", str(grant.get("vm"))),
            ("Port", f"{grant.get('port')}/{grant.get('protocol', 'tcp')}"),
            ("Source", str(grant.get("source"))),
            (
                "Answer by" if grant.get("status") == "awaiting_approval" else "Until",
                _clock(grant.get("expires_at")),
            ),
        ]
        if grant.get("justification"):
            lines.append(("Justification", _cut(str(grant["justification"]))))
    actor = _actor(payload)
    if actor:
        lines.append(("By", actor))
    if payload.get("reason"):
        lines.append(("Reason", _cut(str(payload["reason"]))))
    if payload.get("detail"):
        lines.append(("Detail", _cut(str(payload["detail"]))))
    return lines


def commands(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the reader can do about it: (label, command or URL), e.g. approve, deny, extend."""
    found: list[tuple[str, str]] = []
    approve = payload.get("approve") or {}
    if approve.get("command"):
        found.append(("Approve", str(approve["command"])))
    if approve.get("deny_command"):
        found.append(("Deny", str(approve["deny_command"])))
    if approve.get("url"):
        found.append(("Approve over the API (POST)", str(approve["url"])))
    extend = payload.get("extend") or {}
    if extend.get("command"):
        found.append(("Extend", str(extend["command"])))
    return found


def teams_message(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A Teams Workflows message: one Adaptive Card 1.4 with the summary, the facts and the commands."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": _teams_text(summary(payload)),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
        },
        {
            "type": "FactSet",
            "facts": [{"title": title, "value": _teams_text(value)} for title, value in facts(payload)],
        },
    ]
    approve = payload.get("approve") or {}
    if approve.get("approver_role"):
        body.append(
            {
                "type": "TextBlock",
                "text": _teams_text(f"Approvers: holders of {approve['approver_role']}"),
                "isSubtle": True,
                "wrap": True,
            }
        )
    for label, command in commands(payload):
        body.append({"type": "TextBlock", "text": f"{label}:", "weight": "Bolder", "spacing": "Small"})
        body.append(
            {"type": "TextBlock", "text": _teams_text(command), "fontType": "Monospace", "wrap": True}
        )
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": body,
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def slack_message(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: Block Kit blocks and the summary as fallback `text`."""
    title = summary(payload)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": False}},
    ]
    lines = facts(payload)
    if lines:
        fields = [{"type": "mrkdwn", "text": f"*{t}*\n{_slack_text(v)}"} for t, v in lines]
        for start in range(0, len(fields), 10):  # a section holds at most 10 fields
            blocks.append({"type": "section", "fields": fields[start : start + 10]})
    actions = commands(payload)
    if actions:
        text = "\n".join(f"*{label}:* `{_slack_text(command)}`" for label, command in actions)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    at = payload.get("at")
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{_BRAND} · {_slack_text(str(at))}"}]}
    )
    return {"text": _slack_text(title), "blocks": blocks}


# ---------------------------------------------------------------- transport


def post(url: str, body: bytes, headers: Mapping[str, str], *, timeout: float = HTTP_TIMEOUT_S) -> int:
    """POST once, follow no redirect; the HTTP status (an error status is returned, not raised)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310 - https (or loopback http), checked at start
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)
            return int(response.status)
    except urllib.error.HTTPError as err:  # a status outside 2xx (redirects included): the caller decides
        err.read(65536)
        err.close()
        return int(err.code)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


# ---------------------------------------------------------------- text helpers


def _person(grant: Mapping[str, Any]) -> str:
    return str(grant.get("principal_name") or grant.get("principal") or "someone")


def _actor(payload: Mapping[str, Any]) -> str | None:
    actor = payload.get("actor") or {}
    name = actor.get("name") or actor.get("oid")
    return str(name) if name else None


def _clock(moment: object) -> str:
    if not isinstance(moment, str):
        return "?"
    try:
        parsed = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return moment
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _minutes_left(at: object, expires_at: object) -> int | None:
    try:
        start = datetime.fromisoformat(str(at).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0, round((end - start).total_seconds() / 60))


def _cut(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 1] + "…"


def _slack_text(text: str) -> str:
    """Slack's mrkdwn escapes: a person's text can neither link (<url|text>) nor mention (<!channel>)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _teams_text(text: str) -> str:
    """Adaptive Card TextBlocks read markdown: break `[text](url)` so a justification cannot hide a link."""
    return text.replace("](", "]\u200b(")
