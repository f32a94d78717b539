"""OpenAI's Batch API: run a file of requests at the lowest priority (``ember.batches``).

POST /v1/batches               {"input_file_id", "endpoint", "completion_window", "metadata"?}  the batch
GET  /v1/batches               ?limit ?after                                                     a page of batches
GET  /v1/batches/{id}                                                                            the batch
POST /v1/batches/{id}/cancel                                                                     the batch, cancelling

Creating one checks the request and the input file's owner and purpose, stores the batch (validating) and puts
it on the durable batch queue; a gateway's runner validates the lines and runs them. A key sees only its own
batches; the admin key sees, and may cancel, every key's.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ember.batches import runner
from ember.batches.schemas import BatchRecord, CreateBatch, new_batch
from ember.batches.store import BatchStore
from ember.gateway.auth import current_key, is_admin
from ember.gateway.errors import InvalidRequest, NotFound, PermissionDenied
from ember.gateway.routes.common import parse_body
from ember.gateway.routes.files import int_param, owned, page
from ember.gateway.state import GatewayState, state

PATH = "/v1/batches"
LIST_LIMIT = 100  # OpenAI's largest page of batches


def routes() -> list[BaseRoute]:
    return [
        Route(PATH, create, methods=["POST"]),
        Route(PATH, list_batches, methods=["GET"]),
        Route(PATH + "/{batch_id}", retrieve, methods=["GET"]),
        Route(PATH + "/{batch_id}/cancel", cancel, methods=["POST"]),
    ]


def store(request: Request) -> BatchStore:
    return GatewayState.running(state(request).batches, "the batch store")


async def mine(request: Request, batch_id: str) -> BatchRecord:
    record = await store(request).get(batch_id)
    if record is None or not (is_admin(request) or record.key_id == current_key(request).id):
        raise NotFound(f"No such Batch object: {batch_id}", code="batch_not_found", param="batch_id")
    return record


async def create(request: Request) -> Response:
    if is_admin(request):
        raise PermissionDenied("a batch runs as the key that creates it: create it with an API key", code="admin_key")
    body = await parse_body(request, CreateBatch)
    try:
        source = await owned(request, body.input_file_id)
    except NotFound:
        raise InvalidRequest(
            f"No such File object: {body.input_file_id}", code="file_not_found", param="input_file_id"
        ) from None
    if source.purpose != "batch":
        raise InvalidRequest(
            f"file {source.id} has purpose {source.purpose!r}; a batch's input file must be uploaded with "
            "purpose 'batch'",
            code="invalid_file_purpose",
            param="input_file_id",
        )
    record = new_batch(body, current_key(request).id)
    await store(request).create(record)
    await runner.enqueue(GatewayState.running(state(request).js, "the job bus"), record.id)
    return JSONResponse(record.public())


async def list_batches(request: Request) -> Response:
    q = request.query_params
    limit = int_param(q.get("limit"), "limit", 20, 1, LIST_LIMIT)
    key = current_key(request)
    found = [b.public() for b in await store(request).list() if is_admin(request) or b.key_id == key.id]
    found.reverse()  # newest first, as OpenAI lists them
    return JSONResponse(page(found, q.get("after"), limit))


async def retrieve(request: Request) -> Response:
    return JSONResponse((await mine(request, request.path_params["batch_id"])).public())


async def cancel(request: Request) -> Response:
    record = await mine(request, request.path_params["batch_id"])

    def cancelling(r: BatchRecord) -> BatchRecord | None:
        if r.status in ("validating", "in_progress", "finalizing"):
            return r.moved("cancelling")
        return None  # finished, or cancelling already: cancelling again changes nothing

    changed = await store(request).change(record.id, cancelling)
    if changed is None:
        raise NotFound(f"No such Batch object: {record.id}", code="batch_not_found", param="batch_id")
    return JSONResponse(changed.public())
