"""Functions over HTTP: list them, invoke one (sync or ``?async=true``), and poll an async invocation.

    GET  /v1/functions                     live functions with their input and output schemas
    GET  /v1/functions/{name}              one of them
    POST /v1/functions/{name}/invoke       {"input": {...}, "timeout_s": 30}  -> {"output": ...}
    POST ...?async=true                    -> 202 {"id": "fnjob_...", "status": "queued"}
    GET  /v1/jobs/{id}                     queued | running | succeeded (output) | failed (error)

A call is charged to the caller's key like a request (``Quota``, modality ``function``); the input is checked
against the function's schema before any quota is spent or any work done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ember.bus.client import JobClient
from ember.bus.messages import ErrorInfo, FunctionInfo, Modality
from ember.config import Settings
from ember.functions.caller import CallError, CallResult, FunctionCaller
from ember.functions.catalog import FunctionCatalog
from ember.functions.jobs import FunctionJobRecord, JobStore
from ember.gateway.auth import current_key
from ember.gateway.errors import GatewayError, NotFound, UpstreamError
from ember.gateway.generation import settled
from ember.gateway.quota import Quota
from ember.gateway.routes.common import parse_body

log = logging.getLogger("ember.gateway.functions")


class InvokeRequest(BaseModel):
    """The body of ``POST /v1/functions/{name}/invoke``."""

    model_config = ConfigDict(extra="forbid")
    input: dict[str, Any] = {}
    # None: the function's own timeout, else functions.default_timeout_s.
    timeout_s: float | None = Field(default=None, gt=0)


async def setup(app: Starlette, bus: JobClient, js: JetStreamContext, settings: Settings) -> None:
    """The function catalog, the caller and the async job store, on ``app.state`` (at gateway start)."""
    catalog = await FunctionCatalog.open(js)
    app.state.functions = FunctionCaller(bus, catalog, settings.functions, settings.gateway.accept_timeout_s)
    app.state.function_jobs = await JobStore.open(js, settings.functions.job_ttl_s)
    app.state.function_tasks = set()


def caller(request: Request) -> FunctionCaller:
    found: FunctionCaller = request.app.state.functions
    return found


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
    fn = await _resolve(c, request.path_params["name"])
    body = await parse_body(request, InvokeRequest)
    try:
        c.check_input(fn, body.input)
        timeout_s = c.timeout(fn, body.timeout_s)
    except CallError as e:
        raise UpstreamError(e.info) from None
    run_async = request.query_params.get("async", "false").lower() in ("1", "true", "yes")
    quota = await Quota.open(request, fn.name)
    quota.modality = Modality.FUNCTION
    request_id: str = request.state.request_id
    if run_async:
        store: JobStore = request.app.state.function_jobs
        try:
            record = await store.create(fn.name, quota.key.id)
        except Exception:
            await settled(quota.close(status="internal_error", refund=True))
            raise
        task = asyncio.create_task(_run_job(c, store, record, fn, body.input, timeout_s, quota))
        tasks: set[asyncio.Task[None]] = request.app.state.function_tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return JSONResponse(record.public(), status_code=202, headers=quota.headers())
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


async def metered_call(
    c: FunctionCaller, quota: Quota, fn: FunctionInfo, value: dict[str, Any], *, request_id: str, timeout_s: float
) -> CallResult:
    """One call, with ``quota`` closed after it whatever happens; a failure raises its GatewayError."""
    status = "client_closed"
    try:
        result = await c.call(
            fn, value, request_id=request_id, timeout_s=timeout_s, key_id=quota.key.id, priority=quota.tier.priority
        )
        status = "ok"
        return result
    except CallError as e:
        status = e.info.code or "error"
        raise UpstreamError(e.info) from None
    finally:
        # A 503 means the platform did not run it: not the key's to pay for.
        await settled(quota.close(status=status, refund=status in ("no_worker", "worker_lost")))


async def _run_job(
    c: FunctionCaller,
    store: JobStore,
    record: FunctionJobRecord,
    fn: FunctionInfo,
    value: dict[str, Any],
    timeout_s: float,
    quota: Quota,
) -> None:
    """An async invocation, in the background: its state goes to the job store at each step."""
    try:
        await store.put(record.model_copy(update={"status": "running"}))
        result = await metered_call(c, quota, fn, value, request_id=record.id, timeout_s=timeout_s)
        final = record.model_copy(update={"status": "succeeded", "output": result.output})
    except GatewayError as e:
        error = ErrorInfo(status=e.status, type=e.type, code=e.code, message=e.message, param=e.param)
        final = record.model_copy(update={"status": "failed", "error": error})
    except Exception as e:
        log.exception("async function job %s failed", record.id)
        error = ErrorInfo(status=500, type="server_error", code="internal_error", message=f"the call failed: {e}")
        final = record.model_copy(update={"status": "failed", "error": error})
    finally:
        await settled(quota.close(status="internal_error"))  # a no-op when the call closed it
    try:
        await store.put(final.model_copy(update={"finished_at": time.time()}))
    except Exception:  # the bus is gone; the job stays "running" until its entry expires
        log.exception("async function job %s: its result could not be stored", record.id)


async def get_job(request: Request) -> Response:
    store: JobStore = request.app.state.function_jobs
    job_id = request.path_params["id"]
    record = await store.get(job_id)
    # Another key's job is as absent as an expired one.
    if record is None or record.key_id != current_key(request).id:
        raise NotFound(f"no job {job_id!r} (jobs are kept for a limited time)", code="job_not_found", param="id")
    return JSONResponse(record.public())


def routes() -> list[Route]:
    return [
        Route("/v1/functions", list_functions, methods=["GET"]),
        Route("/v1/functions/{name}", retrieve, methods=["GET"]),
        Route("/v1/functions/{name}/invoke", invoke, methods=["POST"]),
        Route("/v1/jobs/{id}", get_job, methods=["GET"]),
    ]
