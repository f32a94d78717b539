"""Functions over HTTP: list them, invoke one (sync or ``?async=true``), and poll or cancel an async invocation.

    GET  /v1/functions                     live functions with their input and output schemas
    GET  /v1/functions/{name}              one of them
    POST /v1/functions/{name}/invoke       {"input": {...}, "timeout_s": 30}  -> {"output": ...}
    POST ...?async=true                    {..., "webhook_url": ...} -> 202 {"id": "fnjob_...", "status": "queued"}
    GET  /v1/jobs/{id}                     queued | running | succeeded (output) | failed (error) | cancelled
    POST /v1/jobs/{id}/cancel              -> the job, cancelled; 409 if it had finished

A call is charged to the caller's key like a request (``Quota``, modality ``function``); the input is checked
against the function's schema before any quota is spent or any work done. A sync call of a function that no
live worker serves is a 503 ``no_worker`` (a name no worker ever declared is a 404); an async one is queued all
the same (202): the queue keeps it until a worker comes. Async jobs are admitted here (rate limits) and billed
by the worker that runs them (``ember.functions.runner``), once each, under their job id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ember.bus.client import JobClient
from ember.bus.messages import FunctionInfo, FunctionJob, Modality
from ember.config import Settings
from ember.functions.async_jobs import AsyncJobs, IdempotencyConflict, JobFinished
from ember.functions.caller import CallError, CallResult, FunctionCaller
from ember.functions.catalog import FunctionCatalog
from ember.functions.webhook import WebhookRefused, check_url
from ember.gateway.auth import current_key
from ember.gateway.errors import GatewayError, InvalidRequest, NotFound, UpstreamError
from ember.gateway.lifecycle import settled
from ember.gateway.quota import Quota
from ember.gateway.routes.common import parse_body
from ember.gateway.state import GatewayState, state

log = logging.getLogger("ember.gateway.functions")


class InvokeRequest(BaseModel):
    """The body of ``POST /v1/functions/{name}/invoke``."""

    model_config = ConfigDict(extra="forbid")
    input: dict[str, Any] = {}
    # None: the function's own timeout, else functions.default_timeout_s.
    timeout_s: float | None = Field(default=None, gt=0)
    # Async only: POSTed the finished job (ember.functions.webhook); its host must be in functions.webhook_hosts.
    webhook_url: str | None = Field(default=None, max_length=2048)


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


# Longer keys are refused rather than cut: two keys that differ only past the cut would name one job.
MAX_IDEMPOTENCY_KEY = 255


async def setup(bus: JobClient, js: JetStreamContext, settings: Settings) -> tuple[FunctionCaller, AsyncJobs]:
    """The function caller (over the catalog) and the async jobs (their queue and store)."""
    catalog = await FunctionCatalog.open(js)
    caller = FunctionCaller(bus, catalog, settings.functions, settings.gateway.accept_timeout_s)
    return caller, await AsyncJobs.open(js, bus, settings.functions)


def caller(request: Request) -> FunctionCaller:
    return GatewayState.running(state(request).functions, "the function caller")


def async_jobs(request: Request) -> AsyncJobs:
    return GatewayState.running(state(request).function_jobs, "the async job queue")


def _describe(fn: FunctionInfo, workers: int) -> dict[str, Any]:
    return {
        "name": fn.name,
        "object": "function",
        "description": fn.description,
        "input_schema": fn.input_schema,
        "output_schema": fn.output_schema,
        "timeout_s": fn.timeout_s,
        "workers": workers,
    }


async def list_functions(request: Request) -> Response:
    c = caller(request)
    live = c.live()
    infos = await asyncio.gather(*(c.catalog.get(name) for name in sorted(live)))
    data = [_describe(fn, live[fn.name]) for fn in infos if fn is not None]
    return JSONResponse({"object": "list", "data": data})


async def retrieve(request: Request) -> Response:
    c = caller(request)
    fn = await _resolve(c, request.path_params["name"])
    return JSONResponse(_describe(fn, c.live().get(fn.name, 0)))


async def _resolve(c: FunctionCaller, name: str) -> FunctionInfo:
    try:
        return await c.resolve(name)
    except CallError as e:
        raise NotFound(e.info.message, code=e.info.code, param="name") from None


async def invoke(request: Request) -> Response:
    c = caller(request)
    name = request.path_params["name"]
    try:
        fn = await c.declared(name)
    except CallError as e:
        raise NotFound(e.info.message, code=e.info.code, param="name") from None
    body = await parse_body(request, InvokeRequest)
    try:
        c.check_input(fn, body.input)
        timeout_s = c.timeout(fn, body.timeout_s)
    except CallError as e:
        raise UpstreamError(e.info) from None
    if request.query_params.get("async", "false").lower() in ("1", "true", "yes"):
        return await submit(request, fn, body, timeout_s)
    if body.webhook_url is not None:
        raise InvalidRequest("webhook_url is for async invocations (?async=true) only", param="webhook_url")
    if name not in c.live():
        raise UpstreamError(c.no_worker(name).info)
    quota = await Quota.open(request, fn.name)
    quota.modality = Modality.FUNCTION
    request_id: str = request.state.request_id
    result = await metered_call(c, quota, fn, body.input, request_id=request_id, timeout_s=timeout_s)
    return JSONResponse(
        {
            "id": f"fncall_{request_id.removeprefix('req_')}",
            "object": "function.result",
            "function": fn.name,
            "output": result.output,
            "duration_ms": round(result.duration_ms, 1),
        },
        headers={"x-ember-worker": result.worker_id, **quota.headers()},
    )


async def submit(request: Request, fn: FunctionInfo, body: InvokeRequest, timeout_s: float) -> Response:
    """Queue an async invocation: 202 once the queue holds it, whether or not a worker serves it now."""
    settings = state(request).settings
    if body.webhook_url is not None:
        try:
            check_url(body.webhook_url, settings.functions.webhook_hosts)
        except WebhookRefused as e:
            raise InvalidRequest(str(e), code="invalid_webhook_url", param="webhook_url") from None
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", param="Idempotency-Key")
    quota = await Quota.open(request, fn.name)
    quota.modality = Modality.FUNCTION
    jobs = async_jobs(request)
    job = FunctionJob(
        request_id=request.state.request_id,
        model=fn.name,
        input=body.input,
        timeout_s=timeout_s,
        priority=quota.priority,
    )
    try:
        record = await jobs.submit(
            job, key_id=quota.key.id, webhook_url=body.webhook_url, idempotency_key=idempotency_key
        )
    except IdempotencyConflict as e:
        await settled(quota.close(status="idempotency_key_reused"))
        raise Conflict(str(e), code="idempotency_key_reused", param="Idempotency-Key") from None
    except Exception:
        await settled(quota.close(status="internal_error", refund=True))
        raise
    # Admitted here; the worker that runs the job writes its one usage record, under the job id, when it ends.
    quota.usage = None
    await settled(quota.close())
    return JSONResponse(record.public(), status_code=202, headers=quota.headers())


async def metered_call(
    c: FunctionCaller, quota: Quota, fn: FunctionInfo, value: dict[str, Any], *, request_id: str, timeout_s: float
) -> CallResult:
    """One call, with ``quota`` closed after it whatever happens; a failure raises its GatewayError."""
    status = "client_closed"
    try:
        result = await c.call(
            fn, value, request_id=request_id, timeout_s=timeout_s, key_id=quota.key.id, priority=quota.priority
        )
        status = "ok"
        return result
    except CallError as e:
        status = e.info.code or "error"
        raise UpstreamError(e.info) from None
    finally:
        # A 503 means the platform did not run it: not the key's to pay for.
        await settled(quota.close(status=status, refund=status in ("no_worker", "worker_lost")))


def _job_id(request: Request) -> str:
    return str(request.path_params["id"])


def _no_job(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r} (jobs are kept for a limited time)", code="job_not_found", param="id")


async def get_job(request: Request) -> Response:
    jobs = async_jobs(request)
    record = await jobs.get(_job_id(request), current_key(request).id)
    if record is None:
        raise _no_job(_job_id(request))
    return JSONResponse(record.public())


async def cancel_job(request: Request) -> Response:
    jobs = async_jobs(request)
    try:
        record = await jobs.cancel(_job_id(request), current_key(request).id)
    except JobFinished as e:
        raise Conflict(f"job {e.record.id!r} has already {e.record.status}", code="job_finished", param="id") from None
    if record is None:
        raise _no_job(_job_id(request))
    return JSONResponse(record.public())


def routes() -> list[Route]:
    return [
        Route("/v1/functions", list_functions, methods=["GET"]),
        Route("/v1/functions/{name}", retrieve, methods=["GET"]),
        Route("/v1/functions/{name}/invoke", invoke, methods=["POST"]),
        Route("/v1/jobs/{id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{id}/cancel", cancel_job, methods=["POST"]),
    ]
