"""Grants wait on ARM with a thread each; the app must let a burst wait together rather than queue."""

from __future__ import annotations

import anyio.to_thread
from fastapi.testclient import TestClient

from jitbroker.api import REQUEST_THREADS, create_app


async def _thread_tokens() -> float:
    return anyio.to_thread.current_default_thread_limiter().total_tokens


def _never_built() -> object:
    raise AssertionError("starting the app must not build the broker's services")


def test_a_started_app_lets_more_requests_wait_on_arm_than_anyios_default_forty() -> None:
    app = create_app(_never_built)  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.portal is not None
        tokens = client.portal.call(_thread_tokens)
    assert tokens == REQUEST_THREADS
    assert REQUEST_THREADS > 40
