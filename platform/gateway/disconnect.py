"""Stop a request's work the moment its client hangs up, streamed or not.

A streamed response notices a disconnect itself (it reads ``receive`` while it sends). A plain one never
reads ``receive`` again after its body, so a client that gave up on a long non-streamed completion left its
jobs running to the end, billed in full. This middleware watches the connection once the request body has
been read, and on ``http.disconnect`` cancels the handler: the jobs are cancelled on their workers and the
quota is settled with what was generated until then (the handlers' shielded ``finally`` blocks do both).

Only one task may wait on ``receive`` at a time, so after the body the watcher is the only reader, and a later
``receive()`` of the app (a streaming response listening for the disconnect) is answered from what it saw.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class DisconnectMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = anyio.Event()
        gone = anyio.Event()

        async def receive_body() -> Message:
            if body_read.is_set():
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async with anyio.create_task_group() as tg:
            handler = anyio.CancelScope()

            async def watch() -> None:
                await body_read.wait()
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()
                handler.cancel()

            tg.start_soon(watch)
            with handler:
                await self.app(scope, receive_body, send)
            tg.cancel_scope.cancel()
