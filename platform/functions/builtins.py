"""The built-in functions: the platform's own models as functions, called over the bus like any client would.

    generate_image     ImageJob   -> the PNG (base64), its seed and size
    transcribe_audio   AudioJob   -> the text, its language and the audio's length
    chat               TextJob    -> the reply's text

Each picks the model it is given, else the first live (then configured) model of its modality. The job runs
for the same key and priority as the call; a model's refusal comes back as the call's error, unchanged.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, Field

from ember._functions import FunctionDef, function, function_def
from ember.bus.blobs import BlobNotFound
from ember.bus.client import JobRefused, JobStream
from ember.bus.errors import BusError, NoWorkerError
from ember.bus.messages import (
    AudioJob,
    AudioResult,
    ChatMessage,
    ErrorInfo,
    ImageJob,
    ImageResult,
    Job,
    Modality,
    SamplingParams,
    StreamReply,
    TextChunk,
    TextJob,
)
from ember.functions.context import current
from ember.functions.errors import FunctionFailed, bad_input

R = TypeVar("R", bound=StreamReply)

# Audio bigger than this goes to the worker through the blob store rather than inline in the job.
INLINE_AUDIO_BYTES = 256 * 1024

# Knobs an orchestrated chat's model does not see (ember.gateway.orchestrator): they keep their defaults there,
# so a model cannot pick a slow image size or a model name that does not exist.
OPERATOR_ONLY: dict[str, object] = {"x-ember-model-hidden": True}


def _unavailable(message: str, code: str) -> FunctionFailed:
    return FunctionFailed(ErrorInfo(status=503, type="server_error", code=code, message=message))


def _default_model(modality: Modality) -> str:
    """The first live model of ``modality``, else the first configured one."""
    ctx = current()
    live = sorted(m for m, ws in ctx.bus.registry.models().items() if ws[0].modality == modality)
    configured = sorted(m for m, spec in ctx.settings.models.items() if spec.modality == modality)
    chosen = (live or configured or [None])[0]
    if chosen is None:
        raise _unavailable(f"no {modality.value} model is served or configured", "no_model")
    return chosen


async def _replies(job: Job, reply_type: type[R]) -> list[R]:
    """Run ``job`` to its end; every reply of ``reply_type``. Bus failures raise FunctionFailed."""
    ctx = current()
    try:
        stream: JobStream[StreamReply] = await ctx.bus.submit(job, StreamReply)
    except BusError as e:
        raise _unavailable(f"model {job.model!r}: {e}", "bus_unavailable") from e
    out: list[R] = []
    try:
        await stream.wait_accepted(ctx.settings.gateway.accept_timeout_s)
        async for reply in stream:
            if isinstance(reply, reply_type):
                out.append(reply)
    except JobRefused as e:
        raise FunctionFailed(e.failed.error) from e
    except NoWorkerError as e:
        raise _unavailable(f"no worker is serving model {job.model!r} right now", "no_worker") from e
    except BusError as e:  # lost, stalled, timed out, past its deadline, or NATS away
        raise _unavailable(f"model {job.model!r}: {e}", "worker_lost") from e
    finally:
        await stream.cancel()
    return out


def _job_id(suffix: str) -> str:
    return f"{current().request_id}-{suffix}"


class Image(BaseModel):
    b64_png: str = Field(description="the image, PNG, base64")
    seed: int
    width: int
    height: int


class GeneratedImages(BaseModel):
    model: str
    images: list[Image]


@function(name="generate_image", timeout_s=600)
async def generate_image(
    # 300 characters: about what an image model's text encoder reads (CLIP: 77 tokens).
    prompt: Annotated[str, Field(min_length=1, max_length=300, description="what the picture shows")],
    width: Annotated[int, Field(ge=8, le=2048, json_schema_extra=OPERATOR_ONLY)] = 256,
    height: Annotated[int, Field(ge=8, le=2048, json_schema_extra=OPERATOR_ONLY)] = 256,
    n: Annotated[int, Field(ge=1, le=4, json_schema_extra=OPERATOR_ONLY)] = 1,
    steps: Annotated[int | None, Field(ge=1, le=200, json_schema_extra=OPERATOR_ONLY)] = None,
    seed: Annotated[int | None, Field(json_schema_extra=OPERATOR_ONLY)] = None,
    model: Annotated[str | None, Field(json_schema_extra=OPERATOR_ONLY)] = None,
) -> GeneratedImages:
    """Generate images from a text prompt with an image model."""
    ctx = current()
    model = model or _default_model(Modality.IMAGE)
    job = ImageJob(
        request_id=_job_id("image"),
        model=model,
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        steps=steps,
        seed=seed,
        priority=ctx.priority,
        key_id=ctx.key_id,
    )
    results = await _replies(job, ImageResult)
    images = [Image(b64_png=await _image_b64(r), seed=r.seed, width=r.width, height=r.height) for r in results]
    return GeneratedImages(model=model, images=images)


async def _image_b64(result: ImageResult) -> str:
    """The image inline, also when the worker sent it through the object store (too big for one message)."""
    if result.b64 is not None:
        return result.b64
    blobs = current().blobs
    if result.object is None or blobs is None:
        raise FunctionFailed(ErrorInfo(status=502, type="server_error", message="an image result carried no image"))
    try:
        return base64.b64encode(await blobs.take(result.object)).decode()
    except BlobNotFound:
        message = "a generated image expired before it could be returned"
        raise FunctionFailed(ErrorInfo(status=502, type="server_error", message=message)) from None


def _audio_bytes(audio: str) -> bytes:
    """Base64 audio, bare or as a ``data:`` URL."""
    if audio.startswith("data:"):
        header, sep, audio = audio.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ValueError("a data: URL for audio must be base64 (data:audio/wav;base64,...)")
    try:
        return base64.b64decode(audio, validate=True)
    except binascii.Error as e:
        raise ValueError(f"audio is not valid base64: {e}") from None


class Transcription(BaseModel):
    model: str
    text: str
    language: str
    duration: float = Field(description="the audio's length in seconds")


@function(name="transcribe_audio", timeout_s=600)
async def transcribe_audio(
    audio: Annotated[
        str,
        Field(
            min_length=1,
            description="the audio file (wav, mp3, ...), base64 or a data: URL",
            # In an orchestrated chat the model names an attached clip instead (ember.gateway.orchestrator).
            json_schema_extra={"x-ember-attachment": "audio"},
        ),
    ],
    language: Annotated[str | None, Field(json_schema_extra=OPERATOR_ONLY)] = None,
    task: Annotated[Literal["transcribe", "translate"], Field(json_schema_extra=OPERATOR_ONLY)] = "transcribe",
    filename: Annotated[str | None, Field(json_schema_extra=OPERATOR_ONLY)] = None,
    model: Annotated[str | None, Field(json_schema_extra=OPERATOR_ONLY)] = None,
) -> Transcription:
    """Transcribe speech in an audio file to text (or translate it to English) with a speech model."""
    ctx = current()
    try:
        data = _audio_bytes(audio)
    except ValueError as e:
        raise FunctionFailed(bad_input("transcribe_audio", str(e), "audio")) from None
    if not data:
        raise FunctionFailed(bad_input("transcribe_audio", "audio is empty", "audio"))
    model = model or _default_model(Modality.AUDIO)
    inline: str | None = base64.b64encode(data).decode()
    obj: str | None = None
    if len(data) > INLINE_AUDIO_BYTES and ctx.blobs is not None:
        inline, obj = None, await ctx.blobs.put(data)
    job = AudioJob(
        request_id=_job_id("audio"),
        model=model,
        task=task,
        audio_b64=inline,
        audio_object=obj,
        filename=filename,
        language=language,
        priority=ctx.priority,
        key_id=ctx.key_id,
    )
    try:
        results = await _replies(job, AudioResult)
    finally:
        if obj is not None and ctx.blobs is not None:
            await ctx.blobs.delete(obj)
    if not results:
        raise FunctionFailed(ErrorInfo(status=502, type="server_error", message=f"model {model!r} sent no result"))
    r = results[-1]
    return Transcription(model=model, text=r.text.strip(), language=r.language, duration=r.duration)


class ChatReply(BaseModel):
    model: str
    text: str
    finish_reason: str
    completion_tokens: int


@function(name="chat", timeout_s=600)
async def chat(
    prompt: Annotated[str, Field(min_length=1, description="the user's message")],
    system: Annotated[str | None, Field(json_schema_extra=OPERATOR_ONLY)] = None,
    max_tokens: Annotated[int, Field(ge=1, le=4096, json_schema_extra=OPERATOR_ONLY)] = 256,
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0, json_schema_extra=OPERATOR_ONLY)] = None,
    model: Annotated[str | None, Field(json_schema_extra=OPERATOR_ONLY)] = None,
) -> ChatReply:
    """Ask a language model one question and get its answer."""
    ctx = current()
    model = model or _default_model(Modality.TEXT)
    messages = ([ChatMessage(role="system", content=system)] if system else []) + [
        ChatMessage(role="user", content=prompt)
    ]
    job = TextJob(
        request_id=_job_id("chat"),
        model=model,
        messages=tuple(messages),
        sampling=SamplingParams(max_tokens=max_tokens, temperature=temperature),
        priority=ctx.priority,
        key_id=ctx.key_id,
    )
    chunks = await _replies(job, TextChunk)
    last = chunks[-1] if chunks else None
    finish = (last.status.finish_reason if last else None) or "stop"
    tokens = last.usage.completion_tokens if last and last.usage else 0
    return ChatReply(model=model, text="".join(c.text for c in chunks), finish_reason=finish, completion_tokens=tokens)


def builtin_functions() -> list[FunctionDef]:
    out = []
    for fn in (generate_image, transcribe_audio, chat):
        defn = function_def(fn)
        assert defn is not None
        out.append(defn)
    return out
