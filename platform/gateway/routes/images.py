"""POST /v1/images/generations, /v1/images/edits, /v1/images/variations, and GET /v1/images/files/{name}.

A request is one ImageJob of ``n`` images; its worker streams ImageProgress and then one ImageResult per image.
With ``stream=true`` (generations and edits) the previews some ImageProgress carry and each image go out as
server-sent events as they arrive, in OpenAI's shape (see ``_events``).
``response_format=url`` puts each image in a short-lived object-store bucket under a random 256-bit name and
answers with a gateway URL for it: the name is the credential (the route is open, like a signed URL) and the
bucket's TTL expires it.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ember.bus.blobs import BlobNotFound, BlobStore, inline_limit
from ember.bus.client import JobRefused, JobStream
from ember.bus.errors import BusError
from ember.bus.messages import ImageJob, ImageProgress, ImageResult, JobStatus, Modality, StreamReply
from ember.gateway import lifecycle, sse
from ember.gateway.errors import GatewayError, InvalidRequest, NotFound, from_validation
from ember.gateway.image_schemas import (
    ImageEditForm,
    ImageGenerationRequest,
    ImageVariationForm,
    _ImageBody,
    _Streamable,
)
from ember.gateway.quota import Quota
from ember.gateway.routes.common import bus, check_model, now, parse_body, settings
from ember.gateway.state import GatewayState, state
from ember.limits.interface import Cost

B = TypeVar("B", bound=_ImageBody)

# How long a response_format=url image can be fetched.
URL_TTL_S = 3600.0
FILES_BUCKET = "ember_image_files"
_MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}


def _stores(request: Request) -> tuple[BlobStore, BlobStore]:
    """(the object store shared with workers, the URL bucket): the app's lifespan opens both."""
    gw = state(request)
    return GatewayState.running(gw.blobs, "the blob store"), GatewayState.running(gw.image_files, "the image store")


def default_model(request: Request) -> str:
    """The first configured image model, for requests that name none."""
    for model_id, spec in settings(request).models.items():
        if spec.modality == Modality.IMAGE:
            return model_id
    for info in bus(request).workers():
        if info.modality == Modality.IMAGE:
            return info.model
    raise InvalidRequest("no image model is configured; name one in 'model'", code="invalid_value", param="model")


async def generations(request: Request) -> Response:
    body = await parse_body(request, ImageGenerationRequest)
    return await _run(request, body, body.prompt, "image_generation")


async def edits(request: Request) -> Response:
    body, files = await _parse_form(request, ImageEditForm, required=("image",), optional=("mask",))
    return await _run(request, body, body.prompt, "image_edit", source=files["image"], mask=files.get("mask"))


async def variations(request: Request) -> Response:
    body, files = await _parse_form(request, ImageVariationForm, required=("image",), optional=())
    return await _run(request, body, "", "image_variation", source=files["image"])


async def file(request: Request) -> Response:
    """An image stored for a response_format=url answer; 404 once it expired."""
    name: str = request.path_params["name"]
    stem, _, ext = name.rpartition(".")
    if ext not in _MEDIA or len(stem) < 32:
        raise NotFound("no such image (it may have expired)", code="image_not_found")
    _, files = _stores(request)
    try:
        data = await files.get(name)
    except BlobNotFound:
        raise NotFound("no such image (it may have expired)", code="image_not_found") from None
    return Response(data, media_type=_MEDIA[ext], headers={"cache-control": "private, max-age=3600"})


async def _parse_form(
    request: Request, schema: type[B], required: tuple[str, ...], optional: tuple[str, ...]
) -> tuple[B, dict[str, bytes]]:
    """A multipart body's fields (validated by ``schema``) and its uploaded files' bytes."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("this endpoint takes multipart/form-data", code="invalid_request")
    try:
        form = await request.form()
    except GatewayError:  # the body limit tripped while the form was read: 413, not a parse error
        raise
    except Exception as e:  # python-multipart's parse errors share no base class
        raise InvalidRequest(f"the multipart body cannot be parsed: {e}", code="invalid_request") from None
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    try:
        for key, value in form.multi_items():
            name = key.removesuffix("[]")
            if isinstance(value, UploadFile):
                if name in (*required, *optional):
                    files[name] = await value.read()
            else:
                fields[name] = value
    finally:
        with anyio.CancelScope(shield=True):  # a client that leaves must not leave the spooled uploads open
            await form.close()
    for name in required:
        if not files.get(name):
            raise InvalidRequest(f"the {name!r} file is required", code="invalid_value", param=name)
    try:
        body = schema.model_validate(fields)
    except ValidationError as e:
        raise from_validation(e) from None
    unsupported = body.unsupported()
    if unsupported is not None:
        param, why = unsupported
        raise InvalidRequest(why, code="unsupported_parameter", param=param)
    return body, files


async def _upload(blobs: BlobStore, data: bytes | None, limit: int) -> tuple[str | None, str | None]:
    """(base64, None) for an upload of up to ``limit`` bytes, (None, object name) for a bigger one, (None, None)
    for none."""
    if data is None:
        return None, None
    if len(data) > limit:
        return None, await blobs.put(data)
    return base64.b64encode(data).decode(), None


async def _admit_images(quota: Quota, n: int) -> None:
    """Hold ``n`` images of the key's images-per-minute limit; ``close`` charges only the delivered ones."""
    try:
        await quota.admit(Cost(requests=0, images=n))
    except GatewayError as e:
        await quota.close(status=e.code or "error", refund=e.status == 503)
        raise


@dataclass
class _Job:
    """An accepted image job, and what to settle however its request ends (``close``)."""

    stream: JobStream[StreamReply]
    quota: Quota
    model: str
    blobs: BlobStore
    # BlobStore names of the uploads, deleted at the end.
    uploads: list[str]
    delivered: int = 0
    status: str = "client_closed"

    async def replies(self) -> AsyncGenerator[ImageProgress | ImageResult, None]:
        """Progress and results to the job's last image; a failure on the worker or the bus is a GatewayError."""
        try:
            async for reply in self.stream:
                if reply.status == JobStatus.FINISHED_ABORTED:
                    raise lifecycle.aborted_error()
                if isinstance(reply, ImageProgress | ImageResult):
                    yield reply
        except (JobRefused, BusError) as e:
            raise lifecycle.bus_error(e, self.model) from None

    async def close(self) -> None:
        await lifecycle.settled(_finish(self.stream, self.quota, self.delivered, self.status, self.uploads, self.blobs))


async def _run(
    request: Request,
    body: _ImageBody,
    prompt: str,
    kind: str,
    *,
    source: bytes | None = None,
    mask: bytes | None = None,
) -> Response:
    """Run one request; ``kind`` ("image_generation", "image_edit") names its stream events."""
    model = body.model or default_model(request)
    check_model(request, model, Modality.IMAGE)
    width, height = body.dimensions()
    streamed = isinstance(body, _Streamable) and body.stream
    blobs, files = _stores(request)
    quota = await Quota.open(request, model)
    quota.modality = Modality.IMAGE
    await _admit_images(quota, body.n)
    request_id: str = request.state.request_id
    uploads: list[str] = []
    stream: JobStream[StreamReply] | None = None
    try:
        # The image and its mask share one job message: each may take half of what it can carry.
        limit = inline_limit(bus(request).nc.max_payload) // 2
        init_b64, init_object = await _upload(blobs, source, limit)
        mask_b64, mask_object = await _upload(blobs, mask, limit)
        uploads = [name for name in (init_object, mask_object) if name is not None]
        job = ImageJob(
            request_id=f"{request_id}-0",
            model=model,
            prompt=prompt,
            negative_prompt=body.negative_prompt,
            n=body.n,
            width=width,
            height=height,
            steps=body.num_inference_steps,
            guidance_scale=body.guidance_scale,
            seed=body.seed,
            output_format=body.output_format,
            init_image=init_b64,
            init_image_object=init_object,
            strength=getattr(body, "strength", None),
            mask_image=mask_b64,
            mask_object=mask_object,
            priority=quota.priority,
            key_id=quota.key.id,
            # Previews cost decoding on the worker: only a stream can show them.
            partial_images=body.partial_images if isinstance(body, _Streamable) and streamed else 0,
        )
        try:
            stream = await bus(request).submit(job, StreamReply)
            accepted = await stream.wait_accepted(settings(request).gateway.accept_timeout_s)
        except (JobRefused, BusError) as e:
            raise lifecycle.bus_error(e, model) from None
    except BaseException as e:  # nothing ran: an OpenAI JSON error, as for any request refused up front
        status = (e.code or "error") if isinstance(e, GatewayError) else "client_closed"
        await lifecycle.settled(_finish(stream, quota, 0, status, uploads, blobs))
        raise
    run = _Job(stream, quota, model, blobs, uploads)
    headers = {"x-ember-worker": accepted.worker_id, **quota.headers()}
    if streamed:
        return sse.EventStreamResponse(_events(run, body, kind), headers)
    results: dict[int, ImageResult] = {}
    worker_ms = 0.0
    try:
        async with contextlib.aclosing(run.replies()) as replies:
            async for reply in replies:
                if isinstance(reply, ImageResult):
                    results[reply.index] = reply
                    worker_ms = reply.worker_ms or worker_ms
        data = [await _entry(r, body, blobs, files, request) for r in sorted(results.values(), key=lambda r: r.index)]
        run.status = "ok"
    except GatewayError as e:
        run.status = e.code or "error"
        raise
    finally:
        run.delivered = len(results)
        await run.close()
    headers["x-ember-processing-ms"] = f"{worker_ms:.1f}"
    return JSONResponse({"created": now(), "data": data}, headers=headers)


async def _events(run: _Job, body: _ImageBody, kind: str) -> AsyncGenerator[bytes, None]:
    """OpenAI's image stream: ``<kind>.partial_image`` per preview, ``<kind>.completed`` per image.

    Each event also carries Ember's ``index`` (which of the n images) and, when completed, its ``seed``.
    Like OpenAI's, the stream ends after the last image without ``[DONE]``; a failure after the first byte is
    an error event (``{"error": {...}}``), as in the chat stream.
    """
    common = {"output_format": body.output_format, "quality": "auto", "background": "opaque"}
    try:
        async with contextlib.aclosing(run.replies()) as replies:
            async for reply in replies:
                if isinstance(reply, ImageProgress):
                    if (p := reply.preview) is None:
                        continue
                    event = {
                        "type": f"{kind}.partial_image",
                        "b64_json": await _b64(p.b64, p.object, run.blobs),
                        "created_at": now(),
                        "size": f"{p.width}x{p.height}",
                        "partial_image_index": p.partial_image_index,
                        "index": p.index,
                        **common,
                    }
                else:
                    event = {
                        "type": f"{kind}.completed",
                        "b64_json": await _b64(reply.b64, reply.object, run.blobs),
                        "created_at": now(),
                        "size": f"{reply.width}x{reply.height}",
                        "index": reply.index,
                        "seed": reply.seed,
                        # Ember meters images, not tokens: what this event charged.
                        "usage": {"images": 1},
                        **common,
                    }
                    run.delivered += 1
                yield sse.event(event)
        run.status = "ok"
    except GatewayError as e:
        run.status = e.code or "error"
        yield sse.event(e.body())
    finally:
        await run.close()


async def _b64(b64: str | None, name: str | None, blobs: BlobStore) -> str:
    """An image a worker sent inline (base64) or through the BlobStore, as base64."""
    if b64 is not None:
        return b64
    if name is None:
        raise GatewayError("the worker sent an image with no image")
    try:
        return base64.b64encode(await blobs.take(name)).decode()
    except BlobNotFound:
        raise GatewayError("a generated image expired before it could be returned") from None


async def _finish(
    stream: JobStream[StreamReply] | None,
    quota: Quota,
    delivered: int,
    status: str,
    uploads: list[str],
    blobs: BlobStore,
) -> None:
    """Cancel an unfinished job, give back undelivered images, free the uploads and close the quota."""
    if stream is not None:
        await stream.cancel()
    for name in uploads:
        await blobs.delete(name)
    # A 503 (no worker, workers overloaded) before any image is the platform's failure: the request is refunded.
    refund = delivered == 0 and status in ("no_worker", "overloaded", "worker_lost")
    await quota.close(status=status, refund=refund, images=delivered)


async def _entry(
    result: ImageResult, body: _ImageBody, blobs: BlobStore, files: BlobStore, request: Request
) -> dict[str, Any]:
    """One item of the response's ``data``."""
    if result.b64 is not None:
        b64 = result.b64
        raw = base64.b64decode(b64) if body.response_format == "url" else b""
    elif result.object is not None:
        try:
            raw = await blobs.take(result.object)
        except BlobNotFound:
            raise GatewayError("a generated image expired before it could be returned") from None
        b64 = base64.b64encode(raw).decode() if body.response_format == "b64_json" else ""
    else:
        raise GatewayError("the worker sent an image result with no image")
    entry: dict[str, Any] = {"revised_prompt": None, "seed": result.seed}
    if body.response_format == "b64_json":
        entry["b64_json"] = b64
    else:
        name = f"{secrets.token_urlsafe(32)}.{body.output_format}"
        await files.put(raw, name)
        entry["url"] = str(request.url_for("image_file", name=name))
    return entry
