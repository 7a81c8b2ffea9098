"""How long an HTTP answer may still wait: every answer within the budget, whatever came before the wait.

A request's clock starts when it arrives (`AnswerClock`, an ASGI middleware), not when the lifecycle starts
waiting for NSG passes: the time spent finding the VM (ARM reads, slow when ARM is) and writing the store is
taken from the wait, so a slow request answers `202` (still pending) within the budget instead of late.
Outside a request (the sweeper, a test driving the lifecycle) nothing arrived and the budget applies whole.
"""

from __future__ import annotations

import contextvars
import time

from starlette.types import ASGIApp, Receive, Scope, Send

_arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar("jit_answer_arrived", default=None)


def remaining(budget: float) -> float:
    """What is left of `budget` seconds since this request arrived (all of it outside a request)."""
    arrived = _arrived.get()
    if arrived is None:
        return budget
    return max(0.0, budget - (time.monotonic() - arrived))


class AnswerClock:
    """Notes when each HTTP request arrives; the worker threads that serve it see the same moment (they run in
    a copy of the request's context)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the request's clock, then serve it."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        token = _arrived.set(time.monotonic())
        try:
            await self._app(scope, receive, send)
        finally:
            _arrived.reset(token)
