"""One batch line, run through the gateway's own ASGI app inside its process, as the owner's key.

A line is exactly the HTTP request it describes, so it goes through the same middleware and route as an online
request: the same checks, rate limits of the key's tier, metrics, and response body. Only three things differ,
and the scope says so, where no HTTP client can reach (a client sets headers, not scope entries):

- the key is already resolved (``ember.gateway.auth.INTERNAL``): the runner has no secret, only the key's id;
- ``state["batch_line"]``: the route's Quota gives the job the lowest priority, takes no concurrency slot of the
  key's, and leaves the usage record to the runner (one per line, however many tries it took);
- the request id is the line's, so a retried line's tries are told apart in logs and metrics.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

from ember.auth.keys import ApiKey
from ember.gateway.auth import INTERNAL


@dataclass(frozen=True)
class BatchLineContext:
    batch_id: str
    price_factor: float


@dataclass
class LineResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"error": {"message": self.body.decode("utf-8", "replace")[:1000], "type": "server_error"}}


async def call(
    app: ASGIApp, path: str, body: dict[str, Any], *, key: ApiKey, line: BatchLineContext, request_id: str
) -> LineResponse:
    """POST ``body`` to ``path`` on ``app`` as ``key``; the whole response. Cancelling it is a client leaving."""
    raw = json.dumps(body).encode()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            (b"x-request-id", request_id.encode()),
        ],
        "client": ("127.0.0.1", 0),
        "server": ("ember-batch", 0),
        "state": {"api_key": key, "batch_line": line},
        INTERNAL: True,
    }
    sent_body = False
    never = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await never.wait()  # the "client" stays until the call is cancelled
        return {"type": "http.disconnect"}

    response = LineResponse()
    chunks: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    response.body = b"".join(chunks)
    return response
