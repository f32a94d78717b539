"""The text worker: takes text jobs off the bus, turns them into token ids, and streams the engine's output back."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.bus.connection import connect
from ember.bus.messages import ErrorInfo, Modality, SamplingDefaults, SamplingParams, TextJob
from ember.bus.worker import JobHandler, ReplySink, WorkerHost
from ember.config import ModelSpec, Settings
from ember.config.weights import resolve_weights
from ember.runtimes.text.engine import EngineConfig, EngineOverloaded, GenerateRequest, TextEngine
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.runner import ModelRunner

log = logging.getLogger("ember.text.worker")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RequestError(Exception):
    """A job the worker refuses before running it; carries the error the client sees."""

    def __init__(self, message: str, code: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.info = ErrorInfo(status=status, type="invalid_request_error", code=code, message=message, param=param)


@dataclass
class PreparedJob:
    prompt_ids: list[int]
    max_tokens: int
    # The job's sampling with the model's defaults filled in.
    sampling: SamplingParams


def sampling_defaults(spec: ModelSpec, model_dir: Path) -> SamplingDefaults:
    """The config's defaults, else the ones in the model's generation_config.json, else OpenAI's."""
    if spec.sampling is not None:
        return spec.sampling
    try:
        gen = json.loads((model_dir / "generation_config.json").read_text())
    except (OSError, ValueError):
        return SamplingDefaults()
    found = {k: gen[k] for k in ("temperature", "top_p", "top_k") if isinstance(gen.get(k), int | float)}
    if gen.get("do_sample") is False:
        found = {"temperature": 0.0}  # the model's authors want greedy decoding
    try:
        return SamplingDefaults(**found)
    except ValueError:
        log.warning("ignoring out-of-range sampling defaults in %s: %s", model_dir, found)
        return SamplingDefaults()


class TextJobHandler(JobHandler):
    modality = Modality.TEXT

    def __init__(
        self, model_id: str, loaded: LoadedModel, engine: TextEngine, defaults: SamplingDefaults | None = None
    ) -> None:
        self.model = model_id
        self.loaded = loaded
        self.engine = engine
        self.defaults = defaults or SamplingDefaults()
        self.max_batch = engine.config.max_batch
        self.context_length = engine.runner.max_context

    def load(self) -> tuple[int, int]:
        return self.engine.load()

    def cancel(self, request_id: str) -> None:
        self.engine.abort(request_id)

    def prepare(self, job: TextJob) -> PreparedJob:
        """Render and tokenize the prompt and check it against the context; raises RequestError."""
        tok = self.loaded.tokenizer
        if job.messages is not None:
            if not job.messages:
                raise RequestError("messages must not be empty", "invalid_value", "messages")
            try:
                text = tok.apply_chat_template([m.model_dump(exclude_none=True) for m in job.messages])
            except ValueError as e:
                raise RequestError(
                    f"cannot render these messages with the model's chat template: {e}", "invalid_value", "messages"
                ) from e
            ids = tok.encode(text, add_special_tokens=False)
        elif job.prompt is not None:
            ids = tok.encode(job.prompt, add_special_tokens=True)
        else:
            raise RequestError("a text job needs messages or a prompt", "invalid_value")
        if not ids:
            raise RequestError("the prompt is empty after tokenization", "invalid_value", "prompt")
        ctx = self.context_length
        requested = job.sampling.max_tokens
        if len(ids) + (requested or 1) > ctx:
            raise RequestError(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{len(ids) + (requested or 0)} tokens ({len(ids)} in the prompt, {requested or 0} in the "
                "completion). Please reduce the length of the prompt or max_tokens.",
                "context_length_exceeded",
                "max_tokens" if requested else "messages",
            )
        sampling = job.sampling.with_defaults(self.defaults)
        return PreparedJob(prompt_ids=ids, max_tokens=requested or ctx - len(ids), sampling=sampling)

    async def handle(self, job: TextJob, sink: ReplySink) -> None:
        try:
            # Off the event loop: a long prompt's template + tokenization must not delay pings and other jobs.
            prepared = await asyncio.to_thread(self.prepare, job)
        except RequestError as e:
            await sink.failed(e.info)
            return
        request = GenerateRequest(
            request_id=job.request_id,
            prompt_ids=prepared.prompt_ids,
            sampling=prepared.sampling,
            max_tokens=prepared.max_tokens,
            priority=job.priority,
            key=job.key_id or "",
        )
        try:
            stream = self.engine.generate(request)
        except EngineOverloaded as e:
            await sink.failed(ErrorInfo(status=503, type="server_error", code="overloaded", message=str(e)))
            return
        try:
            await sink.accepted(len(prepared.prompt_ids), prepared.max_tokens)
            async for out in stream:
                if out.error is not None:
                    await sink.failed(out.error)
                    return
                await sink.chunk(out.text, out.token_ids, logprobs=out.logprobs, status=out.status, usage=out.usage)
        finally:
            await stream.aclose()  # stops the generation if sending failed (e.g. NATS went away)


def build_engine(spec: ModelSpec, loaded: LoadedModel) -> TextEngine:
    ctx = min(loaded.context_length, spec.max_context or loaded.context_length)
    runner = ModelRunner(
        loaded.model,
        loaded.config,
        max_slots=spec.max_batch,
        max_context=ctx,
        device=torch.device("cpu"),
        dtype=_DTYPES[spec.dtype],
    )
    return TextEngine(runner, loaded.tokenizer, EngineConfig(max_batch=spec.max_batch, max_waiting=spec.max_waiting))


async def start_model_thread(model_id: str, settings: Settings) -> tuple[LoadedModel, TextEngine]:
    """Load the model and run its engine on one dedicated thread (see the NOTE in TextEngine)."""
    spec = settings.model(model_id)
    path = resolve_weights(spec)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[tuple[LoadedModel, TextEngine]] = loop.create_future()

    def model_thread() -> None:
        try:
            loaded = load_model(
                path, dtype=_DTYPES[spec.dtype], device=torch.device("cpu"), cache_dir=settings.cache_dir
            )
            engine = build_engine(spec, loaded)
        except BaseException as e:
            loop.call_soon_threadsafe(ready.set_exception, e)
            return
        loop.call_soon_threadsafe(ready.set_result, (loaded, engine))
        engine.run()

    log.info("loading %s from %s", model_id, path)
    threading.Thread(target=model_thread, name="ember-text-model", daemon=True).start()
    return await ready


async def run_text_worker(
    settings: Settings,
    model_id: str,
    nats_url: str,
    *,
    worker_id: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Load the model, join its queue group and serve until ``stop`` is set, or SIGINT/SIGTERM without one."""
    loaded, engine = await start_model_thread(model_id, settings)
    nc = await connect(nats_url, name=f"ember-worker-text-{model_id}")
    handler = TextJobHandler(model_id, loaded, engine, sampling_defaults(settings.model(model_id), loaded.path))
    host = WorkerHost(nc, handler, worker_id=worker_id) if worker_id else WorkerHost(nc, handler)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await host.start()
        print(f"ember worker: text model {model_id!r} ready ({host.worker_id})", flush=True)
        await stop.wait()
    finally:
        await host.stop()
        await nc.drain()
        engine.stop()
