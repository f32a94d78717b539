"""The speech worker: takes speech jobs off the bus, synthesizes them a sentence at a time, and streams the encoded
audio back as it is made.

Replies for one job::

    JobAccepted (prompt_tokens=0)    the voice is the model's, the text turned into phonemes, the engine has room
    SpeechAudio (n)                  the encoded stream, in order: each sentence's bytes as soon as it is encoded
    SpeechResult (final)             characters spoken, seconds of audio, the stream's sample rate

Bad input (an unknown voice, nothing to speak) gets JobFailed 400 instead of JobAccepted, so the gateway answers
with an error before it sends a byte. Phonemizing and encoding run on threads off the event loop; the engine
thread only runs the network.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Iterable

from nats.aio.client import Client as NATS
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from ember.bus.messages import (
    MAX_SPEECH_CHUNK,
    ErrorInfo,
    JobStatus,
    Modality,
    SpeechAudio,
    SpeechJob,
    SpeechResult,
)
from ember.bus.worker import JobHandler, ReplySink, internal_error
from ember.config import ModelSpec, Settings
from ember.config.weights import resolve_weights
from ember.runtimes.engine_thread import start_engine_thread
from ember.runtimes.serving import EngineOverloaded, run_worker
from ember.runtimes.speech.encoding import StreamEncoder
from ember.runtimes.speech.engine import (
    Aborted,
    Audio,
    EngineConfig,
    Failed,
    Finished,
    SpeechEngine,
    SpeechRequest,
)
from ember.runtimes.speech.loader import load_voice
from ember.runtimes.speech.model import PiperModel, TextError

log = logging.getLogger("ember.speech.worker")


class RequestError(Exception):
    """A job the worker refuses before running it; carries the error the client sees."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.info = ErrorInfo(status=400, type="invalid_request_error", code=code, message=message, param=param)


class SpeechJobHandler(JobHandler):
    modality = Modality.SPEECH

    def __init__(self, model_id: str, spec: ModelSpec, model: PiperModel, engine: SpeechEngine) -> None:
        self.model = model_id
        self.spec = spec
        self.voice_model = model
        self.engine = engine
        self.max_batch = engine.config.max_batch
        # Jobs being phonemized (not in the engine yet): a cancel is noted here. request id -> cancelled.
        self._preparing: dict[str, bool] = {}

    def load(self) -> tuple[int, int]:
        running, waiting = self.engine.load()
        return running, waiting + len(self._preparing)

    def stalled_s(self) -> float:
        return self.engine.clock.stalled_s()

    def metrics(self) -> Iterable[Metric]:
        yield from super().metrics()
        yield from self.engine.clock.collect()
        yield CounterMetricFamily("ember_speech_pieces", "Pieces (sentences) synthesized.", value=self.engine.steps)
        yield CounterMetricFamily(
            "ember_speech_audio_seconds", "Seconds of audio synthesized.", value=self.engine.audio_seconds
        )

    def cancel(self, request_id: str) -> None:
        if request_id in self._preparing:
            self._preparing[request_id] = True
        else:
            self.engine.abort(request_id)

    def prepare(self, job: SpeechJob, loop: asyncio.AbstractEventLoop) -> SpeechRequest:
        """The job checked and phonemized (on a thread: espeak-ng takes milliseconds per sentence); raises
        RequestError."""
        try:
            speaker = self.spec.speaker(job.voice)
        except KeyError:
            voices = ", ".join(self.spec.voice_names())
            raise RequestError(
                f"voice={job.voice!r} is not a voice of model {self.model!r}; it has: {voices}",
                "invalid_voice",
                "voice",
            ) from None
        try:
            pieces = self.voice_model.pieces(job.input)
        except TextError as e:
            raise RequestError(str(e), "invalid_value", "input") from None
        return SpeechRequest(
            job.request_id,
            pieces,
            self.voice_model.voice_for(speaker, job.speed),
            loop,
            priority=job.priority,
            key=job.key_id or "",
        )

    async def release(self, request_id: str) -> bool:
        return self.engine.withdraw(request_id)

    async def handle(self, job: SpeechJob, sink: ReplySink) -> None:
        self._preparing[job.request_id] = False
        try:
            request = await asyncio.to_thread(self.prepare, job, asyncio.get_running_loop())
        except RequestError as e:
            await sink.failed(e.info)
            return
        except Exception as e:  # never let one input take the worker down
            log.exception("preparing %s failed", job.request_id)
            await sink.failed(internal_error(e))
            return
        finally:
            cancelled = self._preparing.pop(job.request_id)
        if cancelled:  # the client went (or the deadline passed) while the text was phonemized
            await sink.accepted(0)
            rate = StreamEncoder(job.response_format, self.voice_model.sample_rate).sample_rate
            await sink.send(
                SpeechResult, JobStatus.FINISHED_ABORTED, characters=len(job.input), seconds=0.0, sample_rate=rate
            )
            return
        try:
            self.engine.submit(request)
        except EngineOverloaded as e:
            await sink.failed(ErrorInfo(status=503, type="server_error", code="overloaded", message=str(e)))
            return
        await sink.accepted(0)
        encoder = StreamEncoder(job.response_format, self.voice_model.sample_rate)
        try:
            await self._stream(job, request, encoder, sink)
        finally:
            encoder.close()

    async def _stream(self, job: SpeechJob, request: SpeechRequest, encoder: StreamEncoder, sink: ReplySink) -> None:
        result = {"characters": len(job.input), "sample_rate": encoder.sample_rate}
        # aclosing: if sending fails (NATS went away), the request leaves the engine at once.
        async with contextlib.aclosing(self.engine.events(request)) as events:
            async for event in events:
                if isinstance(event, Audio):
                    await send_audio(sink, await asyncio.to_thread(encoder.encode, event.samples))
                elif isinstance(event, Finished):
                    await send_audio(sink, await asyncio.to_thread(encoder.finish))
                    await sink.send(SpeechResult, JobStatus.FINISHED_STOPPED, seconds=event.seconds, **result)
                elif isinstance(event, Aborted):
                    seconds = request.samples / self.voice_model.sample_rate
                    await sink.send(SpeechResult, JobStatus.FINISHED_ABORTED, seconds=seconds, **result)
                elif isinstance(event, Failed):
                    await sink.failed(
                        ErrorInfo(status=500, type="server_error", code="internal_error", message=event.message)
                    )


async def send_audio(sink: ReplySink, data: bytes) -> None:
    """Encoded bytes as SpeechAudio replies of at most MAX_SPEECH_CHUNK bytes each."""
    for start in range(0, len(data), MAX_SPEECH_CHUNK):
        await sink.send(SpeechAudio, audio=base64.b64encode(data[start : start + MAX_SPEECH_CHUNK]).decode())


async def start_model_thread(model_id: str, settings: Settings) -> tuple[PiperModel, SpeechEngine]:
    """Load the voice and run its engine on one dedicated thread (all onnx work happens there)."""
    spec = settings.model(model_id)
    path = resolve_weights(spec, settings.cache_dir)

    def load() -> tuple[PiperModel, SpeechEngine]:
        model = load_voice(path, device=spec.device, threads=spec.threads, voices=spec.voices)
        return model, SpeechEngine(model, EngineConfig(max_batch=spec.max_batch, max_waiting=spec.max_waiting))

    log.info("loading %s from %s", model_id, path)
    return await start_engine_thread("ember-speech-model", load)


async def run_speech_worker(
    settings: Settings,
    model_id: str,
    nats_url: str,
    *,
    worker_id: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Load the voice, join its queue group and serve until ``stop`` is set, or SIGINT/SIGTERM without one.

    Args:
        settings: the server's settings; ``settings.models[model_id]`` says where the voice is and its voices.
        model_id: the model to serve (its job subject's last part).
        nats_url: the NATS server.
        worker_id: a fixed id for this worker (default: a random one).
        stop: set it to stop serving (default: stop on SIGINT/SIGTERM).
    """
    model, engine = await start_model_thread(model_id, settings)
    spec = settings.model(model_id)

    async def handler(nc: NATS) -> SpeechJobHandler:
        return SpeechJobHandler(model_id, spec, model, engine)

    await run_worker(settings, model_id, nats_url, handler, engine.stop, worker_id=worker_id, stop=stop)
