"""POST /v1/embeddings: OpenAI's embeddings API, a sentence encoder on a worker.

body -> checked inputs -> quota (one request) -> EmbedJob (inputs inline, or BlobStore past what fits one NATS
message) -> worker accepts (every input tokenized and checked) -> its tokens admitted -> vectors in order
-> EmbedResult -> tokens settled -> floats or base64
"""

from __future__ import annotations

import array
import base64
import contextlib
import json
import sys

import anyio
from starlette.requests import Request
from starlette.responses import Response

from ember.bus.blobs import BlobStore, inline_limit
from ember.bus.client import JobRefused, JobStream
from ember.bus.errors import BusError
from ember.bus.messages import EmbedJob, EmbedResult, EmbedVectors, ErrorInfo, JobStatus, Modality, StreamReply
from ember.gateway import lifecycle
from ember.gateway.embedding_schemas import Embedding, EmbeddingsBody, EmbeddingsResponse, EmbeddingsUsage
from ember.gateway.errors import GatewayError, UpstreamError
from ember.gateway.quota import Quota
from ember.gateway.routes.common import bus, check_model, parse_body, settings
from ember.gateway.state import GatewayState, state

_BIG_ENDIAN = sys.byteorder == "big"


async def create(request: Request) -> Response:
    body = await parse_body(request, EmbeddingsBody)
    texts, token_ids = body.inputs()
    check_model(request, body.model, Modality.EMBED)
    quota = await Quota.open(request, body.model)
    quota.modality = Modality.EMBED
    request_id: str = request.state.request_id
    job = EmbedJob(
        request_id=request_id,
        model=body.model,
        texts=texts,
        token_ids=token_ids,
        dimensions=body.dimensions,
        priority=quota.priority,
        key_id=quota.key.id,
    )
    blobs: BlobStore | None = None
    object_name: str | None = None
    prompt_tokens = 0
    status = "client_closed"
    stream: JobStream[StreamReply] | None = None
    try:
        inline = json.dumps(texts if texts is not None else token_ids).encode()
        if len(inline) > inline_limit(bus(request).nc.max_payload):
            blobs = GatewayState.running(state(request).blobs, "the blob store")
            object_name = await blobs.put(inline, name=f"embed-{request_id}")
            job = job.model_copy(update={"texts": None, "token_ids": None, "inputs_object": object_name})
        stream = await bus(request).submit(job, StreamReply)
        try:
            accepted = await stream.wait_accepted(settings(request).gateway.accept_timeout_s)
        except Exception as e:
            raise lifecycle.bus_error(e, body.model) from e
        prompt_tokens = accepted.prompt_tokens
        await quota.admit_tokens(prompt_tokens, 0)
        vectors, result = await _collect(stream, body.model)
        status = "ok"
    except GatewayError as e:
        status = e.code or "error"
        # Nothing was encoded: a 503 (no worker, workers full) is the platform's failure, not the key's.
        refund = e.status == 503 and prompt_tokens == 0
        with anyio.CancelScope(shield=True):
            await _end(stream, blobs, object_name)
            await quota.close(status=status, refund=refund)
        raise
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _end(stream, blobs, object_name)
            await quota.close(prompt_tokens, status=status)
        raise
    with anyio.CancelScope(shield=True):
        await _end(None, blobs, object_name)
        await quota.close(result.prompt_tokens, status=status)
    data = [
        Embedding(index=i, embedding=_b64(row) if body.encoding_format == "base64" else _floats(row))
        for i, row in enumerate(vectors)
    ]
    usage = EmbeddingsUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    out = EmbeddingsResponse(data=data, model=body.model, usage=usage)
    headers = {**lifecycle.worker_header([stream]), **quota.headers()}
    if result.worker_ms is not None:
        headers["x-ember-processing-ms"] = f"{result.worker_ms:.1f}"
    return Response(out.model_dump_json(), media_type="application/json", headers=headers)


async def _collect(stream: JobStream[StreamReply], model: str) -> tuple[list[bytes], EmbedResult]:
    """Each input's vector as float32 little-endian bytes, in input order, and the final result."""
    rows: list[bytes] = []
    try:
        async for reply in stream:
            if isinstance(reply, EmbedVectors):
                if reply.start != len(rows):
                    raise _broken(f"vectors from {reply.start} arrived after {len(rows)} vectors")
                data = base64.b64decode(reply.data_b64)
                width = 4 * reply.dimensions
                rows += [data[i : i + width] for i in range(0, len(data), width)]
            elif isinstance(reply, EmbedResult):
                if reply.status == JobStatus.FINISHED_ABORTED:
                    raise lifecycle.aborted_error()
                if reply.count != len(rows):
                    raise _broken(f"the worker sent {len(rows)} of {reply.count} vectors")
                return rows, reply
    except (JobRefused, BusError) as e:
        raise lifecycle.bus_error(e, model) from e
    raise lifecycle.aborted_error()  # the stream ended without a result


async def _end(stream: JobStream[StreamReply] | None, blobs: BlobStore | None, name: str | None) -> None:
    if stream is not None:
        await stream.cancel()
    if blobs is not None and name is not None:
        with contextlib.suppress(Exception):
            await blobs.delete(name)


def _broken(why: str) -> UpstreamError:
    return UpstreamError(ErrorInfo(status=502, type="server_error", code="bad_worker_reply", message=why))


def _floats(row: bytes) -> list[float]:
    values = array.array("f", row)
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tolist()


def _b64(row: bytes) -> str:
    return base64.b64encode(row).decode()
