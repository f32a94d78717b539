"""The embeddings worker: takes embed jobs off the bus, tokenizes and checks them, and sends the vectors back.

Replies for one job::

    JobAccepted (prompt_tokens)    every input tokenized and within the model's length
    EmbedVectors (n)               the vectors in input order, a few hundred KB per reply
    EmbedResult (final)            how many, their dimensions, the tokens read

An input that is empty, too long, or holds a token id outside the vocabulary gets JobFailed with a 400 that
names it (``input[3]``) before anything is encoded; ``dimensions`` the model does not allow too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterable

import numpy as np
import torch
from nats.aio.client import Client as NATS
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from ember.bus.blobs import BlobNotFound, BlobStore
from ember.bus.messages import EmbedJob, EmbedResult, EmbedVectors, ErrorInfo, JobStatus, Modality
from ember.bus.worker import JobHandler, ReplySink, internal_error
from ember.config import Settings
from ember.config.weights import resolve_weights
from ember.runtimes.devices import resolve_device
from ember.runtimes.dtypes import resolve_dtype
from ember.runtimes.embed.engine import EmbedEngine, EmbedRequest, EngineConfig
from ember.runtimes.embed.loader import LoadedEncoder, load_encoder
from ember.runtimes.engine_thread import start_engine_thread
from ember.runtimes.serving import EngineOverloaded, run_worker

log = logging.getLogger("ember.embed.worker")

# Bytes of vectors per reply (base64 adds a third): far under NATS's default 1 MB payload.
REPLY_BYTES = 192 * 1024
# Inputs tokenized on the event loop itself; more go to a thread (the tokenizer releases the GIL).
INLINE_TOKENIZE = 64


class RequestError(Exception):
    """A job the worker refuses before encoding it; carries the error the client sees."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = "input") -> None:
        super().__init__(message)
        self.info = ErrorInfo(status=400, type="invalid_request_error", code=code, message=message, param=param)


class EmbedJobHandler(JobHandler):
    modality = Modality.EMBED

    def __init__(
        self,
        model_id: str,
        loaded: LoadedEncoder,
        engine: EmbedEngine,
        blobs: BlobStore | None,
        truncate_dimensions: bool = False,
    ) -> None:
        self.model = model_id
        self.loaded = loaded
        self.engine = engine
        self.blobs = blobs
        self.truncate_dimensions = truncate_dimensions
        self.max_batch = engine.config.max_batch
        self.context_length = loaded.max_tokens

    def load(self) -> tuple[int, int]:
        return self.engine.load()

    def stalled_s(self) -> float:
        return self.engine.clock.stalled_s()

    def metrics(self) -> Iterable[Metric]:
        yield from super().metrics()
        yield from self.engine.clock.collect()
        stats = self.engine.stats
        yield CounterMetricFamily("ember_embed_inputs", "Inputs encoded.", value=stats.rows)
        tokens = CounterMetricFamily(
            "ember_embed_tokens", "Tokens encoded: real, and padded (computed).", labels=["kind"]
        )
        tokens.add_metric(["real"], stats.real_tokens)
        tokens.add_metric(["padded"], stats.padded_tokens)
        yield tokens

    def cancel(self, request_id: str) -> None:
        self.engine.abort(request_id)

    async def release(self, request_id: str) -> bool:
        return self.engine.withdraw(request_id)

    async def handle(self, job: EmbedJob, sink: ReplySink) -> None:
        try:
            dimensions = self.dimensions(job.dimensions)
            rows = await self.rows(job)
        except RequestError as e:
            await sink.failed(e.info)
            return
        except Exception as e:  # never let one job take the worker down
            log.exception("reading %s failed", job.request_id)
            await sink.failed(internal_error(e))
            return
        loop = asyncio.get_running_loop()
        request = EmbedRequest(
            job.request_id, rows, loop, loop.create_future(), priority=job.priority, key=job.key_id or ""
        )
        try:
            self.engine.submit(request)
        except EngineOverloaded as e:
            await sink.failed(ErrorInfo(status=503, type="server_error", code="overloaded", message=str(e)))
            return
        prompt_tokens = sum(len(r) for r in rows)
        try:
            await sink.accepted(prompt_tokens)
            vectors = await request.done
        except asyncio.CancelledError:
            if not request.done.cancelled():
                raise  # the worker is stopping: WorkerHost ends the job
            if request.withdrawn:
                return  # released before it started: the gateway sends it to another worker
            await sink.send(EmbedResult, JobStatus.FINISHED_ABORTED, count=0, dimensions=dimensions, prompt_tokens=0)
            return
        except Exception as e:
            await sink.failed(internal_error(e))
            return
        finally:
            if not request.done.done():
                self.engine.abort(job.request_id)
        vectors = truncate(vectors, dimensions, self.loaded.model.normalize)
        rows_per_reply = max(1, REPLY_BYTES // (4 * dimensions))
        for start in range(0, len(vectors), rows_per_reply):
            part = np.ascontiguousarray(vectors[start : start + rows_per_reply], dtype="<f4")
            data = base64.b64encode(part.tobytes()).decode()
            await sink.send(EmbedVectors, start=start, count=len(part), dimensions=dimensions, data_b64=data)
        await sink.send(
            EmbedResult,
            JobStatus.FINISHED_STOPPED,
            count=len(vectors),
            dimensions=dimensions,
            prompt_tokens=prompt_tokens,
        )

    def dimensions(self, requested: int | None) -> int:
        """The vectors' length for a request; raises RequestError for one the model cannot give."""
        native = self.loaded.dimensions
        if requested is None or requested == native:
            return native
        if not self.truncate_dimensions:
            raise RequestError(
                f"model {self.model!r} gives {native}-dimensional vectors and cannot shorten them; "
                f"dimensions={requested} is not supported",
                param="dimensions",
            )
        if requested > native:
            raise RequestError(
                f"dimensions={requested} is more than model {self.model!r}'s {native}", param="dimensions"
            )
        return requested

    async def rows(self, job: EmbedJob) -> list[list[int]]:
        """Every input's token ids, special tokens included; raises RequestError naming a bad input."""
        texts, token_ids = job.texts, job.token_ids
        if job.inputs_object is not None:
            texts, token_ids = await self._fetch(job.inputs_object)
        if texts is not None:
            if len(texts) > INLINE_TOKENIZE:
                rows = await asyncio.to_thread(self.loaded.tokenizer.encode, texts)
            else:
                rows = self.loaded.tokenizer.encode(texts)
            special = self.loaded.tokenizer.special_tokens
            for i, row in enumerate(rows):
                if len(row) <= special:
                    raise RequestError(
                        f"input[{i}] is empty: every input needs at least one token", param=f"input[{i}]"
                    )
        elif token_ids is not None:
            vocab = self.loaded.tokenizer.vocab_size
            for i, ids in enumerate(token_ids):
                if not ids:
                    raise RequestError(f"input[{i}] is an empty list of token ids", param=f"input[{i}]")
                bad = next((t for t in ids if not 0 <= t < vocab), None)
                if bad is not None:
                    raise RequestError(
                        f"input[{i}] holds token id {bad}, outside model {self.model!r}'s vocabulary of {vocab}",
                        param=f"input[{i}]",
                    )
            rows = [self.loaded.tokenizer.frame(ids) for ids in token_ids]
        else:
            raise RequestError("an embed job needs texts, token_ids or inputs_object")
        if not rows:
            raise RequestError("input is an empty list: give at least one input")
        limit = self.loaded.max_tokens
        for i, row in enumerate(rows):
            if len(row) > limit:
                raise RequestError(
                    f"input[{i}] is {len(row)} tokens long; model {self.model!r} takes at most {limit} tokens per "
                    "input (special tokens included)",
                    code="context_length_exceeded",
                    param=f"input[{i}]",
                )
        return rows

    async def _fetch(self, name: str) -> tuple[list[str] | None, list[list[int]] | None]:
        """Inputs the gateway put in the object store: a JSON list of strings or of token-id lists."""
        if self.blobs is None:
            raise RequestError("this worker has no object store to read the inputs from")
        try:
            data = json.loads(await self.blobs.get(name))
        except BlobNotFound:
            raise RequestError(f"the inputs {name!r} are gone from the object store", code="upload_expired") from None
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return data, None
        if isinstance(data, list) and all(isinstance(x, list) and all(type(t) is int for t in x) for x in data):
            return None, data
        raise RequestError("the stored inputs are neither strings nor lists of token ids")


def truncate(vectors: np.ndarray, dimensions: int, normalized: bool) -> np.ndarray:
    """The first ``dimensions`` of each vector, renormalised when the model's vectors are unit length."""
    if dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    if normalized:
        cut = cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return cut


async def start_model_thread(model_id: str, settings: Settings) -> tuple[LoadedEncoder, EmbedEngine]:
    """Load the encoder and run its engine on one dedicated thread (all model work happens there)."""
    spec = settings.model(model_id)
    path = resolve_weights(spec, settings.cache_dir)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    config = EngineConfig(max_batch=spec.max_batch, max_batch_tokens=spec.max_step_tokens, max_waiting=spec.max_waiting)

    def load() -> tuple[LoadedEncoder, EmbedEngine]:
        torch.set_grad_enabled(False)
        loaded = load_encoder(path, device, dtype)
        return loaded, EmbedEngine(loaded, config)

    log.info("loading %s from %s on %s (%s)", model_id, path, device, dtype)
    return await start_engine_thread("ember-embed-model", load)


async def run_embed_worker(
    settings: Settings,
    model_id: str,
    nats_url: str,
    *,
    worker_id: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Load the encoder, join its queue group and serve until ``stop`` is set, or SIGINT/SIGTERM without one.

    Args:
        settings: the server's settings; ``settings.models[model_id]`` says where the weights are.
        model_id: the model to serve (its job subject's last part).
        nats_url: the NATS server.
        worker_id: a fixed id for this worker (default: a random one).
        stop: set it to stop serving (default: stop on SIGINT/SIGTERM).
    """
    loaded, engine = await start_model_thread(model_id, settings)
    spec = settings.model(model_id)

    async def handler(nc: NATS) -> EmbedJobHandler:
        blobs = await BlobStore.open(nc.jetstream())
        return EmbedJobHandler(model_id, loaded, engine, blobs, spec.truncate_dimensions)

    await run_worker(settings, model_id, nats_url, handler, engine.stop, worker_id=worker_id, stop=stop)
