"""What ``Ember`` and ``AsyncEmber`` share: configuration, building requests, retries, and reading responses.

A call's life::

    resource method (client.chat.completions.create)
      -> post()/post_stream()          body + per-call options
      -> _send()                       build the request; send; on a retryable failure wait and send again
      -> a typed result, a Stream, or an exception from ember._exceptions

``BaseClient`` holds everything that does no I/O; ``SyncAPIClient`` and ``AsyncAPIClient`` differ only in
``await``, like httpx's ``Client`` and ``AsyncClient``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
import httpx

from . import _retries
from ._exceptions import APIConnectionError, APIResponseValidationError, APITimeoutError, make_status_error
from ._models import ModelT, validate
from ._streaming import AsyncStream, Stream
from ._types import NOT_GIVEN, Body, Files, Headers, NotGiven, Timeout
from ._version import __version__

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# Generation can take minutes, so reads may be slow; a server that does not accept a connection in 5 s is down.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2

_HttpxClientT = TypeVar("_HttpxClientT", httpx.Client, httpx.AsyncClient)


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What a single call may change about its request."""

    # Sent on top of the client's headers; a key here replaces the client's value.
    extra_headers: Headers | None = None
    # Merged into the top level of the JSON body; for parameters this SDK does not name (server extensions).
    extra_body: Body | None = None
    # NOT_GIVEN: the client's timeout.
    timeout: Timeout | NotGiven = NOT_GIVEN


class BaseClient(Generic[_HttpxClientT]):
    """Configuration and the I/O-free half of every call."""

    _client: _HttpxClientT

    def __init__(
        self,
        *,
        base_url: str | httpx.URL | None,
        api_key: str | None,
        timeout: Timeout,
        max_retries: int,
        default_headers: Headers | None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries} must be 0 or more")
        if base_url is None:
            base_url = os.environ.get("EMBER_BASE_URL") or DEFAULT_BASE_URL
        self.base_url = httpx.URL(str(base_url).rstrip("/") + "/")
        if self.base_url.scheme not in ("http", "https"):
            raise ValueError(f"base_url={str(base_url)!r} must be an http:// or https:// URL")
        # An empty key (EMBER_API_KEY= in a .env file) means no key, not an empty bearer token.
        self.api_key = (api_key if api_key is not None else os.environ.get("EMBER_API_KEY")) or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.default_headers: dict[str, str] = dict(default_headers or {})

    def _headers(self, options: RequestOptions, *, stream: bool) -> dict[str, str]:
        headers = {
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": f"ember-python/{__version__}",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        # httpx.Headers merges case-insensitively, so "authorization" in default_headers replaces ours.
        merged = httpx.Headers(headers)
        merged.update(self.default_headers)
        merged.update(options.extra_headers or {})
        return dict(merged.items())

    def _build_request(
        self,
        method: str,
        path: str,
        *,
        body: Body | None,
        options: RequestOptions,
        stream: bool,
        files: Files | None = None,
    ) -> httpx.Request:
        """A JSON request; with ``files``, a multipart form of ``body``'s fields and the files instead."""
        fields: dict[str, Any] | None = None
        if body is not None or options.extra_body:
            fields = {**(body or {}), **(options.extra_body or {})}
        timeout = self.timeout if isinstance(options.timeout, NotGiven) else options.timeout
        url = self.base_url.join(path.lstrip("/"))
        headers = self._headers(options, stream=stream)
        if files is not None:
            return self._client.build_request(method, url, data=fields, files=files, headers=headers, timeout=timeout)
        return self._client.build_request(method, url, json=fields, headers=headers, timeout=timeout)

    def _retry_delay_for_error(self, exc: httpx.TransportError, request: httpx.Request, retries_taken: int) -> float:
        """The wait before retrying after a transport error; raises the SDK's error when it must not be retried."""
        if isinstance(exc, _retries.RETRY_TRANSPORT_ERRORS) and retries_taken < self.max_retries:
            return _retries.backoff(retries_taken)
        if isinstance(exc, httpx.TimeoutException):
            raise APITimeoutError(request) from exc
        raise APIConnectionError(request, message=f"Connection error: {exc}") from exc

    def _retry_delay_for_status(self, response: httpx.Response, retries_taken: int) -> float:
        """The wait before retrying an error response (already read); raises its APIStatusError when not to retry."""
        delay = _retries.retry_delay(response, retries_taken) if retries_taken < self.max_retries else None
        if delay is None:
            raise make_status_error(response, _decode(response))
        return delay

    def _parse(self, response: httpx.Response, cast_to: type[ModelT]) -> ModelT:
        data = _decode(response)
        if isinstance(data, str):
            raise APIResponseValidationError(
                response, data, message=f"the response is not JSON ({response.headers.get('content-type')})"
            )
        return validate(cast_to, data, response)


class SyncAPIClient(BaseClient[httpx.Client]):
    """The blocking transport: ``httpx.Client`` plus retries."""

    def __init__(
        self,
        *,
        base_url: str | httpx.URL | None,
        api_key: str | None,
        timeout: Timeout,
        max_retries: int,
        default_headers: Headers | None,
        http_client: httpx.Client | None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        # NOTE: a client the caller passed in is theirs to close; close() only closes one made here.
        self._owns_client = http_client is None
        self._client = http_client if http_client is not None else httpx.Client()

    def get(self, path: str, *, cast_to: type[ModelT], options: RequestOptions = RequestOptions()) -> ModelT:
        response = self._send("GET", path, body=None, options=options, stream=False)
        return self._parse(response, cast_to)

    def post(self, path: str, *, body: Body, cast_to: type[ModelT], options: RequestOptions) -> ModelT:
        response = self._send("POST", path, body=body, options=options, stream=False)
        return self._parse(response, cast_to)

    def delete(self, path: str, *, cast_to: type[ModelT], options: RequestOptions) -> ModelT:
        response = self._send("DELETE", path, body=None, options=options, stream=False)
        return self._parse(response, cast_to)

    def get_raw(self, path: str, *, options: RequestOptions, stream: bool) -> httpx.Response:
        """GET a file rather than JSON (``files.content``); the raw response, unread when ``stream``."""
        return self._send("GET", path, body=None, options=options, stream=stream)

    def post_stream(self, path: str, *, body: Body, cast_to: type[ModelT], options: RequestOptions) -> Stream[ModelT]:
        response = self._send("POST", path, body=body, options=options, stream=True)
        return Stream(response, cast_to)

    def post_multipart(
        self, path: str, *, fields: Body, files: Files, options: RequestOptions, stream: bool
    ) -> httpx.Response:
        """POST a multipart form (uploads); the raw response, since some endpoints answer in plain text."""
        return self._send("POST", path, body=fields, options=options, stream=stream, files=files)

    def post_raw(self, path: str, *, body: Body, options: RequestOptions, stream: bool) -> httpx.Response:
        """POST JSON and return the raw response (a file, not JSON); unread when ``stream``."""
        return self._send("POST", path, body=body, options=options, stream=stream)

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Body | None,
        options: RequestOptions,
        stream: bool,
        files: Files | None = None,
    ) -> httpx.Response:
        """Send until a 2xx (its body read unless ``stream``), retrying what ``_retries`` allows; raise otherwise."""
        retries_taken = 0
        while True:
            request = self._build_request(method, path, body=body, options=options, stream=stream, files=files)
            response: httpx.Response | None = None
            try:
                response = self._client.send(request, stream=True)
                if not (stream and response.is_success):
                    response.read()
            except httpx.TransportError as exc:
                if response is not None:
                    response.close()
                delay = self._retry_delay_for_error(exc, request, retries_taken)
            else:
                if response.is_success:
                    return response
                response.close()
                delay = self._retry_delay_for_status(response, retries_taken)
            time.sleep(delay)
            retries_taken += 1

    def close(self) -> None:
        """Close the connection pool, unless the ``http_client`` was passed in (then it is the caller's)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncAPIClient(BaseClient[httpx.AsyncClient]):
    """The asyncio (or trio) transport: ``httpx.AsyncClient`` plus retries."""

    def __init__(
        self,
        *,
        base_url: str | httpx.URL | None,
        api_key: str | None,
        timeout: Timeout,
        max_retries: int,
        default_headers: Headers | None,
        http_client: httpx.AsyncClient | None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        # NOTE: a client the caller passed in is theirs to close; close() only closes one made here.
        self._owns_client = http_client is None
        self._client = http_client if http_client is not None else httpx.AsyncClient()

    async def get(self, path: str, *, cast_to: type[ModelT], options: RequestOptions = RequestOptions()) -> ModelT:
        response = await self._send("GET", path, body=None, options=options, stream=False)
        return self._parse(response, cast_to)

    async def post(self, path: str, *, body: Body, cast_to: type[ModelT], options: RequestOptions) -> ModelT:
        response = await self._send("POST", path, body=body, options=options, stream=False)
        return self._parse(response, cast_to)

    async def delete(self, path: str, *, cast_to: type[ModelT], options: RequestOptions) -> ModelT:
        response = await self._send("DELETE", path, body=None, options=options, stream=False)
        return self._parse(response, cast_to)

    async def get_raw(self, path: str, *, options: RequestOptions, stream: bool) -> httpx.Response:
        """GET a file rather than JSON (``files.content``); the raw response, unread when ``stream``."""
        return await self._send("GET", path, body=None, options=options, stream=stream)

    async def post_stream(
        self, path: str, *, body: Body, cast_to: type[ModelT], options: RequestOptions
    ) -> AsyncStream[ModelT]:
        response = await self._send("POST", path, body=body, options=options, stream=True)
        return AsyncStream(response, cast_to)

    async def post_multipart(
        self, path: str, *, fields: Body, files: Files, options: RequestOptions, stream: bool
    ) -> httpx.Response:
        """POST a multipart form (uploads); the raw response, since some endpoints answer in plain text."""
        return await self._send("POST", path, body=fields, options=options, stream=stream, files=files)

    async def post_raw(self, path: str, *, body: Body, options: RequestOptions, stream: bool) -> httpx.Response:
        """POST JSON and return the raw response (a file, not JSON); unread when ``stream``."""
        return await self._send("POST", path, body=body, options=options, stream=stream)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Body | None,
        options: RequestOptions,
        stream: bool,
        files: Files | None = None,
    ) -> httpx.Response:
        """Send until a 2xx (its body read unless ``stream``), retrying what ``_retries`` allows; raise otherwise."""
        retries_taken = 0
        while True:
            request = self._build_request(method, path, body=body, options=options, stream=stream, files=files)
            response: httpx.Response | None = None
            try:
                response = await self._client.send(request, stream=True)
                if not (stream and response.is_success):
                    await response.aread()
            except httpx.TransportError as exc:
                if response is not None:
                    await response.aclose()
                delay = self._retry_delay_for_error(exc, request, retries_taken)
            else:
                if response.is_success:
                    return response
                await response.aclose()
                delay = self._retry_delay_for_status(response, retries_taken)
            await anyio.sleep(delay)
            retries_taken += 1

    async def close(self) -> None:
        """Close the connection pool, unless the ``http_client`` was passed in (then it is the caller's)."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _decode(response: httpx.Response) -> object:
    """A read response's body: its JSON, else its text (an HTML page from a proxy, say), else None."""
    if not response.content:
        return None
    try:
        data: object = response.json()
    except ValueError:
        return response.text
    return data
