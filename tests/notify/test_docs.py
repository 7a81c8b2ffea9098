"""docs/notifications.md shows what the code sends: its example bodies are rendered by the code, its
verification snippet accepts a real delivery and refuses a forged one, and every setting is described."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from jitbroker.webhooks import request_for
from tests.notify.conftest import AT, BROKER_URL, SECRET, event

DOC = (Path(__file__).resolve().parents[2] / "docs" / "notifications.md").read_text(encoding="utf-8")


def block_after(marker: str, language: str) -> str:
    match = re.search(rf"<!-- {re.escape(marker)} -->\n```{language}\n(.*?)\n```", DOC, re.DOTALL)
    assert match, f"docs/notifications.md has no ```{language} block after <!-- {marker} -->"
    return match.group(1)


@pytest.mark.parametrize("fmt", ["generic", "teams", "slack"])
def test_the_example_bodies_are_what_the_code_sends(fmt: str) -> None:
    shown = json.loads(block_after(f"example: {fmt}", "json"))
    body, _ = request_for(
        fmt, event("requested").payload(BROKER_URL), secret=SECRET, delivery="d", now=AT.timestamp()
    )

    assert shown == json.loads(body)


def test_the_verification_snippet_accepts_a_delivery_and_refuses_a_forgery() -> None:
    namespace: dict[str, Any] = {}
    exec(block_after("verify-snippet", "python"), namespace)  # our own documentation
    verify_jit_signature = namespace["verify_jit_signature"]
    body, headers = request_for("generic", event().payload(), secret=SECRET, delivery="d", now=time.time())

    assert verify_jit_signature(SECRET, headers, body)
    assert not verify_jit_signature(SECRET, headers, body.replace(b"prod-01", b"prod-99"))
    assert not verify_jit_signature("not-the-secret-0123456789", headers, body)
    stale = {**headers, "X-Jit-Timestamp": str(int(time.time()) - 3600)}
    assert not verify_jit_signature(SECRET, stale, body)


@pytest.mark.parametrize(
    "name",
    [
        "JIT_WEBHOOKS",
        "JIT_WEBHOOK_SECRET",
        "JIT_EVENTS_QUEUE",
        "JIT_QUEUE_ENDPOINT",
        "JIT_QUEUE_CONNECTION_STRING",
        "JIT_PUBLIC_URL",
        "JIT_EXPIRING_MINUTES",
        "JitEvents__queueServiceUri",
        "jit-events-poison",
        "X-Jit-Signature",
        "X-Jit-Timestamp",
        "X-Jit-Delivery",
    ],
)
def test_every_setting_and_header_is_described(name: str) -> None:
    assert name in DOC


def test_every_event_kind_is_described() -> None:
    from jitbroker.events import KINDS

    for kind in KINDS:
        assert f"| `{kind}`" in DOC
