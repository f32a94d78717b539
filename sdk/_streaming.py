"""Server-sent events, and ``Stream``/``AsyncStream``, which turn them into typed results as they arrive.

What the SDK expects from a streaming endpoint (``Content-Type: text/event-stream``)::

    data: {"id": "chatcmpl-1", "object": "chat.completion.chunk", ...}     one JSON object per event
                                                                          (a blank line ends each event)
    : keep-alive                                                          comments are skipped
    data: {"error": {"message": "...", "type": "...", "code": "..."}}     raises the matching APIStatusError
    data: [DONE]                                                          the end of the stream

An event may also be named: ``event: error`` is an error like the one above, and other names than ``message``
are skipped, so the server can add its own kinds of event without breaking older clients.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self

import httpx

from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    make_status_error,
    status_of_error_event,
)
from ._models import ModelT, validate

__all__ = ["AsyncStream", "SSEDecoder", "ServerSentEvent", "Stream"]

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event: its data lines joined with newlines, and the optional ``event``, ``id`` and ``retry`` fields."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """An incremental parser of ``text/event-stream`` (the WHATWG HTML standard, "Server-sent events").

    Feed it bytes as they arrive and it returns each event once the blank line that ends it is in. Lines end
    in LF, CRLF or a lone CR (a CRLF split across two chunks counts once), ``data:`` lines accumulate, lines
    starting with ``:`` are comments, and one space after the colon is dropped. One deliberate difference
    from the standard: ``end()`` dispatches an event that the stream ended without a blank line, so a server
    that forgets the last blank line does not lose its last event.
    """

    def __init__(self) -> None:
        # NOTE: holds at most one unterminated line, plus a trailing CR that may be half of a CRLF.
        self._buffer = bytearray()
        self._started = False
        self._data: list[str] = []
        self._event: str | None = None
        self._last_event_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse ``chunk``; return the events it completed."""
        # Only the new bytes can hold a line end, except for a held-back CR: start scanning there.
        scan = len(self._buffer) - 1 if self._buffer.endswith(b"\r") else len(self._buffer)
        self._buffer += chunk
        events: list[ServerSentEvent] = []
        start = 0
        while (match := _LINE_END.search(self._buffer, scan)) is not None:
            if match.group() == b"\r" and match.end() == len(self._buffer):
                break  # maybe the first half of a CRLF whose LF is in the next chunk
            if (event := self._line(self._buffer[start : match.start()])) is not None:
                events.append(event)
            start = scan = match.end()
        del self._buffer[:start]
        return events

    def end(self) -> list[ServerSentEvent]:
        """The stream is over: parse an unterminated last line and dispatch a pending event."""
        events: list[ServerSentEvent] = []
        if self._buffer:
            line = bytes(self._buffer).removesuffix(b"\r")
            self._buffer.clear()
            if (event := self._line(line)) is not None:
                events.append(event)
        if (event := self._dispatch()) is not None:
            events.append(event)
        return events

    def _line(self, raw: bytes | bytearray) -> ServerSentEvent | None:
        line = raw.decode("utf-8", errors="replace")
        if not self._started:
            self._started = True
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        # An event with no data line is dropped, as the standard says (`event: ping` alone yields nothing).
        if not self._data:
            self._event = None
            return None
        event = ServerSentEvent("\n".join(self._data), self._event or None, self._last_event_id, self._retry)
        self._data = []
        self._event = None
        self._retry = None
        return event


def iter_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """The events in a byte stream."""
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.end()


async def aiter_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """The events in an async byte stream."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.end():
        yield event


class Stream(Generic[ModelT]):
    """The results of a streamed call, each parsed as its event arrives.

    Iterate it, best inside ``with``: the HTTP response is closed when the stream ends, when an error is
    raised, or on ``close()``. Closing early drops the connection, which tells the server to stop generating.

    Raises (while iterating):
        APIStatusError: The server sent an error event; the subclass matches the error's status.
        APIConnectionError: The connection dropped (APITimeoutError: it went quiet for longer than the timeout).
        APIResponseValidationError: An event is not JSON, or not the shape of the result type.

    Attributes:
        response: The HTTP response the events are read from.
    """

    def __init__(self, response: httpx.Response, cast_to: type[ModelT]) -> None:
        self.response = response
        self._cast_to = cast_to
        self._iterator = self._iter_items()

    @property
    def request_id(self) -> str | None:
        """The response's ``x-request-id`` header."""
        return self.response.headers.get("x-request-id")

    def __iter__(self) -> Iterator[ModelT]:
        return self

    def __next__(self) -> ModelT:
        return next(self._iterator)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and close the response; safe to call more than once."""
        self._iterator.close()
        self.response.close()

    def _iter_items(self) -> Generator[ModelT]:
        try:
            for event in iter_events(self._iter_bytes()):
                if event.data == "[DONE]":
                    return
                item = _parse_event(event, self.response, self._cast_to)
                if item is not None:
                    yield item
        finally:
            self.response.close()

    def _iter_bytes(self) -> Iterator[bytes]:
        try:
            yield from self.response.iter_bytes()
        except httpx.TimeoutException as exc:
            raise APITimeoutError(self.response.request) from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(self.response.request) from exc


class AsyncStream(Generic[ModelT]):
    """The results of a streamed call on ``AsyncEmber``: ``Stream`` with ``async for`` and ``async with``.

    See ``Stream`` for when the response is closed and what iterating raises.
    """

    def __init__(self, response: httpx.Response, cast_to: type[ModelT]) -> None:
        self.response = response
        self._cast_to = cast_to
        self._iterator = self._iter_items()

    @property
    def request_id(self) -> str | None:
        """The response's ``x-request-id`` header."""
        return self.response.headers.get("x-request-id")

    def __aiter__(self) -> AsyncIterator[ModelT]:
        return self

    async def __anext__(self) -> ModelT:
        return await self._iterator.__anext__()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop reading and close the response; safe to call more than once."""
        await self._iterator.aclose()
        await self.response.aclose()

    async def _iter_items(self) -> AsyncGenerator[ModelT]:
        try:
            async for event in aiter_events(self._iter_bytes()):
                if event.data == "[DONE]":
                    return
                item = _parse_event(event, self.response, self._cast_to)
                if item is not None:
                    yield item
        finally:
            await self.response.aclose()

    async def _iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_bytes():
                yield chunk
        except httpx.TimeoutException as exc:
            raise APITimeoutError(self.response.request) from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(self.response.request) from exc


def _parse_event(event: ServerSentEvent, response: httpx.Response, cast_to: type[ModelT]) -> ModelT | None:
    """The result an event carries; None for an event of a kind this SDK does not know; raises an error event."""
    if event.event not in (None, "message", "error"):
        return None
    try:
        data = json.loads(event.data)
    except ValueError as exc:
        raise APIResponseValidationError(
            response, event.data, message=f"a stream event is not JSON: {event.data[:200]!r}"
        ) from exc
    is_error_object = isinstance(data, Mapping) and data.get("error") is not None
    if event.event == "error" or is_error_object:
        error = data.get("error", data) if isinstance(data, Mapping) else data
        status = status_of_error_event(error) if isinstance(error, Mapping) else 500
        raise make_status_error(response, data, status_code=status)
    return validate(cast_to, data, response)
