"""The audio worker: takes audio jobs off the bus, decodes the upload, and streams Whisper's segments back.

Replies for one job::

    JobAccepted (prompt_tokens=0)          the file's header read: a supported container, audio within the cap
    AudioSegment (n)                       each segment as soon as its 30 s window is decoded
    AudioResult (final)                    the whole text, the language, the audio's duration in seconds

Bad input that shows before decoding (not a supported container, no audio stream, a header over the duration
cap, an unknown language) gets JobFailed with a 400 instead of JobAccepted. Decoding comes after acceptance, on a
few threads of the worker's own, so a slow or hostile upload never delays the acceptance of other jobs; what
decoding finds (a damaged file, audio past the cap, a decode past its deadline) is a JobFailed 400 after it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from nats.aio.client import Client as NATS
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

from ember.bus.blobs import BlobNotFound, BlobStore
from ember.bus.messages import AudioJob, AudioResult, AudioSegment, AudioWord, ErrorInfo, JobStatus, Modality
from ember.bus.worker import JobHandler, ReplySink, internal_error
from ember.config import Settings
from ember.config.settings import AudioSettings
from ember.config.weights import resolve_weights
from ember.runtimes.audio.decode import SAMPLE_RATE, AudioDecodeError, decode_audio, probe
from ember.runtimes.audio.decoding import SearchOptions
from ember.runtimes.audio.engine import (
    Aborted,
    AudioEngine,
    AudioRequest,
    EngineConfig,
    Failed,
    Finished,
)
from ember.runtimes.audio.loader import LoadedWhisper, load_whisper
from ember.runtimes.audio.pipeline import Segment, Transcription, mel_of
from ember.runtimes.audio.vad import VadOptions, drop_silence
from ember.runtimes.devices import resolve_device
from ember.runtimes.engine_thread import start_engine_thread
from ember.runtimes.serving import EngineOverloaded, run_worker

log = logging.getLogger("ember.audio.worker")

# Reading a header is quick for every allowed container; this only bounds a pathological one.
PROBE_TIMEOUT_S = 5.0


class RequestError(Exception):
    """A job the worker refuses before running it; carries the error the client sees."""

    def __init__(self, message: str, code: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.info = ErrorInfo(status=status, type="invalid_request_error", code=code, message=message, param=param)


def language_code(language: str | None) -> str | None:
    """An ISO-639-1 code (or a language's English name) as whisper's code; raises RequestError if unknown."""
    if language is None or language == "":
        return None
    lang = language.strip().lower()
    if lang in LANGUAGES:
        return lang
    if lang in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[lang]
    raise RequestError(f"language={language!r} is not a language Whisper knows", "invalid_language", "language")


@dataclass
class _Decoding:
    """An accepted job whose upload is being decoded: not in the engine yet, so a cancel is noted here."""

    cancelled: bool = False


class AudioJobHandler(JobHandler):
    modality = Modality.AUDIO

    def __init__(
        self,
        model_id: str,
        loaded: LoadedWhisper,
        engine: AudioEngine,
        blobs: BlobStore | None,
        limits: AudioSettings | None = None,
    ) -> None:
        self.model = model_id
        self.loaded = loaded
        self.engine = engine
        self.blobs = blobs
        self.limits = limits or AudioSettings()
        self.max_batch = engine.config.max_batch
        self.context_length = loaded.model.dims.n_text_ctx
        # Decoding has threads of its own: a slow upload waits for one of these, never for the event loop's pool.
        self.decoder = ThreadPoolExecutor(self.limits.decode_threads, thread_name_prefix="ember-audio-decode")
        self._decoding: dict[str, _Decoding] = {}

    def load(self) -> tuple[int, int]:
        running, waiting = self.engine.load()
        return running, waiting + len(self._decoding)

    def stalled_s(self) -> float:
        return self.engine.clock.stalled_s()

    def metrics(self) -> Iterable[Metric]:
        yield from super().metrics()
        yield from self.engine.clock.collect()
        yield CounterMetricFamily("ember_audio_windows", "30 s windows decoded.", value=self.engine.windows)
        yield CounterMetricFamily(
            "ember_audio_seconds",
            "Seconds of audio transcribed (counted as each request finishes).",
            value=self.engine.audio_seconds,
        )

    def cancel(self, request_id: str) -> None:
        decoding = self._decoding.get(request_id)
        if decoding is not None:
            decoding.cancelled = True
        else:
            self.engine.abort(request_id)

    def close(self) -> None:
        """Stop taking decodes; one in progress ends at its deadline."""
        self.decoder.shutdown(wait=False, cancel_futures=True)

    async def audio_bytes(self, job: AudioJob) -> bytes:
        if job.audio_b64 is not None:
            try:
                return base64.b64decode(job.audio_b64, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError("audio_b64 is not valid base64", "invalid_value", "file") from None
        if job.audio_object is not None and self.blobs is not None:
            try:
                return await self.blobs.get(job.audio_object)
            except BlobNotFound:
                raise RequestError(
                    f"the uploaded file {job.audio_object!r} is gone from the object store", "upload_expired", "file"
                ) from None
        raise RequestError("an audio job needs audio_b64 or audio_object", "invalid_value", "file")

    def language(self, job: AudioJob) -> str | None:
        """The job's language as whisper's code, checked against the model; raises RequestError."""
        language = language_code(job.language)
        if not self.loaded.multilingual:
            if job.task == "translate":
                raise RequestError(f"model {self.model!r} is English-only and cannot translate", "unsupported_model")
            if language not in (None, "en"):
                raise RequestError(
                    f"model {self.model!r} is English-only; language={job.language!r} is not supported",
                    "invalid_language",
                    "language",
                )
            language = "en"
        return language

    def check(self, job: AudioJob, data: bytes) -> None:
        """The upload's container and declared duration, from its header alone; raises RequestError."""
        try:
            probe(data, self.limits.max_duration_s, PROBE_TIMEOUT_S)
        except AudioDecodeError as e:
            raise RequestError(f"{e} (file {job.filename or 'upload'})", "invalid_audio", "file") from None

    def prepare(self, job: AudioJob, data: bytes, language: str | None) -> Transcription:
        """Decode the upload and set up its transcription (on a decode thread); raises RequestError."""
        try:
            samples = decode_audio(data, self.limits.max_duration_s, self.limits.decode_timeout_s)
        except AudioDecodeError as e:
            raise RequestError(f"{e} (file {job.filename or 'upload'})", "invalid_audio", "file") from None
        prompt = job.prompt.strip() if job.prompt else ""
        return new_transcription(
            self.loaded, samples, self.limits, job.task, language, prompt, job.temperature, job.word_timestamps
        )

    async def release(self, request_id: str) -> bool:
        return self.engine.withdraw(request_id)

    async def handle(self, job: AudioJob, sink: ReplySink) -> None:
        try:
            data = await self.audio_bytes(job)
            language = self.language(job)
            # The header only (milliseconds), off the event loop so pings and other jobs never wait on it.
            await asyncio.to_thread(self.check, job, data)
        except RequestError as e:
            await sink.failed(e.info)
            return
        except Exception as e:  # never let one upload take the worker down
            log.exception("checking %s failed", job.request_id)
            await sink.failed(internal_error(e))
            return
        running, waiting = self.load()
        if waiting >= self.engine.config.max_waiting and running >= self.engine.config.max_batch:
            message = f"the worker has {waiting} requests waiting; retry shortly"
            await sink.failed(ErrorInfo(status=503, type="server_error", code="overloaded", message=message))
            return
        decoding = self._decoding[job.request_id] = _Decoding()
        try:
            await sink.accepted(0)
            transcription = await self._decode(job, data, language, sink)
        finally:
            del self._decoding[job.request_id]
        if transcription is None:
            return
        if decoding.cancelled:  # the client went (or the deadline passed) while the file was decoding
            await sink.send(
                AudioResult, JobStatus.FINISHED_ABORTED, text="", language="", duration=transcription.duration
            )
            return
        request = AudioRequest(
            job.request_id, transcription, asyncio.get_running_loop(), priority=job.priority, key=job.key_id or ""
        )
        try:
            self.engine.submit(request)
        except EngineOverloaded as e:
            await sink.failed(ErrorInfo(status=503, type="server_error", code="overloaded", message=str(e)))
            return
        # aclosing: if sending fails (NATS went away), the request leaves the engine at once.
        async with contextlib.aclosing(self.engine.events(request)) as events:
            async for event in events:
                if isinstance(event, Segment):
                    await sink.send(AudioSegment, **segment_fields(event))
                elif isinstance(event, Finished):
                    name = LANGUAGES.get(event.language, event.language)
                    await sink.send(
                        AudioResult, JobStatus.FINISHED_STOPPED, text=event.text, language=name, duration=event.duration
                    )
                elif isinstance(event, Aborted):
                    lang = LANGUAGES.get(transcription.language or "en", "english")
                    await sink.send(
                        AudioResult,
                        JobStatus.FINISHED_ABORTED,
                        text=event.text,
                        language=lang,
                        duration=transcription.duration,
                    )
                elif isinstance(event, Failed):
                    await sink.failed(
                        ErrorInfo(status=500, type="server_error", code="internal_error", message=event.message)
                    )

    async def _decode(self, job: AudioJob, data: bytes, language: str | None, sink: ReplySink) -> Transcription | None:
        """The upload decoded on a decode thread; None when it failed (the failure is sent)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.decoder, self.prepare, job, data, language)
        except RequestError as e:
            await sink.failed(e.info)
        except Exception as e:  # never let one upload take the worker down
            log.exception("decoding %s failed", job.request_id)
            await sink.failed(internal_error(e))
        return None


def new_transcription(
    loaded: LoadedWhisper,
    samples: np.ndarray,
    settings: AudioSettings,
    task: str = "transcribe",
    language: str | None = "en",
    prompt: str = "",
    temperature: float = 0.0,
    word_timestamps: bool = False,
) -> Transcription:
    """A request's transcription as the worker runs it: silences cut (``settings.vad``), the search and the
    conditioning of ``settings``, the user's prompt as the first window's."""
    dims = loaded.model.dims
    tokenizer = loaded.tokenizer(task, language)
    duration = samples.size / SAMPLE_RATE
    timeline = None
    if settings.vad:
        samples, timeline = drop_silence(samples, VadOptions(min_silence_s=settings.vad_min_silence_s))
    return Transcription(
        mel=mel_of(samples, dims.n_mels),
        tokenizer=tokenizer,
        task=task,
        language=language,
        temperature=temperature,
        prompt=tuple(tokenizer.encode(" " + prompt)) if prompt else None,
        word_timestamps=word_timestamps,
        input_stride=3000 // dims.n_audio_ctx,
        search=SearchOptions(beam_size=settings.beam_size, best_of=settings.best_of),
        condition_on_previous_text=settings.condition_on_previous_text,
        timeline=timeline,
        original_duration=duration if timeline is not None else None,
    )


def segment_fields(s: Segment) -> dict[str, object]:
    words = None if s.words is None else [AudioWord(word=w.word, start=w.start, end=w.end) for w in s.words]
    return {
        "id": s.id,
        "seek": s.seek,
        "start": s.start,
        "end": s.end,
        "text": s.text,
        "tokens": s.tokens,
        "temperature": s.temperature,
        "avg_logprob": s.avg_logprob,
        "compression_ratio": s.compression_ratio,
        "no_speech_prob": s.no_speech_prob,
        "words": words,
    }


async def start_model_thread(model_id: str, settings: Settings) -> tuple[LoadedWhisper, AudioEngine]:
    """Load the model and run its engine on one dedicated thread (all model work happens there)."""
    spec = settings.model(model_id)
    path = resolve_weights(spec, settings.cache_dir)

    device = resolve_device(spec.device)

    def load() -> tuple[LoadedWhisper, AudioEngine]:
        torch.set_grad_enabled(False)
        loaded = load_whisper(path, settings.cache_dir, device)
        return loaded, AudioEngine(loaded, EngineConfig(max_batch=spec.max_batch, max_waiting=spec.max_waiting))

    log.info("loading %s from %s on %s", model_id, path, device)
    return await start_engine_thread("ember-audio-model", load)


async def run_audio_worker(
    settings: Settings,
    model_id: str,
    nats_url: str,
    *,
    worker_id: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Load the model, join its queue group and serve until ``stop`` is set, or SIGINT/SIGTERM without one.

    Args:
        settings: the server's settings; ``settings.models[model_id]`` says where the weights are.
        model_id: the model to serve (its job subject's last part).
        nats_url: the NATS server.
        worker_id: a fixed id for this worker (default: a random one).
        stop: set it to stop serving (default: stop on SIGINT/SIGTERM).
    """
    loaded, engine = await start_model_thread(model_id, settings)

    async def handler(nc: NATS) -> AudioJobHandler:
        return AudioJobHandler(model_id, loaded, engine, await BlobStore.open(nc.jetstream()), settings.audio)

    await run_worker(settings, model_id, nats_url, handler, engine.stop, worker_id=worker_id, stop=stop)
