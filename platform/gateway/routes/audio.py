"""POST /v1/audio/transcriptions and /v1/audio/translations: OpenAI's multipart upload, Whisper on a worker.

form -> checked fields -> quota (one request + 1 s of audio reserved) -> upload (inline, or BlobStore
past the bus's inline limit) -> AudioJob -> worker accepts (the file decoded) -> segments -> AudioResult
-> audio seconds settled to the real duration -> json | text | srt | vtt | verbose_json, or SSE events
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import anyio
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ember.bus.blobs import BlobStore, inline_limit
from ember.bus.client import JobRefused, JobStream
from ember.bus.errors import BusError
from ember.bus.messages import AudioJob, AudioResult, AudioSegment, JobStatus, Modality, StreamReply
from ember.gateway import audio_formats, lifecycle, sse
from ember.gateway.errors import GatewayError, InvalidRequest, RequestTooLarge
from ember.gateway.quota import Quota
from ember.gateway.routes.common import bus, check_model, settings
from ember.gateway.state import GatewayState, state
from ember.limits.interface import Cost

# OpenAI's limit per uploaded file.
MAX_FILE_BYTES = 25 * 1024 * 1024
# The whole multipart body may add the form's other fields and boundaries to the file.
MAX_BODY_BYTES = MAX_FILE_BYTES + 256 * 1024
PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
# The body limit of the audio routes, for BodyLimitMiddleware's per-path table.
BODY_LIMITS = dict.fromkeys(PATHS, MAX_BODY_BYTES)
_GRANULARITIES = ("word", "segment")


@dataclass(frozen=True)
class AudioRequest:
    """The form's fields, checked."""

    file: UploadFile
    model: str
    task: str
    language: str | None
    prompt: str | None
    temperature: float
    response_format: str
    granularities: frozenset[str]
    stream: bool


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a form field, not a file", code="invalid_value", param=name)
    return value


def _bool(form: FormData, name: str) -> bool:
    value = (_field(form, name) or "false").strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"{name}={value!r} must be true or false", code="invalid_value", param=name)
    return value in ("true", "1")


def parse_form(form: FormData, task: str) -> AudioRequest:
    """The request's fields, each checked as OpenAI checks it; raises InvalidRequest naming the field."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("'file' is required: the audio file, as a multipart file part", param="file")
    model = _field(form, "model")
    if not model:
        raise InvalidRequest("'model' is required", param="model")
    fmt = _field(form, "response_format") or "json"
    if fmt not in audio_formats.RESPONSE_FORMATS:
        allowed = ", ".join(audio_formats.RESPONSE_FORMATS)
        raise InvalidRequest(
            f"response_format={fmt!r} is not one of {allowed}", code="invalid_value", param="response_format"
        )
    raw_temperature = _field(form, "temperature") or "0"
    try:
        temperature = float(raw_temperature)
    except ValueError:
        temperature = math.nan
    if not 0.0 <= temperature <= 1.0:
        raise InvalidRequest(
            f"temperature={raw_temperature!r} must be a number from 0 to 1", code="invalid_value", param="temperature"
        )
    granularities = [g for key in ("timestamp_granularities[]", "timestamp_granularities") for g in form.getlist(key)]
    for g in granularities:
        if g not in _GRANULARITIES:
            raise InvalidRequest(
                f"timestamp_granularities {g!r} is not 'word' or 'segment'",
                code="invalid_value",
                param="timestamp_granularities",
            )
    if granularities and fmt != "verbose_json":
        raise InvalidRequest(
            "timestamp_granularities needs response_format=verbose_json", param="timestamp_granularities"
        )
    language = _field(form, "language") if task == "transcribe" else None
    return AudioRequest(
        file=upload,
        model=model,
        task=task,
        language=language or None,
        prompt=_field(form, "prompt") or None,
        temperature=temperature,
        response_format=fmt,
        granularities=frozenset(str(g) for g in granularities),
        stream=_bool(form, "stream"),
    )


async def read_form(request: Request) -> FormData:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest(
            f"expected a multipart/form-data body, got content-type {content_type or 'none'!r}", code="invalid_body"
        )
    try:
        return await request.form(max_files=1, max_fields=32)
    except HTTPException as e:  # the multipart parser's own complaints (bad boundary, too many parts)
        raise InvalidRequest(f"malformed multipart body: {e.detail}", code="invalid_body") from None


async def read_upload(upload: UploadFile) -> bytes:
    if upload.size is not None and upload.size > MAX_FILE_BYTES:
        raise RequestTooLarge(f"file of {upload.size} bytes exceeds the limit of {MAX_FILE_BYTES} bytes", param="file")
    data = await upload.read()
    if len(data) > MAX_FILE_BYTES:
        raise RequestTooLarge(f"file of {len(data)} bytes exceeds the limit of {MAX_FILE_BYTES} bytes", param="file")
    if not data:
        raise InvalidRequest("the uploaded file is empty", code="invalid_audio", param="file")
    return data


async def admit_audio(quota: Quota) -> None:
    """Hold one second of the key's audio limit (refused when none is left); ``close`` charges the real length."""
    try:
        await quota.admit(Cost(requests=0, audio_seconds=1))
    except GatewayError as e:
        await quota.close(status=e.code or "error")
        raise


async def transcriptions(request: Request) -> Response:
    return await _run(request, "transcribe")


async def translations(request: Request) -> Response:
    return await _run(request, "translate")


async def _run(request: Request, task: str) -> Response:
    form = await read_form(request)
    try:
        return await _serve(request, form, task)
    finally:
        # Shielded: when the client leaves, the handler is cancelled and an unshielded close would be cancelled
        # too, leaving the upload's spooled temporary file open until the collector finds it.
        with anyio.CancelScope(shield=True):
            await form.close()


async def _serve(request: Request, form: FormData, task: str) -> Response:
    body = parse_form(form, task)
    check_model(request, body.model, Modality.AUDIO)
    data = await read_upload(body.file)  # every check of the request itself comes before any quota is spent
    quota = await Quota.open(request, body.model)
    quota.modality = Modality.AUDIO
    await admit_audio(quota)
    request_id: str = request.state.request_id
    blobs: BlobStore | None = None
    object_name: str | None = None
    try:
        if len(data) > inline_limit(bus(request).nc.max_payload):
            blobs = GatewayState.running(state(request).blobs, "the blob store")
            object_name = await blobs.put(data, name=f"audio-{request_id}")
        job = AudioJob(
            request_id=request_id,
            model=body.model,
            task="translate" if task == "translate" else "transcribe",
            audio_b64=None if object_name else base64.b64encode(data).decode(),
            audio_object=object_name,
            filename=body.file.filename,
            language=body.language,
            prompt=body.prompt,
            temperature=body.temperature,
            word_timestamps="word" in body.granularities,
            priority=quota.priority,
            key_id=quota.key.id,
        )
        stream = await bus(request).submit(job, StreamReply)
        try:
            await stream.wait_accepted(settings(request).gateway.accept_timeout_s)
        except Exception as e:
            raise lifecycle.bus_error(e, body.model) from e
    except BaseException as e:  # nothing ran: drop the upload, give back the audio reserve (and a 503's request)
        failure = e if isinstance(e, GatewayError) else None
        with anyio.CancelScope(shield=True):  # see lifecycle.settled
            await _drop(blobs, object_name)
            status = (failure.code or "error") if failure else "error"
            await quota.close(status=status, refund=failure is not None and failure.status == 503)
        raise
    headers = {**lifecycle.worker_header([stream]), **quota.headers()}
    replies = _replies(stream, quota, body.model, blobs, object_name)
    if body.stream:
        return sse.EventStreamResponse(_events(replies), headers)
    segments: list[AudioSegment] = []
    result: AudioResult | None = None
    async with contextlib.aclosing(replies) as parts:
        async for part in parts:
            if isinstance(part, AudioSegment):
                segments.append(part)
            else:
                result = part
    assert result is not None  # _replies ends with the result or raises
    if result.worker_ms is not None:
        headers["x-ember-processing-ms"] = f"{result.worker_ms:.1f}"
    return audio_formats.render(body.response_format, task, segments, result, body.granularities, headers)


async def _drop(blobs: BlobStore | None, name: str | None) -> None:
    if blobs is not None and name is not None:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await blobs.delete(name)


async def _replies(
    stream: JobStream[StreamReply], quota: Quota, model: str, blobs: BlobStore | None, name: str | None
) -> AsyncGenerator[AudioSegment | AudioResult, None]:
    """The job's segments then its result; settles the quota and drops the upload however it ends."""
    duration: float | None = None
    status = "client_closed"
    try:
        async for reply in stream:
            if isinstance(reply, AudioResult):
                duration = reply.duration
                if reply.status == JobStatus.FINISHED_ABORTED:
                    raise lifecycle.aborted_error()
                status = "ok"
                yield reply
                return
            if isinstance(reply, AudioSegment):
                yield reply
        raise lifecycle.aborted_error()  # the stream ended without a result
    except (JobRefused, BusError) as e:
        status = "worker_error"
        raise lifecycle.bus_error(e, model) from e
    except GatewayError as e:
        status = e.code or "error"
        raise
    finally:
        with anyio.CancelScope(shield=True):  # see lifecycle.settled
            await stream.cancel()
            await _drop(blobs, name)
            await quota.close(status=status, audio_seconds=duration or 0.0)


async def _events(replies: AsyncGenerator[AudioSegment | AudioResult, None]) -> AsyncGenerator[bytes, None]:
    """OpenAI's transcription stream: ``transcript.text.delta`` per segment, then ``transcript.text.done``.

    Each delta also carries its segment (id, start, end), an extension OpenAI's clients ignore.
    """
    async with contextlib.aclosing(replies) as parts:
        try:
            async for part in parts:
                if isinstance(part, AudioSegment):
                    segment = {"id": part.id, "start": part.start, "end": part.end, "text": part.text}
                    yield sse.event({"type": "transcript.text.delta", "delta": part.text, "segment": segment})
                else:
                    done = {"type": "transcript.text.done", "text": part.text, "usage": audio_formats.usage(part)}
                    yield sse.event(done)
        except GatewayError as e:
            yield sse.event(e.body())
        yield sse.DONE
