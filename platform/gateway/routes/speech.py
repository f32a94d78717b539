"""POST /v1/audio/speech: OpenAI's text to speech, on a speech worker.

body -> checked fields (and the voice, when this gateway's config has the model) -> quota (one request + the
input's characters) -> SpeechJob -> worker accepts (voice and text check out) -> SpeechAudio* -> SpeechResult

The audio leaves as it is made, whatever the request asked: a chunked body of the format's bytes (OpenAI sends
its files so too, which is what lets playback start early), or with ``stream_format="sse"`` OpenAI's events,
``speech.audio.delta`` with base64 audio and then ``speech.audio.done``. Every refusal comes before the first byte.
A failure after it ends an SSE stream with an error event, and cuts a chunked body off without its last chunk, so
a client sees a broken transfer rather than a short file.

``instructions`` (the style prompt of OpenAI's gpt-4o-mini-tts) is accepted and ignored: a piper voice has no
style to steer, and OpenAI's own tts-1 ignores it too.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from ember.bus.client import JobRefused, JobStream
from ember.bus.errors import BusError
from ember.bus.messages import (
    MAX_SPEECH_INPUT,
    JobStatus,
    Modality,
    SpeechAudio,
    SpeechJob,
    SpeechResult,
    StreamReply,
)
from ember.gateway import lifecycle, sse
from ember.gateway.errors import GatewayError, InvalidRequest
from ember.gateway.quota import Quota
from ember.gateway.routes.common import bus, check_model, parse_body, settings
from ember.limits.interface import Cost

log = logging.getLogger("ember.gateway.speech")

# The content type of each response_format, as OpenAI sends them.
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


class VoiceId(BaseModel):
    """OpenAI's custom-voice reference, ``{"id": "..."}``: here, the name of one of the model's voices."""

    model_config = ConfigDict(extra="ignore")
    id: str


class SpeechBody(BaseModel):
    """The JSON body, in OpenAI's shape; unknown fields are ignored, as on the other routes."""

    model_config = ConfigDict(extra="ignore")
    model: str
    # Checked in check() rather than here: a pydantic error would quote all of a too-long input back.
    input: str
    voice: str | VoiceId
    # Accepted and ignored (see the module docstring).
    instructions: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0, allow_inf_nan=False)
    stream_format: Literal["audio", "sse"] = "audio"

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id


def check(request: Request, body: SpeechBody) -> None:
    """What the body's types do not say: the input's length, and the voice when the model is configured here."""
    if not body.input.strip():
        raise InvalidRequest("input must not be empty", code="invalid_value", param="input")
    if len(body.input) > MAX_SPEECH_INPUT:
        raise InvalidRequest(
            f"input is {len(body.input)} characters; the limit is {MAX_SPEECH_INPUT}",
            code="string_above_max_length",
            param="input",
        )
    spec = settings(request).models.get(body.model)
    if spec is None:  # served by a worker with a config of its own: it checks the voice
        return
    try:
        spec.speaker(body.voice_name)
    except KeyError:
        voices = ", ".join(spec.voice_names())
        raise InvalidRequest(
            f"voice={body.voice_name!r} is not a voice of model {body.model!r}; it has: {voices}",
            code="invalid_voice",
            param="voice",
        ) from None


async def create(request: Request) -> Response:
    body = await parse_body(request, SpeechBody)
    check_model(request, body.model, Modality.SPEECH)
    check(request, body)
    quota = await Quota.open(request, body.model)
    quota.modality = Modality.SPEECH
    characters = len(body.input)
    stream: JobStream[StreamReply] | None = None
    try:
        # The whole input is known now: its characters are charged up front, and given back if no worker takes it.
        await quota.admit(Cost(requests=0, speech_characters=characters))
        job = SpeechJob(
            request_id=request.state.request_id,
            model=body.model,
            input=body.input,
            voice=body.voice_name,
            response_format=body.response_format,
            speed=body.speed,
            priority=quota.priority,
            key_id=quota.key.id,
        )
        try:
            stream = await bus(request).submit(job, StreamReply)
            await stream.wait_accepted(settings(request).gateway.accept_timeout_s)
        except (JobRefused, BusError) as e:
            raise lifecycle.bus_error(e, body.model) from None
    except BaseException as e:  # nothing ran: an OpenAI JSON error, the characters given back
        failure = e if isinstance(e, GatewayError) else None
        status = (failure.code or "error") if failure is not None else "client_closed"
        if stream is not None:
            await lifecycle.settled(stream.cancel())
        await lifecycle.settled(quota.close(status=status, refund=failure is not None and failure.status == 503))
        raise
    run = _Speech(stream, quota, body.model, characters)
    headers = {**lifecycle.worker_header([stream]), **quota.headers()}
    if body.stream_format == "sse":
        return sse.EventStreamResponse(_events(run), headers)
    return sse.EventStreamResponse(_bytes(run), headers, media_type=MEDIA_TYPES[body.response_format])


@dataclass
class _Speech:
    """An accepted speech job, and what to settle however its request ends."""

    stream: JobStream[StreamReply]
    quota: Quota
    model: str
    characters: int
    status: str = "client_closed"
    result: SpeechResult | None = None

    async def audio(self) -> AsyncGenerator[str, None]:
        """The encoded audio (base64), a reply at a time; a failure on the worker or the bus is a GatewayError.

        The job is cancelled and the quota settled however it ends. It was accepted, so its characters are charged
        (the audio's seconds are only recorded: that limit is the transcriptions')."""
        try:
            async for reply in self.stream:
                if reply.status == JobStatus.FINISHED_ABORTED:
                    raise lifecycle.aborted_error()
                if isinstance(reply, SpeechAudio):
                    yield reply.audio
                elif isinstance(reply, SpeechResult):
                    self.result = reply
            self.status = "ok"
        except (JobRefused, BusError) as e:
            self.status = "worker_error"
            raise lifecycle.bus_error(e, self.model) from None
        except GatewayError as e:
            self.status = e.code or "error"
            raise
        finally:
            await lifecycle.settled(self.stream.cancel())
            await lifecycle.settled(self.quota.close(status=self.status, characters=self.characters))


async def _bytes(run: _Speech) -> AsyncGenerator[bytes, None]:
    """The body of a plain (non-SSE) response: the audio file, chunk by chunk."""
    async with contextlib.aclosing(run.audio()) as audio:
        try:
            async for b64 in audio:
                yield base64.b64decode(b64)
        except GatewayError as e:
            # Past the first byte there is no status to send: cutting the body off tells the client it failed.
            log.warning("speech %s failed after its response began: %s", run.stream.request_id, e.message)
            raise


async def _events(run: _Speech) -> AsyncGenerator[bytes, None]:
    """OpenAI's speech stream: ``speech.audio.delta`` per piece of audio, then ``speech.audio.done`` with usage.

    The usage counts characters (what Ember meters; piper has no tokens) as ``input_tokens``, and adds Ember's
    ``characters`` and ``seconds`` of audio.
    """
    async with contextlib.aclosing(run.audio()) as audio:
        try:
            async for b64 in audio:
                yield sse.event({"type": "speech.audio.delta", "audio": b64})
        except GatewayError as e:
            yield sse.event(e.body())
            return
    seconds = run.result.seconds if run.result is not None else 0.0
    usage = {
        "input_tokens": run.characters,
        "output_tokens": 0,
        "total_tokens": run.characters,
        "characters": run.characters,
        "seconds": round(seconds, 3),
    }
    yield sse.event({"type": "speech.audio.done", "usage": usage})
