"""``client.functions``: list the server's functions and invoke them, synchronously or as polled jobs."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from .._resource import AsyncAPIResource, SyncAPIResource, request_options
from .._types import NOT_GIVEN, Headers, NotGiven, Timeout
from ..types.function import FunctionDefinition, FunctionJob, FunctionList, FunctionResult

__all__ = ["AsyncFunctions", "Functions"]


class Functions(SyncAPIResource):
    def list(self, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN) -> FunctionList:
        """List the functions the server runs now, with their input and output JSON schemas.

        Args:
            extra_headers: Headers to send with this call only.
            timeout: This call's timeout, instead of the client's.

        Returns:
            A ``FunctionList``: iterate it, or read ``.data``.
        """
        options = request_options(extra_headers, None, timeout)
        return self._client.get("functions", cast_to=FunctionList, options=options)

    def retrieve(
        self, name: str, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> FunctionDefinition:
        """One function's declaration; raises NotFoundError if no worker serves it."""
        options = request_options(extra_headers, None, timeout)
        return self._client.get(_path(name), cast_to=FunctionDefinition, options=options)

    def invoke(
        self,
        name: str,
        input: dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> FunctionResult:
        """Run a function and wait for its output.

        Args:
            name: The function's name, e.g. ``"generate_image"`` or ``"my_funcs.lookup_order"``.
            input: Its input, matching the function's ``input_schema``.
            timeout_s: The most seconds the call may run (the server caps it). Default: the function's own.
            extra_headers: Headers to send with this call only.
            timeout: This HTTP call's timeout, instead of the client's.

        Returns:
            A ``FunctionResult``; its ``output`` is the function's return value.

        Raises:
            BadRequestError: The input does not match the schema (``code == "invalid_function_input"``).
            NotFoundError: No function by that name is served.
            InternalServerError: The function raised (``code == "function_raised"``) or returned bad output.
            APIStatusError: 504 ``function_timeout`` when it ran past its timeout. Like every 5xx that may be
                transient, the client retries it up to ``max_retries`` times: give a function with side effects
                a client with ``max_retries=0``.
        """
        options = request_options(extra_headers, None, timeout)
        return self._client.post(_invoke(name), body=_body(input, timeout_s), cast_to=FunctionResult, options=options)

    def submit(
        self,
        name: str,
        input: dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> FunctionJob:
        """Start a function in the background (``?async=true``); returns the queued ``FunctionJob`` to poll.

        The job is durable: it runs once, on whichever worker takes it, even across worker and gateway restarts.
        ``idempotency_key``: a retry with the same key (a submit whose answer was lost) gets the same job back,
        not a second one. ``webhook_url``: the server POSTs the finished job there, signed (``Ember-Signature``);
        its host must be in the server's ``functions.webhook_hosts``.
        """
        options = request_options(_with_idempotency(extra_headers, idempotency_key), None, timeout)
        path = _invoke(name) + "?async=true"
        body = _body(input, timeout_s, webhook_url)
        return self._client.post(path, body=body, cast_to=FunctionJob, options=options)

    def cancel_job(
        self, job_id: str, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> FunctionJob:
        """Cancel an async invocation: a queued job never runs, a running one is stopped (``cancelled``).

        Raises:
            APIStatusError: 409 when the job had already finished (``code == "job_finished"``).
        """
        options = request_options(extra_headers, None, timeout)
        return self._client.post(_job(job_id) + "/cancel", body={}, cast_to=FunctionJob, options=options)

    def retrieve_job(
        self, job_id: str, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> FunctionJob:
        """An async invocation's state (``GET /jobs/{id}``)."""
        options = request_options(extra_headers, None, timeout)
        return self._client.get(_job(job_id), cast_to=FunctionJob, options=options)

    def wait(self, job_id: str, *, poll_interval_s: float = 0.25, max_wait_s: float = 600.0) -> FunctionJob:
        """Poll a job until it is done; raises TimeoutError after ``max_wait_s``."""
        deadline = time.monotonic() + max_wait_s
        while True:
            job = self.retrieve_job(job_id)
            if job.done:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} was still {job.status} after {max_wait_s:g}s")
            time.sleep(poll_interval_s)


class AsyncFunctions(AsyncAPIResource):
    async def list(
        self,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FunctionList:
        """List the functions the server runs now; see ``Functions.list``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.get("functions", cast_to=FunctionList, options=options)

    async def retrieve(
        self,
        name: str,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FunctionDefinition:
        """One function's declaration; see ``Functions.retrieve``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.get(_path(name), cast_to=FunctionDefinition, options=options)

    async def invoke(
        self,
        name: str,
        input: dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FunctionResult:
        """Run a function and wait for its output; see ``Functions.invoke``."""
        options = request_options(extra_headers, None, timeout)
        body = _body(input, timeout_s)
        return await self._client.post(_invoke(name), body=body, cast_to=FunctionResult, options=options)

    async def submit(
        self,
        name: str,
        input: dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FunctionJob:
        """Start a function in the background; see ``Functions.submit``."""
        options = request_options(_with_idempotency(extra_headers, idempotency_key), None, timeout)
        path = _invoke(name) + "?async=true"
        body = _body(input, timeout_s, webhook_url)
        return await self._client.post(path, body=body, cast_to=FunctionJob, options=options)

    async def cancel_job(
        self,
        job_id: str,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FunctionJob:
        """Cancel an async invocation; see ``Functions.cancel_job``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.post(_job(job_id) + "/cancel", body={}, cast_to=FunctionJob, options=options)

    async def retrieve_job(
        self,
        job_id: str,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FunctionJob:
        """An async invocation's state; see ``Functions.retrieve_job``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.get(_job(job_id), cast_to=FunctionJob, options=options)

    async def wait(self, job_id: str, *, poll_interval_s: float = 0.25, max_wait_s: float = 600.0) -> FunctionJob:
        """Poll a job until it is done; see ``Functions.wait``."""
        deadline = time.monotonic() + max_wait_s
        while True:
            job = await self.retrieve_job(job_id)
            if job.done:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} was still {job.status} after {max_wait_s:g}s")
            await asyncio.sleep(poll_interval_s)


def _path(name: str) -> str:
    if not name:
        raise ValueError(f"name={name!r} must be a non-empty function name")
    return f"functions/{quote(name, safe='')}"


def _invoke(name: str) -> str:
    return _path(name) + "/invoke"


def _job(job_id: str) -> str:
    if not job_id:
        raise ValueError(f"job_id={job_id!r} must be a non-empty job id")
    return f"jobs/{quote(job_id, safe='')}"


def _body(input: dict[str, Any] | None, timeout_s: float | None, webhook_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"input": input or {}}
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    return body


def _with_idempotency(headers: Headers | None, key: str | None) -> Headers | None:
    return headers if key is None else {**(headers or {}), "Idempotency-Key": key}
