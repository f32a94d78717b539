"""Responses whose body is a file rather than JSON (``client.audio.speech``, ``client.files.content``): read whole,
or streamed as it comes.

``create()`` reads the whole body and returns ``BinaryResponseContent`` (``.content``, ``.write_to_file``);
``with_streaming_response.create()`` is a context manager whose ``StreamedBinaryResponse`` hands out the bytes
as the server sends them (``iter_bytes``, ``stream_to_file``), so playback can start before synthesis ends. The
``Async`` twins are the same with ``await``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any

import anyio
import httpx

__all__ = [
    "AsyncBinaryResponseContent",
    "AsyncStreamedBinaryResponse",
    "AsyncStreamedResponseManager",
    "BinaryResponseContent",
    "StreamedBinaryResponse",
    "StreamedResponseManager",
]

FilePath = str | os.PathLike[str]


class _Headers:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def content_type(self) -> str | None:
        """The media type (``audio/mpeg``, ...)."""
        return self.response.headers.get("content-type")

    @property
    def request_id(self) -> str | None:
        """The ``x-request-id`` header, to quote when reporting a problem."""
        return self.response.headers.get("x-request-id")


class BinaryResponseContent(_Headers):
    """A whole file the server returned (its body already read)."""

    @property
    def content(self) -> bytes:
        return self.response.content

    @property
    def text(self) -> str:
        """The content decoded as text (the charset the server names, else UTF-8): a JSONL file, say."""
        return self.response.text

    def json(self) -> Any:
        """The content parsed as one JSON document."""
        return self.response.json()

    def read(self) -> bytes:
        return self.response.content

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        return self.response.iter_bytes(chunk_size)

    def write_to_file(self, file: FilePath) -> None:
        """Write the content to ``file`` (a path), replacing what is there."""
        with open(file, "wb") as f:
            f.write(self.response.content)

    # openai-python's older name for the same thing.
    stream_to_file = write_to_file

    def close(self) -> None:
        self.response.close()


class AsyncBinaryResponseContent(_Headers):
    """``BinaryResponseContent`` from ``AsyncEmber``: the body is already read, so only file writes await."""

    @property
    def content(self) -> bytes:
        return self.response.content

    @property
    def text(self) -> str:
        """The content decoded as text (the charset the server names, else UTF-8): a JSONL file, say."""
        return self.response.text

    def json(self) -> Any:
        """The content parsed as one JSON document."""
        return self.response.json()

    async def read(self) -> bytes:
        return self.response.content

    async def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in self.response.aiter_bytes(chunk_size):
            yield chunk

    async def write_to_file(self, file: FilePath) -> None:
        """Write the content to ``file`` (a path), replacing what is there."""
        await anyio.Path(file).write_bytes(self.response.content)

    stream_to_file = write_to_file

    async def close(self) -> None:
        await self.response.aclose()


class StreamedBinaryResponse(_Headers):
    """A file the server is still sending: iterate it once, as it arrives."""

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        return self.response.iter_bytes(chunk_size)

    def read(self) -> bytes:
        """The rest of the body, waited for."""
        return self.response.read()

    def stream_to_file(self, file: FilePath, *, chunk_size: int | None = None) -> None:
        """Write the body to ``file`` as it arrives."""
        with open(file, "wb") as f:
            for chunk in self.response.iter_bytes(chunk_size):
                f.write(chunk)

    def close(self) -> None:
        self.response.close()


class AsyncStreamedBinaryResponse(_Headers):
    """``StreamedBinaryResponse`` from ``AsyncEmber``."""

    async def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in self.response.aiter_bytes(chunk_size):
            yield chunk

    async def read(self) -> bytes:
        return await self.response.aread()

    async def stream_to_file(self, file: FilePath, *, chunk_size: int | None = None) -> None:
        async with await anyio.open_file(file, "wb") as f:
            async for chunk in self.response.aiter_bytes(chunk_size):
                await f.write(chunk)

    async def close(self) -> None:
        await self.response.aclose()


class StreamedResponseManager(AbstractContextManager[StreamedBinaryResponse]):
    """``with ... as response``: sends the request on entry, closes the connection on exit."""

    def __init__(self, send: Callable[[], httpx.Response]) -> None:
        self._send = send
        self._response: StreamedBinaryResponse | None = None

    def __enter__(self) -> StreamedBinaryResponse:
        self._response = StreamedBinaryResponse(self._send())
        return self._response

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            self._response.close()


class AsyncStreamedResponseManager(AbstractAsyncContextManager[AsyncStreamedBinaryResponse]):
    """``async with ... as response``: sends the request on entry, closes the connection on exit."""

    def __init__(self, send: Callable[[], Awaitable[httpx.Response]]) -> None:
        self._send = send
        self._response: AsyncStreamedBinaryResponse | None = None

    async def __aenter__(self) -> AsyncStreamedBinaryResponse:
        self._response = AsyncStreamedBinaryResponse(await self._send())
        return self._response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            await self._response.close()
