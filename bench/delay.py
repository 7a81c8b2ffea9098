"""A loopback TCP relay that holds each request back a fixed time: Table Storage as far away as Azure's.

Azurite answers in ~2 ms on loopback; Table Storage seen from a Function app in the same region takes a few
milliseconds more per round trip. The relay adds that: every chunk from the client waits `delay` seconds
before it goes on (chunks keep their order), answers come straight back. So each round trip costs `delay`
more, and round trips sent at once overlap their waits as they would on a real network.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class _Relay:
    """The relay's event loop, on a thread of its own."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self._target = (host, port)
        self._delay = delay
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0

    def start(self) -> int:
        threading.Thread(target=self._run, name="delay-relay", daemon=True).start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay relay did not start")
        return self.port

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
            await asyncio.gather(
                self._pipe(client_r, server_w, self._delay), self._pipe(server_r, client_w, 0.0)
            )
        except asyncio.CancelledError:  # the relay is stopping: the connection just ends
            client_w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(forward())
        try:
            while True:
                chunk = await reader.read(65536)
                queue.put_nowait((time.monotonic() + delay, chunk))
                if not chunk:
                    break
            await sender
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()
            writer.close()


@contextmanager
def delayed(host: str, port: int, delay: float) -> Iterator[int]:
    """Relay 127.0.0.1:<yielded port> to host:port, each client chunk held back `delay` seconds."""
    relay = _Relay(host, port, delay)
    yield relay.start()
    relay.stop()
