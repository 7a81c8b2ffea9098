"""Each webhook format carries the grant, the person, the reason and what to do; the generic one is signed."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from jitbroker.config import WEBHOOK_FORMATS
from jitbroker.events import KINDS, Event
from jitbroker.model import GrantStatus
from jitbroker.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    request_for,
    sign,
    summary,
    verify,
)
from tests.notify.conftest import AT, BROKER_URL, SECRET, event, grant

NOW = AT.timestamp()


def payload(kind: str = "requested", **changes: Any) -> dict[str, Any]:
    return event(kind, **changes).payload(BROKER_URL)


def card(message: dict[str, Any]) -> dict[str, Any]:
    (attachment,) = message["attachments"]
    content: dict[str, Any] = attachment["content"]
    return content


def card_text(message: dict[str, Any]) -> str:
    return json.dumps(card(message), ensure_ascii=False)


# ---------------------------------------------------------------- generic, signed


def test_generic_body_is_the_event_payload_and_its_signature_verifies() -> None:
    body, headers = request_for("generic", payload(), secret=SECRET, delivery="d-1", now=NOW)

    assert json.loads(body) == payload()
    assert headers[TIMESTAMP_HEADER] == str(int(NOW))
    assert headers[SIGNATURE_HEADER] == sign(SECRET, str(int(NOW)), body)
    assert headers[SIGNATURE_HEADER].startswith("sha256=")
    assert headers[EVENT_HEADER] == "requested"
    assert headers[DELIVERY_HEADER] == "d-1"
    assert headers["Content-Type"].startswith("application/json")
    assert verify(SECRET, headers, body, now=NOW + 10)


def test_the_signature_covers_the_timestamp_and_every_byte_of_the_body() -> None:
    body, headers = request_for("generic", payload(), secret=SECRET, delivery="d-1", now=NOW)

    assert not verify(SECRET, headers, body + b" ", now=NOW)
    assert not verify(SECRET, headers, body.replace(b"prod-01", b"prod-02"), now=NOW)
    assert not verify(SECRET, {**headers, TIMESTAMP_HEADER: str(int(NOW) + 1)}, body, now=NOW)
    assert not verify("another-secret-0123456789", headers, body, now=NOW)
    assert not verify(SECRET, {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}, body, now=NOW)


def test_a_replayed_delivery_is_refused_once_its_timestamp_is_old() -> None:
    body, headers = request_for("generic", payload(), secret=SECRET, delivery="d-1", now=NOW)

    assert verify(SECRET, headers, body, now=NOW + 299)
    assert not verify(SECRET, headers, body, now=NOW + 301)
    assert not verify(SECRET, headers, body, now=NOW - 301)


def test_header_names_are_matched_whatever_their_case() -> None:
    body, headers = request_for("generic", payload(), secret=SECRET, delivery="d-1", now=NOW)

    assert verify(SECRET, {k.lower(): v for k, v in headers.items()}, body, now=NOW)


def test_a_generic_webhook_without_a_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="JIT_WEBHOOK_SECRET"):
        request_for("generic", payload(), secret=None, delivery="d-1")


def test_chat_formats_are_not_signed() -> None:
    for fmt in ("teams", "slack"):
        _, headers = request_for(fmt, payload(), secret=SECRET, delivery="d-1")
        assert SIGNATURE_HEADER not in headers
        assert TIMESTAMP_HEADER not in headers


def test_requested_tells_approvers_the_command_and_the_link_and_expiring_the_extend_command() -> None:
    requested = payload("requested")
    assert requested["approve"]["command"] == "jit approve g-0123456789abcdef"
    assert requested["approve"]["url"] == f"{BROKER_URL}/api/v1/grants/g-0123456789abcdef/approve"

    expiring = payload("expiring", grant=grant(status=GrantStatus.ACTIVE, approval_required=False))
    assert expiring["extend"]["command"].startswith("jit extend g-0123456789abcdef")
    assert "approve" not in expiring


# ---------------------------------------------------------------- Teams


def test_teams_gets_a_workflows_message_with_one_adaptive_card() -> None:
    body, _ = request_for("teams", payload(), secret=None, delivery="d-1")
    message = json.loads(body)

    assert message["type"] == "message"
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    content = attachment["content"]
    assert content["type"] == "AdaptiveCard"
    assert content["version"] == "1.4"
    assert content["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert {block["type"] for block in content["body"]} <= {"TextBlock", "FactSet"}


def test_the_teams_card_says_the_grant_the_person_the_reason_and_how_to_approve() -> None:
    message = json.loads(request_for("teams", payload(), secret=None, delivery="d-1")[0])
    content = card(message)

    title = content["body"][0]
    assert title["text"] == "bob@contoso.example asks for prod-01 port 22: approval needed"
    (facts,) = [block for block in content["body"] if block["type"] == "FactSet"]
    shown = {fact["title"]: fact["value"] for fact in facts["facts"]}
    assert shown["Grant"] == "g-0123456789abcdef"
    assert shown["Person"] == "bob@contoso.example"
    assert shown["Justification"] == "deploy the hotfix for INC-42"
    assert shown["Port"] == "22/tcp"
    text = card_text(message)
    assert "jit approve g-0123456789abcdef" in text
    assert f"{BROKER_URL}/api/v1/grants/g-0123456789abcdef/approve" in text
    assert "JIT.Approver.Prod" in text


def test_the_teams_card_tells_who_decided_and_why() -> None:
    content = card(json.loads(request_for("teams", payload("approved"), secret=None, delivery="d")[0]))

    assert (
        content["body"][0]["text"]
        == "carol@contoso.example approved bob@contoso.example's request for prod-01 port 22"
    )
    shown = {fact["title"]: fact["value"] for fact in content["body"][1]["facts"]}
    assert shown["By"] == "carol@contoso.example"
    assert shown["Reason"] == "change ticket CHG-7 approved"


def test_a_justification_cannot_smuggle_a_markdown_link_into_the_teams_card() -> None:
    sneaky = grant(justification="urgent: [approve here](https://evil.example/approve)")
    message = json.loads(request_for("teams", payload(grant=sneaky), secret=None, delivery="d")[0])

    assert "](https://evil.example" not in card_text(message)


# ---------------------------------------------------------------- Slack


def test_slack_gets_block_kit_blocks_and_a_plain_fallback_text() -> None:
    message = json.loads(request_for("slack", payload(), secret=None, delivery="d-1")[0])

    assert message["text"] == "bob@contoso.example asks for prod-01 port 22: approval needed"
    header, *rest = message["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": message["text"], "emoji": False},
    }
    fields = [
        field["text"] for block in rest if block["type"] == "section" for field in block.get("fields", [])
    ]
    assert "*Grant*\ng-0123456789abcdef" in fields
    assert "*Person*\nbob@contoso.example" in fields
    assert "*Justification*\ndeploy the hotfix for INC-42" in fields
    commands = [block["text"]["text"] for block in rest if block["type"] == "section" and "text" in block]
    assert any("`jit approve g-0123456789abcdef`" in text for text in commands)
    assert rest[-1]["type"] == "context"


def test_slack_blocks_stay_within_block_kit_limits() -> None:
    long = grant(justification="x" * 5000, principal_name="p" * 400)
    message = json.loads(request_for("slack", payload(grant=long), secret=None, delivery="d")[0])

    for block in message["blocks"]:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            assert len(block.get("fields", [])) <= 10
            for field in block.get("fields", []):
                assert len(field["text"]) <= 2000
            if "text" in block:
                assert len(block["text"]["text"]) <= 3000


def test_a_justification_cannot_mention_a_channel_or_link_in_slack() -> None:
    sneaky = grant(justification="<!channel> see <https://evil.example|the runbook> & approve")
    body = request_for("slack", payload(grant=sneaky), secret=None, delivery="d")[0].decode()

    assert "<!channel>" not in body
    assert "<https://evil.example" not in body
    assert "&lt;!channel&gt;" in body


# ---------------------------------------------------------------- every kind, every format


@pytest.mark.parametrize("fmt", WEBHOOK_FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_in_every_format(kind: str, fmt: str) -> None:
    subject = None if kind == "orphan_removed" else grant(status=GrantStatus.ACTIVE)
    the_event = Event(kind=kind, at=AT, grant=subject, reason="r", detail="d")

    body, headers = request_for(fmt, the_event.payload(BROKER_URL), secret=SECRET, delivery="d")

    assert json.loads(body)
    assert headers[EVENT_HEADER] == kind
    assert not summary(the_event.payload()).startswith("jit-broker:")


def test_expiring_says_how_many_minutes_are_left() -> None:
    soon = grant(status=GrantStatus.ACTIVE, expires_at=AT + timedelta(minutes=10))
    assert summary(payload("expiring", grant=soon)) == (
        "prod-01 port 22 closes for bob@contoso.example in 10 min: extend now if you still need it"
    )


def test_an_unanswered_request_that_expired_says_so() -> None:
    waiting = grant(status=GrantStatus.EXPIRED)
    assert "nobody answered in time" in summary(payload("expired", grant=waiting))
    used = replace(waiting, decided_by="carol")
    assert "the grant expired" in summary(payload("expired", grant=used))
