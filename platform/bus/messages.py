"""Every message that crosses a process boundary, in one place: the whole wire contract.

A job's life on the bus, as the gateway sees it::

    gateway                                   worker (queue group per model)
      | -- TextJob ---------------------------> |   on ember.v1.jobs.text.<model>, reply=<gateway inbox>
      | <-------------------- JobAccepted ------ |   after validation: prompt tokens counted, worker id
      | <-------------------- TextChunk (n) ---- |   one per engine step that produced output for this job
      | <-------------------- TextChunk (final)  |   status.finished, finish_reason, usage
      |
      | -- CancelJob -------------------------> |   on ember.v1.worker.<id>.cancel when the client goes away
      | -- Ping ------------------------------> |   on ember.v1.worker.<id>.ping when a stream goes quiet

A job that fails gets ``JobFailed`` as its last message: instead of ``JobAccepted`` when it is refused, or
after some chunks when it fails while running. Every message carries
``v`` (the wire version); a receiver refuses a version it does not know rather than guess.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

WIRE_VERSION = 1


class JobStatus(enum.IntEnum):
    """Where a job is. Finished states sort after the running ones: ``status >= FINISHED_STOPPED``."""

    QUEUED = 0
    RUNNING = 1
    FINISHED_STOPPED = 10  # EOS or a stop string
    FINISHED_LENGTH = 11  # max_tokens or the context ran out
    FINISHED_ABORTED = 12  # cancelled by the gateway (client went away)
    FINISHED_ERROR = 13  # the worker failed this job; ``error`` says why

    @property
    def finished(self) -> bool:
        return self >= JobStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI ``finish_reason`` for a finished status."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    JobStatus.FINISHED_STOPPED: "stop",
    JobStatus.FINISHED_LENGTH: "length",
    JobStatus.FINISHED_ABORTED: "abort",
    JobStatus.FINISHED_ERROR: "error",
}


class Modality(enum.StrEnum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: int = WIRE_VERSION


class ErrorInfo(BaseModel):
    """A failure as the gateway will show it: the HTTP status plus OpenAI's error fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    status: int = Field(ge=400, le=599)
    type: str
    code: str | None = None
    message: str
    param: str | None = None


class SamplingParams(BaseModel):
    """How to pick tokens; the gateway has already checked each field against OpenAI's bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # None: the model's default (its config, then its generation_config.json, then OpenAI's 1.0); the worker
    # resolves these three before the engine sees them. 0 means greedy.
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # 0 means no top-k cut (an extension; OpenAI has no top_k).
    top_k: int | None = Field(default=None, ge=0)
    # None: the worker picks a fresh seed. Same seed + same batch-independent path -> same tokens.
    seed: int | None = None
    # None: until EOS or the context is full.
    max_tokens: int | None = Field(default=None, ge=1)
    stop: tuple[str, ...] = ()
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    # Return the chosen token's logprob, and this many alternatives (0..20) per position.
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)
    # Do not stop at EOS (benchmarks use this to produce a fixed number of tokens).
    ignore_eos: bool = False

    def with_defaults(self, defaults: SamplingDefaults) -> SamplingParams:
        """These params with every unset field taken from ``defaults``."""
        return self.model_copy(
            update={
                "temperature": defaults.temperature if self.temperature is None else self.temperature,
                "top_p": defaults.top_p if self.top_p is None else self.top_p,
                "top_k": defaults.top_k if self.top_k is None else self.top_k,
            }
        )


class SamplingDefaults(BaseModel):
    """What a model samples with when a request leaves these unset (OpenAI's defaults unless configured)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)


class ChatMessage(BaseModel):
    """One chat turn as the chat template sees it; content parts are already flattened to text."""

    model_config = ConfigDict(extra="allow", frozen=True)
    role: str
    content: str | None = None
    name: str | None = None


class TextJob(_Message):
    """Generate text: from chat ``messages`` (rendered with the model's chat template) or a raw ``prompt``."""

    kind: Literal["text"] = "text"
    request_id: str
    model: str
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    sampling: SamplingParams = SamplingParams()
    # Higher runs first when the worker is saturated (tiers map onto this).
    priority: int = 0
    # The API key it runs for; workers share their slots fairly between keys of one priority.
    key_id: str | None = None


class JobAccepted(_Message):
    """A worker took the job and validated it; the gateway may now start its HTTP response."""

    kind: Literal["accepted"] = "accepted"
    request_id: str
    worker_id: str
    prompt_tokens: int = Field(ge=0)
    # The most tokens the job may generate (its max_tokens, or what the context leaves); the gateway
    # reserves this much of the key's token limit until the real count is known.
    max_tokens: int | None = Field(default=None, ge=0)


class JobFailed(_Message):
    """The job was refused or failed; this is the last message for it."""

    kind: Literal["failed"] = "failed"
    request_id: str
    worker_id: str | None = None
    error: ErrorInfo


class TokenLogprob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[dict[str, Any]] = []


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TextChunk(_Message):
    """The text that one engine step produced for a job (tokens of one step are coalesced into one chunk)."""

    kind: Literal["chunk"] = "chunk"
    request_id: str
    # Counts chunks per job from 0, so a receiver can tell a gap (a lost or reordered message).
    seq: int = Field(ge=0)
    text: str = ""
    token_ids: list[int] = []
    logprobs: list[TokenLogprob] | None = None
    status: JobStatus = JobStatus.RUNNING
    # Set on the final chunk only. A job that fails ends with JobFailed instead of a final chunk.
    usage: Usage | None = None
    # Final chunk only: milliseconds from the worker receiving the job to this chunk (queue + prefill + decode).
    worker_ms: float | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished


class CancelJob(_Message):
    kind: Literal["cancel"] = "cancel"
    request_id: str


class WorkerInfo(_Message):
    """A worker announcing itself: on start, every few seconds after, and (``leaving``) when it stops."""

    kind: Literal["worker"] = "worker"
    worker_id: str
    modality: Modality
    model: str
    # Tokens the model can attend to; the gateway uses it for /v1/models.
    context_length: int | None = None
    max_batch: int = Field(ge=1)
    running: int = Field(default=0, ge=0)
    waiting: int = Field(default=0, ge=0)
    leaving: bool = False
    # Announcements arrive at least this often; a worker silent for 3 intervals is gone.
    interval_s: float = Field(default=2.0, gt=0)


class UsageRecord(_Message):
    """What one finished request used; the gateway writes one per request to the usage stream."""

    kind: Literal["usage"] = "usage"
    request_id: str
    key_id: str
    model: str
    modality: Modality
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    images: int = Field(default=0, ge=0)
    audio_seconds: float = Field(default=0.0, ge=0)
    duration_ms: float = Field(ge=0)
    # "ok", or the error code the client got (e.g. "rate_limit_exceeded", "worker_lost").
    status: str = "ok"


def decode_usage(raw: bytes) -> UsageRecord:
    return UsageRecord.model_validate(_load(raw))


# Everything a worker sends back on a job's reply subject.
JobReply = Annotated[JobAccepted | JobFailed | TextChunk, Field(discriminator="kind")]
_REPLY: TypeAdapter[JobAccepted | JobFailed | TextChunk] = TypeAdapter(JobReply)
_JOB: TypeAdapter[TextJob] = TypeAdapter(TextJob)


class WireVersionError(ValueError):
    """A message from a newer (or older) Ember than this process understands."""


def encode(msg: _Message) -> bytes:
    return msg.model_dump_json().encode()


def _load(raw: bytes) -> dict[str, Any]:
    obj = json.loads(raw)
    if not isinstance(obj, dict) or obj.get("v") != WIRE_VERSION:
        got = obj.get("v") if isinstance(obj, dict) else type(obj).__name__
        raise WireVersionError(f"expected wire version {WIRE_VERSION}, got {got!r}")
    return obj


def decode_reply(raw: bytes) -> JobAccepted | JobFailed | TextChunk:
    return _REPLY.validate_python(_load(raw))


def decode_job(raw: bytes) -> TextJob:
    return _JOB.validate_python(_load(raw))


def decode_cancel(raw: bytes) -> CancelJob:
    return CancelJob.model_validate(_load(raw))


def decode_worker_info(raw: bytes) -> WorkerInfo:
    return WorkerInfo.model_validate(_load(raw))
