"""``client.batches``: run the requests of an uploaded JSONL file as one batch (``/batches``), and follow it.

The flow, as OpenAI's::

    file = client.files.create(file="requests.jsonl", purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions")
    while not (batch := client.batches.retrieve(batch.id)).done:
        time.sleep(1)
    results = client.files.content(batch.output_file_id).text   # one JSON result a line, by custom_id

Each input line is ``{"custom_id": ..., "method": "POST", "url": <endpoint>, "body": {...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .._resource import AsyncAPIResource, SyncAPIResource, query_path, request_options
from .._types import NOT_GIVEN, Body, Headers, NotGiven, Timeout
from ..types.batch import Batch, BatchList

__all__ = ["AsyncBatches", "Batches"]


class Batches(SyncAPIResource):
    def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> Batch:
        """Start a batch.

        Args:
            input_file_id: A file uploaded with ``purpose="batch"``: JSONL, one request a line, each with a
                ``custom_id`` unique in the file and ``url`` equal to ``endpoint``.
            endpoint: The API path every request goes to: ``/v1/chat/completions``, ``/v1/completions``,
                ``/v1/embeddings``, ... (whichever the server runs in batches).
            completion_window: How long the batch may take; OpenAI accepts only ``"24h"``.
            metadata: Up to 16 string pairs, kept with the batch for your own bookkeeping.
            extra_headers: Headers to send with this call only.
            extra_body: More JSON fields, sent as they are.
            timeout: This call's timeout, instead of the client's.

        Returns:
            The new ``Batch``, usually ``validating``; poll ``retrieve`` until ``done``.

        Raises:
            BadRequestError: An unknown endpoint or completion window, no file with the id ``input_file_id``, or
                a file not uploaded with ``purpose="batch"``.
        """
        body = _body(input_file_id, endpoint, completion_window, metadata)
        options = request_options(extra_headers, extra_body, timeout)
        return self._client.post("batches", body=body, cast_to=Batch, options=options)

    def retrieve(
        self, batch_id: str, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> Batch:
        """A batch's current state; raises NotFoundError for an unknown id."""
        options = request_options(extra_headers, None, timeout)
        return self._client.get(_path(batch_id), cast_to=Batch, options=options)

    def list(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> BatchList:
        """List batches, newest first, one page at a time.

        Args:
            after: A batch id: the page starts after it (``page.next_after`` from the previous page).
            limit: The most batches on the page (1 to 100 on OpenAI; default 20).
            extra_headers: Headers to send with this call only.
            timeout: This call's timeout, instead of the client's.

        Returns:
            A ``BatchList``: iterate it, or read ``data``; ``has_more`` says whether another page follows.
        """
        path = query_path("batches", after=after, limit=limit)
        return self._client.get(path, cast_to=BatchList, options=request_options(extra_headers, None, timeout))

    def cancel(
        self, batch_id: str, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> Batch:
        """Cancel a batch: it is ``cancelling`` until running requests end, then ``cancelled``.

        The results of requests that finished stay in its output file. Cancelling a batch that has already
        finished changes nothing: the batch comes back as it is.

        Raises:
            NotFoundError: No such batch.
        """
        options = request_options(extra_headers, None, timeout)
        return self._client.post(_path(batch_id) + "/cancel", body={}, cast_to=Batch, options=options)


class AsyncBatches(AsyncAPIResource):
    async def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> Batch:
        """Start a batch; see ``Batches.create``."""
        body = _body(input_file_id, endpoint, completion_window, metadata)
        options = request_options(extra_headers, extra_body, timeout)
        return await self._client.post("batches", body=body, cast_to=Batch, options=options)

    async def retrieve(
        self,
        batch_id: str,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> Batch:
        """A batch's current state; see ``Batches.retrieve``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.get(_path(batch_id), cast_to=Batch, options=options)

    async def list(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> BatchList:
        """List batches, newest first; see ``Batches.list``."""
        path = query_path("batches", after=after, limit=limit)
        return await self._client.get(path, cast_to=BatchList, options=request_options(extra_headers, None, timeout))

    async def cancel(
        self,
        batch_id: str,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> Batch:
        """Cancel a batch; see ``Batches.cancel``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.post(_path(batch_id) + "/cancel", body={}, cast_to=Batch, options=options)


def _body(
    input_file_id: str, endpoint: str, completion_window: str, metadata: Mapping[str, str] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "input_file_id": input_file_id,
        "endpoint": endpoint,
        "completion_window": completion_window,
    }
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def _path(batch_id: str) -> str:
    if not batch_id:
        raise ValueError(f"batch_id={batch_id!r} must be a non-empty batch id")
    return f"batches/{quote(batch_id, safe='')}"
