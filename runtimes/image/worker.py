"""The image worker: takes image jobs off the bus, checks them against the model, and streams progress and images.

Per job the reply stream is::

    JobAccepted -> ImageProgress (step i of n, per denoising step of each call it is in)* -> ImageResult x n

A job with ``partial_images`` also gets an ImageProgress carrying a preview (``ImagePreview``) per image at each
chosen step. One ImageResult per image keeps every message under NATS's payload limit; an encoded image (or
preview) too big even for that goes to the BlobStore and the message carries its name (``object``) instead of
``b64``. The last result is final.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import math
import random
from collections.abc import AsyncGenerator, Iterable

from nats.aio.client import Client as NATS
from PIL import Image, UnidentifiedImageError
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from ember.bus.blobs import BlobNotFound, BlobStore, inline_limit
from ember.bus.messages import ErrorInfo, ImageJob, ImagePreview, ImageProgress, ImageResult, JobStatus, Modality
from ember.bus.worker import JobHandler, ReplySink
from ember.config import Settings
from ember.config.weights import resolve_weights
from ember.runtimes.devices import resolve_device
from ember.runtimes.dtypes import resolve_dtype
from ember.runtimes.engine_thread import start_engine_thread
from ember.runtimes.image.engine import (
    Aborted,
    EngineConfig,
    EngineOverloaded,
    Event,
    Failed,
    ImageDone,
    ImageEngine,
    ImageRequest,
    Preview,
    Progress,
)
from ember.runtimes.image.loader import LoadedPipeline, load_pipeline
from ember.runtimes.image.pipeline import BatchSpec
from ember.runtimes.serving import run_worker

log = logging.getLogger("ember.image.worker")

# Source images (edits, variations) are decoded only up to this many pixels.
MAX_SOURCE_PIXELS = 4096 * 4096
# Images per job (the gateway allows OpenAI's 10; jobs from functions come straight off the bus).
MAX_IMAGES_PER_JOB = 16


class RequestError(Exception):
    """A job the worker refuses before running it; carries the error the client sees."""

    def __init__(self, message: str, code: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.info = ErrorInfo(status=status, type="invalid_request_error", code=code, message=message, param=param)


def decode_image(data: bytes, param: str) -> Image.Image:
    """A PNG/JPEG/... upload as a loaded Pillow image; raises RequestError naming ``param``."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_SOURCE_PIXELS:
            raise RequestError(f"{param} is {img.width}x{img.height}; the limit is 4096x4096", "invalid_image", param)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(f"{param} is not a readable image: {e}", "invalid_image", param) from None
    return img


def repaint_mask(mask: Image.Image) -> Image.Image:
    """OpenAI's mask (transparent = edit here) as a pipeline mask (white = repaint); opaque masks use luminance."""
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        return alpha.point(lambda a: 255 if a < 128 else 0)
    return mask.convert("L").point(lambda v: 255 if v >= 128 else 0)


def encode_image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


class ImageJobHandler(JobHandler):
    modality = Modality.IMAGE

    def __init__(
        self,
        model_id: str,
        loaded: LoadedPipeline,
        engine: ImageEngine,
        blobs: BlobStore | None = None,
        inline_bytes: int = inline_limit(1024 * 1024),
    ) -> None:
        self.model = model_id
        self.loaded = loaded
        self.engine = engine
        self.blobs = blobs
        # Encoded images above this go through the BlobStore: the bus's own rule (inline_limit of max_payload).
        self.inline_bytes = inline_bytes
        self.max_batch = engine.config.max_batch

    def load(self) -> tuple[int, int]:
        return self.engine.load()

    def stalled_s(self) -> float:
        return self.engine.clock.stalled_s()

    def metrics(self) -> Iterable[Metric]:
        yield from super().metrics()
        yield from self.engine.clock.collect()
        yield CounterMetricFamily(
            "ember_image_row_steps",
            "Denoising steps, one image each (step-level batching).",
            value=self.engine.row_steps,
        )

    def cancel(self, request_id: str) -> None:
        self.engine.abort(request_id)

    def prepare(self, job: ImageJob, source: bytes | None, mask: bytes | None) -> ImageRequest:
        """Check the job against the model and resolve its defaults; raises RequestError."""
        loaded = self.loaded
        if not job.prompt.strip() and source is None:
            raise RequestError("prompt must not be empty", "invalid_value", "prompt")
        if job.n > MAX_IMAGES_PER_JOB:
            raise RequestError(
                f"n={job.n} exceeds the limit of {MAX_IMAGES_PER_JOB} images per job", "invalid_value", "n"
            )
        width, height = (job.width, job.height) if job.width and job.height else loaded.default_size
        if (width, height) not in loaded.sizes:
            sizes = ", ".join(f"{w}x{h}" for w, h in loaded.sizes)
            raise RequestError(
                f"size {width}x{height} is not supported by model {self.model!r}; supported: {sizes}",
                "unsupported_size",
                "size",
            )
        steps = job.steps or loaded.default_steps
        if steps > loaded.max_steps:
            raise RequestError(
                f"num_inference_steps={steps} exceeds this model's limit of {loaded.max_steps}",
                "invalid_value",
                "num_inference_steps",
            )
        guidance = loaded.default_guidance_scale if job.guidance_scale is None else job.guidance_scale
        if not math.isfinite(guidance):
            raise RequestError(
                f"guidance_scale must be a finite number, got {guidance}", "invalid_value", "guidance_scale"
            )
        strength = None
        init_image = repaint = None
        if source is not None:
            init_image = decode_image(source, "image")
            strength = job.strength if job.strength is not None else 0.75
            if mask is not None:
                repaint = repaint_mask(decode_image(mask, "mask"))
        seed = job.seed if job.seed is not None else random.randrange(2**31)
        negative = job.negative_prompt or ""
        spec = BatchSpec(
            width=width,
            height=height,
            steps=steps,
            guidance_scale=float(guidance),
            negative=bool(negative),
            strength=strength,
            masked=repaint is not None,
        )
        return ImageRequest(
            request_id=job.request_id,
            spec=spec,
            prompt=job.prompt,
            seeds=[seed + i for i in range(job.n)],
            negative_prompt=negative,
            init_image=init_image,
            mask=repaint,
            partial_images=job.partial_images,
            priority=job.priority,
            key=job.key_id or "",
        )

    async def _payload(self, b64: str | None, name: str | None, param: str) -> bytes | None:
        """An upload carried inline (base64) or as a BlobStore object."""
        if b64 is not None:
            try:
                return base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"{param} is not valid base64", "invalid_image", param) from None
        if name is None:
            return None
        if self.blobs is None:
            raise RequestError(f"{param} was sent as an object but this worker has no object store", "bad_job", param)
        try:
            return await self.blobs.get(name)
        except BlobNotFound:
            raise RequestError(f"{param} expired before the job ran; send it again", "invalid_image", param) from None

    async def release(self, request_id: str) -> bool:
        return self.engine.withdraw(request_id)

    async def handle(self, job: ImageJob, sink: ReplySink) -> None:
        try:
            source = await self._payload(job.init_image, job.init_image_object, "image")
            mask = await self._payload(job.mask_image, job.mask_object, "mask")
            # Off the event loop: decoding an upload must not delay pings and other jobs.
            request = await asyncio.to_thread(self.prepare, job, source, mask)
        except RequestError as e:
            await sink.failed(e.info)
            return
        try:
            events = self.engine.generate(request)
        except EngineOverloaded as e:
            await sink.failed(ErrorInfo(status=503, type="server_error", code="overloaded", message=str(e)))
            return
        await sink.accepted(0)
        try:
            await self._stream(job, request, events, sink)
        finally:
            await events.aclose()  # drops the request's images if sending failed (e.g. NATS went away)

    async def _stream(
        self, job: ImageJob, request: ImageRequest, events: AsyncGenerator[Event, None], sink: ReplySink
    ) -> None:
        sent = 0
        async for event in events:
            if isinstance(event, Failed):
                await sink.failed(event.error)
                return
            if isinstance(event, Aborted):
                await sink.send(ImageProgress, JobStatus.FINISHED_ABORTED, step=0, steps=max(1, request.spec.steps))
                return
            if isinstance(event, Progress):
                await sink.send(ImageProgress, step=event.step, steps=event.steps)
                continue
            if isinstance(event, Preview):
                w, h = event.image.size
                b64, name = await self._encoded(event.image, job.output_format)
                preview = ImagePreview(
                    index=event.index,
                    partial_image_index=event.partial_image_index,
                    b64=b64,
                    object=name,
                    width=w,
                    height=h,
                )
                await sink.send(ImageProgress, step=event.step, steps=event.steps, preview=preview)
                continue
            assert isinstance(event, ImageDone)
            b64, name = await self._encoded(event.image, job.output_format)
            sent += 1
            status = JobStatus.FINISHED_STOPPED if sent == request.n else JobStatus.RUNNING
            w, h = event.image.size
            await sink.send(
                ImageResult, status, index=event.index, seed=event.seed, width=w, height=h, b64=b64, object=name
            )

    async def _encoded(self, image: Image.Image, fmt: str) -> tuple[str | None, str | None]:
        """(``b64``, ``object``) of a reply: the encoded image inline, or in the BlobStore when too big."""
        data = await asyncio.to_thread(encode_image, image, fmt)
        if len(data) > self.inline_bytes and self.blobs is not None:
            return None, await self.blobs.put(data)
        return base64.b64encode(data).decode(), None


def build_engine(loaded: LoadedPipeline, max_batch: int, max_waiting: int) -> ImageEngine:
    return ImageEngine(loaded.runner, EngineConfig(max_batch=max_batch, max_waiting=max_waiting))


async def start_model_thread(model_id: str, settings: Settings) -> tuple[LoadedPipeline, ImageEngine]:
    """Load the pipeline and run its engine on one dedicated thread (see the NOTE in ImageEngine)."""
    spec = settings.model(model_id)
    path = resolve_weights(spec, settings.cache_dir)

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)

    def load() -> tuple[LoadedPipeline, ImageEngine]:
        loaded = load_pipeline(path, dtype=dtype, device=str(device))
        return loaded, build_engine(loaded, spec.max_batch, spec.max_waiting)

    log.info("loading %s from %s on %s (%s)", model_id, path, device, dtype)
    return await start_engine_thread("ember-image-model", load)


async def run_image_worker(
    settings: Settings,
    model_id: str,
    nats_url: str,
    *,
    worker_id: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Load the pipeline, join its queue group and serve until ``stop`` is set, or SIGINT/SIGTERM without one.

    Args:
        settings: the configuration; ``model_id`` must name an image model in it.
        model_id: which model to serve.
        nats_url: the bus.
        worker_id: a stable name for this worker (default: random).
        stop: set it to stop the worker; None installs signal handlers instead.
    """
    loaded, engine = await start_model_thread(model_id, settings)

    async def handler(nc: NATS) -> ImageJobHandler:
        blobs = await BlobStore.open(nc.jetstream())
        return ImageJobHandler(model_id, loaded, engine, blobs, inline_limit(nc.max_payload))

    await run_worker(settings, model_id, nats_url, handler, engine.stop, worker_id=worker_id, stop=stop)
