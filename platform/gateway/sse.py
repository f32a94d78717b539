"""Server-sent events that notice a client going away while the server is still waiting for output.

Starlette's StreamingResponse only watches for a disconnect on older ASGI servers and otherwise learns of it on
the next write; a generation that is between tokens (a long prefill, a queue) would keep running for nobody.
Here a watcher runs beside the stream on every server, and the event iterator is always closed explicitly, so
its ``finally`` (which cancels the job on the worker) runs at once rather than whenever it is collected.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def event(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class EventStreamResponse:
    """``events`` as a chunked body, each chunk sent as it comes; ``media_type`` for a stream that is not events
    (speech's audio bytes)."""

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        headers: dict[str, str] | None = None,
        media_type: str = "text/event-stream; charset=utf-8",
    ) -> None:
        self.events = events
        self.media_type = media_type
        self.headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def stream_then_stop() -> None:
                try:
                    await self._stream(send)
                finally:
                    tg.cancel_scope.cancel()

            tg.start_soon(stream_then_stop)
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

    async def _stream(self, send: Send) -> None:
        raw_headers = [(b"content-type", self.media_type.encode())]
        raw_headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            with anyio.CancelScope(shield=True):
                await self.events.aclose()
