"""A small OpenAI-shaped Starlette app that stands in for the gateway in the SDK's tests.

It answers like an Ember gateway would: OpenAI JSON, SSE streams, and errors with OpenAI's error body.
Requests can ask the app to misbehave through headers (sent with ``extra_headers``):

    x-fail-status: 429        answer with this status ...
    x-fail-times: 2           ... for the first 2 attempts (default: every attempt), then normally
    x-fail-retry-after: 0.05  with this Retry-After header
    x-fail-body: text|empty   a plain-text or empty error body instead of OpenAI's JSON
    x-stream-error: {...}     in a stream, send this JSON as an event after two chunks
    x-sleep: 0.5              wait this long before answering

and through the model name: "tools" (a tool call), "odd-framing" (unusual but valid SSE), "forever" (a stream
that never ends), "bad-shape" (a 200 that is not a ChatCompletion).

``/v1/files`` and ``/v1/batches`` keep their files and batches in ``ServerState.store`` (see ``fake_batches``).
``serve_in_thread`` runs the app on uvicorn over loopback, for clients that need a real socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.sdk.fake_batches import FakeBatchStore, NotFound, Refused

MODELS = [
    {"id": "tiny", "object": "model", "created": 1700000000, "owned_by": "ember", "context_length": 2048},
    {"id": "org/tiny-chat", "object": "model", "created": 1700000001, "owned_by": "ember"},
]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    # A multipart request's fields: text as str, a file as (filename, content, content type).
    form: dict[str, Any] | None = None
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class ServerState:
    """What the fake server saw; reset before every test."""

    requests: list[Recorded] = field(default_factory=list)
    attempts: int = 0
    # Set when a stream's generator ends for any reason: finished, or cancelled because the client went away.
    stream_closed: threading.Event = field(default_factory=threading.Event)
    store: FakeBatchStore = field(default_factory=FakeBatchStore)

    def reset(self) -> None:
        self.requests.clear()
        self.attempts = 0
        self.stream_closed.clear()
        self.store.clear()

    @property
    def last(self) -> Recorded:
        return self.requests[-1]


def _error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _chunk(
    delta: dict[str, Any], finish_reason: str | None = None, *, model: str = "tiny", **extra: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        **extra,
    }


def make_app(state: ServerState) -> Starlette:
    """The fake gateway; every answer carries ``x-request-id: req-<n>``."""

    def request_id() -> dict[str, str]:
        return {"x-request-id": f"req-{len(state.requests)}"}

    async def record(request: Request) -> Any:
        body: Any = None
        form: dict[str, Any] | None = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = {}
            async with request.form() as fields:  # closes the uploads' temporary files
                for name, value in fields.multi_items():
                    if isinstance(value, UploadFile):
                        form[name] = (value.filename, await value.read(), value.content_type)
                    else:
                        form[name] = value
        elif request.method == "POST":
            body = await request.json()
        recorded = Recorded(
            request.method, request.url.path, dict(request.headers), body, form, dict(request.query_params)
        )
        state.requests.append(recorded)
        return body

    async def injected_failure(request: Request) -> Response | None:
        state.attempts += 1
        if (delay := request.headers.get("x-sleep")) is not None:
            await asyncio.sleep(float(delay))
        status = request.headers.get("x-fail-status")
        if status is None or state.attempts > int(request.headers.get("x-fail-times", "1000")):
            return None
        headers = request_id()
        if (retry_after := request.headers.get("x-fail-retry-after")) is not None:
            headers["retry-after"] = retry_after
        kind = request.headers.get("x-fail-body", "json")
        if kind == "text":
            return Response("<html>upstream overloaded</html>", int(status), headers, media_type="text/html")
        if kind == "empty":
            return Response(b"", int(status), headers)
        body = _error_body(f"injected failure {state.attempts}", "test_error", code="injected", param="model")
        return JSONResponse(body, int(status), headers)

    async def list_models(request: Request) -> Response:
        await record(request)
        if (failure := await injected_failure(request)) is not None:
            return failure
        return JSONResponse({"object": "list", "data": MODELS}, headers=request_id())

    async def retrieve_model(request: Request) -> Response:
        await record(request)
        model_id = request.path_params["model_id"]
        for model in MODELS:
            if model["id"] == model_id:
                return JSONResponse(model, headers=request_id())
        message = f"The model '{model_id}' does not exist"
        body = _error_body(message, "invalid_request_error", "model_not_found", "model")
        return JSONResponse(body, 404, request_id())

    async def chat_completions(request: Request) -> Response:
        body = await record(request)
        if (failure := await injected_failure(request)) is not None:
            return failure
        model = body["model"]
        if body.get("stream"):
            return StreamingResponse(_chat_stream(request, body), media_type="text/event-stream", headers=request_id())
        if model == "bad-shape":
            return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion"}, headers=request_id())
        last = body["messages"][-1]["content"]
        message: dict[str, Any] = {"role": "assistant", "content": f"echo: {last}"}
        finish_reason = "stop"
        if model == "tools":
            function = {"name": "get_weather", "arguments": '{"c":"Oslo"}'}
            call = {"id": "call_1", "type": "function", "function": function}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish_reason = "tool_calls"
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        if body.get("logprobs"):
            top = [{"token": "echo", "logprob": -0.1, "bytes": [101, 99, 104, 111]}]
            choice["logprobs"] = {"content": [{"token": "echo", "logprob": -0.1, "bytes": None, "top_logprobs": top}]}
        completion = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            "system_fingerprint": "ember-test",
            "ember_worker": "w-1",  # an extension field: the SDK must keep it
        }
        return JSONResponse(completion, headers=request_id())

    async def _chat_stream(request: Request, body: dict[str, Any]) -> AsyncIterator[bytes]:
        model = body["model"]
        try:
            if model == "odd-framing":
                for piece in _ODD_FRAMING:
                    yield piece
                return
            if model == "forever":
                n = 0
                while True:  # until the client goes away and Starlette cancels this generator
                    yield _sse(_chunk({"content": f"{n} "}))
                    n += 1
                    await asyncio.sleep(0.005)
            yield _sse(_chunk({"role": "assistant", "content": ""}))
            if model == "tools":
                call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}
                yield _sse(_chunk({"tool_calls": [call]}))
                yield _sse(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"c":'}}]}))
                yield _sse(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}))
                yield _sse(_chunk({}, "tool_calls"))
            else:
                for word in ("Hello", " world"):
                    yield _sse(_chunk({"content": word}))
                if (error := request.headers.get("x-stream-error")) is not None:
                    yield f"data: {error}\n\n".encode()
                    yield _sse(_chunk({"content": "never seen"}))
                yield _sse(_chunk({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
                yield _sse({**_chunk({}), "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
            yield _sse(_chunk({"content": "after done"}))
        finally:
            state.stream_closed.set()

    async def completions(request: Request) -> Response:
        body = await record(request)
        if (failure := await injected_failure(request)) is not None:
            return failure
        prompt = body["prompt"]
        text = " continued"
        base = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": body["model"]}
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                for piece, finish in ((" contin", None), ("ued", "length")):
                    choice = {"index": 0, "text": piece, "finish_reason": finish, "logprobs": None}
                    yield _sse({**base, "choices": [choice]})
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers=request_id())
        logprobs = None
        if body.get("logprobs") is not None:
            logprobs = {
                "tokens": [" contin", "ued"],
                "token_logprobs": [-0.5, -0.25],
                "top_logprobs": [{" contin": -0.5}, {"ued": -0.25}],
                "text_offset": [0, 7],
            }
        choice = {
            "index": 0,
            "text": (prompt + text) if body.get("echo") else text,
            "finish_reason": "length",
            "logprobs": logprobs,
        }
        usage = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
        return JSONResponse({**base, "choices": [choice], "usage": usage}, headers=request_id())

    def store_call(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Record the request, and answer the store's NotFound with a 404 and Refused with a 400, as OpenAI does."""

        async def endpoint(request: Request) -> Response:
            await record(request)
            if (failure := await injected_failure(request)) is not None:
                return failure
            try:
                return await handler(request)
            except NotFound as e:
                return JSONResponse(_error_body(e.args[0], "invalid_request_error"), 404, request_id())
            except Refused as e:
                return JSONResponse(_error_body(str(e), "invalid_request_error"), 400, request_id())

        return endpoint

    @store_call
    async def upload_file(request: Request) -> Response:
        form = state.last.form or {}
        if not isinstance(form.get("file"), tuple) or "purpose" not in form:
            raise Refused("a multipart form with 'file' and 'purpose' is required")
        filename, content, content_type = form["file"]
        stored = state.store.add_file(filename, form["purpose"], content, content_type)
        return JSONResponse(stored.as_json(), headers=request_id())

    @store_call
    async def list_files(request: Request) -> Response:
        q = request.query_params
        page = state.store.list_files(
            q.get("purpose"), int(q.get("limit", 10000)), q.get("after"), q.get("order", "desc")
        )
        return JSONResponse(page, headers=request_id())

    @store_call
    async def one_file(request: Request) -> Response:
        stored = state.store.file(request.path_params["file_id"])
        if request.method == "DELETE":
            del state.store.files[stored.id]
            return JSONResponse({"id": stored.id, "object": "file", "deleted": True}, headers=request_id())
        return JSONResponse(stored.as_json(), headers=request_id())

    @store_call
    async def file_content(request: Request) -> Response:
        stored = state.store.file(request.path_params["file_id"])
        return Response(stored.content, media_type=stored.content_type, headers=request_id())

    @store_call
    async def batches(request: Request) -> Response:
        if request.method == "GET":
            q = request.query_params
            return JSONResponse(state.store.list_batches(int(q.get("limit", 20)), q.get("after")), headers=request_id())
        body = state.last.json
        created = state.store.create_batch(
            body["input_file_id"], body["endpoint"], body["completion_window"], body.get("metadata")
        )
        return JSONResponse(created, headers=request_id())

    @store_call
    async def one_batch(request: Request) -> Response:
        return JSONResponse(state.store.advance(request.path_params["batch_id"]), headers=request_id())

    @store_call
    async def cancel_batch(request: Request) -> Response:
        return JSONResponse(state.store.cancel(request.path_params["batch_id"]), headers=request_id())

    return Starlette(
        routes=[
            Route("/v1/models", list_models),
            Route("/v1/models/{model_id:path}", retrieve_model),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/files", upload_file, methods=["POST"]),
            Route("/v1/files", list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", one_file, methods=["GET", "DELETE"]),
            Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
            Route("/v1/batches", batches, methods=["GET", "POST"]),
            Route("/v1/batches/{batch_id}", one_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
        ]
    )


@contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """``app`` on uvicorn, in a thread, on a free loopback port; yields its base URL (``http://127.0.0.1:N/v1``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _raw_chunk(content: str) -> str:
    return json.dumps(_chunk({"content": content}))


_SPLIT_HEAD, _SPLIT_TAIL = _raw_chunk("a").split(", ", 1)


# Valid SSE that a naive parser gets wrong. Three chunks come out: "a", "b", "c".
_ODD_FRAMING = [
    b": a comment, then an empty event\r\n\r\n",
    # CRLF line ends; an explicit `event: message`; one JSON object split over two data lines.
    f"event: message\r\ndata: {_SPLIT_HEAD},\r\n".encode(),
    f"data: {_SPLIT_TAIL}\r\n\r\n".encode(),
    # An event of a kind the SDK does not know: skipped.
    b"event: ping\ndata: {}\n\n",
    # Lone-CR line ends, an id and retry field, no space after the colon.
    b"id: 7\rretry: 100\rdata:" + _raw_chunk("b").encode() + b"\r\r",
    # The last event is not followed by a blank line, and there is no [DONE].
    b"data: " + _raw_chunk("c").encode(),
]
