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

Every modality has the same shape, with its own job and reply kinds (all ``StreamReply``: numbered, the last
one finished): ``ImageJob`` -> ``ImageProgress``* ``ImageResult``+, ``AudioJob`` -> ``AudioSegment``*
``AudioResult``, ``SpeechJob`` -> ``SpeechAudio``* ``SpeechResult``, ``FunctionJob`` -> ``FunctionResult``.

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
    """What a worker serves; also the second part of its job subject (``ember.v1.jobs.<modality>.<model>``)."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    # Sentence embeddings (/v1/embeddings).
    EMBED = "embed"
    # Text to speech (/v1/audio/speech).
    SPEECH = "speech"
    # User-registered and built-in functions; the "model" is the function's name.
    FUNCTION = "function"


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


class ToolChoice(BaseModel):
    """OpenAI's ``tool_choice``: ``auto`` (the model decides), ``none``, ``required`` (at least one call), or
    ``function`` (exactly the function ``name``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None


class OutputConstraint(BaseModel):
    """``response_format`` for text: the reply must match it (decoded under a grammar, so it always does).

    ``json_object``: any JSON object; ``json_schema``: the ``json_schema`` field (strict); ``regex``: ``pattern``;
    ``grammar``: ``grammar`` in GBNF or Lark (Fireworks' grammar mode).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["json_object", "json_schema", "regex", "grammar"]
    json_schema: dict[str, Any] | None = None
    pattern: str | None = None
    grammar: str | None = None


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
    # Unix time by which the job must be finished; the worker aborts it then (None: no deadline).
    deadline: float | None = None
    # OpenAI tool objects ({"type": "function", "function": {"name", "description", "parameters"}}), already
    # checked by the gateway. The worker renders them into the prompt in the model's tool format and decodes
    # every call under a grammar, so each call it returns is JSON matching its tool's ``parameters``.
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: ToolChoice = ToolChoice()
    # False: at most one call per reply.
    parallel_tool_calls: bool = True
    # Chat and completions: constrain the whole reply (not with tools).
    response_format: OutputConstraint | None = None


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
    # Prompt tokens whose KV came from the worker's prefix cache (OpenAI's prompt_tokens_details.cached_tokens).
    cached_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StreamReply(_Message):
    """What every modality streams after JobAccepted: numbered replies, the last one with a finished status.

    A job that fails ends with JobFailed instead of a finished reply.
    """

    request_id: str
    # Counts replies per job from 0, so a receiver can tell a gap (a lost or reordered message).
    seq: int = Field(ge=0)
    status: JobStatus = JobStatus.RUNNING
    # Final reply only: milliseconds from the worker receiving the job to this reply (queue + work).
    worker_ms: float | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished


class TextChunk(StreamReply):
    """The text that one engine step produced for a job (tokens of one step are coalesced into one chunk)."""

    kind: Literal["chunk"] = "chunk"
    text: str = ""
    token_ids: list[int] = []
    logprobs: list[TokenLogprob] | None = None
    # Set on the final chunk only.
    usage: Usage | None = None
    # Tool calls as OpenAI streams them: a call's first delta has its index, id, name and arguments "", the
    # next ones more of its arguments. ``text`` never holds tool-call markup.
    tool_calls: list[ToolCallDelta] | None = None
    # Final chunk only, when it is not ``status.finish_reason``: "tool_calls" when the reply ended with calls.
    finish_reason: Literal["tool_calls"] | None = None


class ToolCallDelta(BaseModel):
    """A piece of one tool call (see ``TextChunk.tool_calls``); ``arguments`` pieces concatenate to JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Which call of this reply (0, 1, ... in the order the model made them).
    index: int = Field(ge=0)
    # First delta of a call only: "call_<random>" and the function's name.
    id: str | None = None
    name: str | None = None
    arguments: str = ""


# --- image (ember.runtimes.image) -----------------------------------------------------------------------------


class ImageJob(_Message):
    """Generate ``n`` images from a prompt (or transform ``init_image``: edits and variations)."""

    kind: Literal["image"] = "image"
    request_id: str
    model: str
    prompt: str
    negative_prompt: str | None = None
    n: int = Field(default=1, ge=1)
    # None (both): the model's default size. The worker refuses a size its model does not serve.
    width: int | None = Field(default=None, ge=8)
    height: int | None = Field(default=None, ge=8)
    # None: the model's default.
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    # None: the worker picks one. Image i of the job uses seed + i, so one image can be reproduced alone.
    seed: int | None = None
    output_format: Literal["png", "jpeg"] = "png"
    # Image-to-image: the source image (PNG/JPEG bytes) inline as base64, or as a BlobStore object when big,
    # and how far to move from it (0..1]; None: 0.75.
    init_image: str | None = None
    init_image_object: str | None = None
    strength: float | None = Field(default=None, gt=0.0, le=1.0)
    # Edits: OpenAI's mask (transparent pixels = repaint there), inline or as an object like init_image.
    mask_image: str | None = None
    mask_object: str | None = None
    priority: int = 0
    key_id: str | None = None
    # Unix time by which the job must be finished; the worker aborts it then (None: no deadline).
    deadline: float | None = None
    # Streaming: previews (the step's prediction of the final image) per image, evenly spaced over the steps;
    # 0 (the default, and what older senders mean): none. OpenAI's range.
    partial_images: int = Field(default=0, ge=0, le=3)


class ImagePreview(BaseModel):
    """One image's preview at a denoising step (``ImageJob.partial_images``), encoded like its final image."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Which of the job's n images, and which of its previews (0, 1, ...).
    index: int = Field(ge=0)
    partial_image_index: int = Field(ge=0)
    # As in ImageResult: base64 inline, or the name of a BlobStore object when too big (exactly one is set).
    b64: str | None = None
    object: str | None = None
    width: int
    height: int


class ImageProgress(StreamReply):
    """Denoising step ``step`` of ``steps`` done for the batch this job runs in.

    A job that asked for previews gets one extra ImageProgress per preview, with the step it was taken at.
    """

    kind: Literal["image_progress"] = "image_progress"
    step: int = Field(ge=0)
    steps: int = Field(ge=1)
    preview: ImagePreview | None = None


class ImageResult(StreamReply):
    """One finished image (one message per image keeps each under NATS's payload limit); the last is final."""

    kind: Literal["image_result"] = "image_result"
    index: int = Field(ge=0)
    # The encoded image (PNG or JPEG, as the job asked), base64; or, when too big for one message, the name of
    # a BlobStore object holding the bytes (exactly one of the two is set).
    b64: str | None = None
    object: str | None = None
    # The seed that reproduces this image alone (the job's seed + index).
    seed: int
    width: int
    height: int


# --- audio (ember.runtimes.audio) -----------------------------------------------------------------------------


class AudioJob(_Message):
    """Transcribe (or translate to English) one audio file.

    The worker answers JobAccepted once the file decodes as audio (else JobFailed 400, code "invalid_audio"),
    then AudioSegment* and a final AudioResult. It only reads ``audio_object``: the sender deletes it when done.
    """

    kind: Literal["audio"] = "audio"
    request_id: str
    model: str
    task: Literal["transcribe", "translate"] = "transcribe"
    # The uploaded file: inline (base64) when small, else the name of an object in the JetStream object store.
    audio_b64: str | None = None
    audio_object: str | None = None
    filename: str | None = None
    language: str | None = None
    prompt: str | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    word_timestamps: bool = False
    priority: int = 0
    key_id: str | None = None
    # Unix time by which the job must be finished; the worker aborts it then (None: no deadline).
    deadline: float | None = None


class AudioWord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    word: str
    start: float
    end: float


class AudioSegment(StreamReply):
    """One transcribed segment, sent as soon as its window is decoded."""

    kind: Literal["audio_segment"] = "audio_segment"
    id: int = Field(ge=0)
    # The mel frame (10 ms each) where the window this segment came from starts, as OpenAI's verbose_json has it.
    seek: int = Field(default=0, ge=0)
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text: str
    tokens: list[int] = []
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[AudioWord] | None = None


class AudioResult(StreamReply):
    """The final reply: the whole text, the language, and the audio's length (what the key is charged)."""

    kind: Literal["audio_result"] = "audio_result"
    text: str
    # The language's English name in lower case, as OpenAI's verbose_json has it ("english"); for "translate"
    # jobs the language spoken in the audio (the text is English).
    language: str
    # Seconds of audio; a job cancelled early (FINISHED_ABORTED) still reports the whole file's length.
    duration: float = Field(ge=0)


# --- speech (ember.runtimes.speech) ---------------------------------------------------------------------------


# OpenAI's limit on /v1/audio/speech's input, in characters.
MAX_SPEECH_INPUT = 4096


class SpeechJob(_Message):
    """Speak ``input`` in ``voice``, encoded as ``response_format``.

    The worker answers JobAccepted once the voice and the text check out (else JobFailed 400), then SpeechAudio*
    as each sentence is synthesized and encoded, and a final SpeechResult.
    """

    kind: Literal["speech"] = "speech"
    request_id: str
    model: str
    # OpenAI's limit of 4,096 characters (code points) holds for jobs straight off the bus too.
    input: str = Field(min_length=1, max_length=MAX_SPEECH_INPUT)
    # A voice the model configures, or one of OpenAI's names (alloy, ash, ...) for its default voice.
    voice: str
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    # 1.0 is the voice's own pace; OpenAI's range.
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    priority: int = 0
    key_id: str | None = None
    # Unix time by which the job must be finished; the worker aborts it then (None: no deadline).
    deadline: float | None = None


class SpeechAudio(StreamReply):
    """The next piece of the encoded audio stream; the pieces, concatenated in order, are the whole file.

    Sent as each sentence is encoded, cut to at most ``MAX_SPEECH_CHUNK`` bytes so a message stays well under
    NATS's payload limit.
    """

    kind: Literal["speech_audio"] = "speech_audio"
    # base64 of the encoded bytes (mp3 frames, Ogg pages, ADTS frames, FLAC frames, or WAV / PCM samples).
    audio: str


class SpeechResult(StreamReply):
    """The final reply: what was spoken and how long it lasts (the key is charged the characters)."""

    kind: Literal["speech_result"] = "speech_result"
    characters: int = Field(ge=0)
    # Seconds of audio produced; the sample rate of the stream as encoded.
    seconds: float = Field(ge=0)
    sample_rate: int = Field(ge=1)


# Bytes of encoded audio per SpeechAudio: base64 makes it 4/3 larger, still a third of NATS's default 1 MiB.
MAX_SPEECH_CHUNK = 256 * 1024


# --- embeddings (ember.runtimes.embed) -----------------------------------------------------------------------


class EmbedJob(_Message):
    """Embed a list of inputs, each either a text or token ids of the model's own tokenizer (no special tokens:
    the worker frames them as its tokenizer frames a text).

    The inputs travel inline (``texts`` / ``token_ids``) or, past what fits one message, as a BlobStore object
    holding their JSON list (``inputs_object``).
    """

    kind: Literal["embed"] = "embed"
    request_id: str
    model: str
    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None
    inputs_object: str | None = None
    # Truncate the vectors to this many dimensions (and renormalise); only for models configured to allow it.
    dimensions: int | None = Field(default=None, ge=1)
    priority: int = 0
    key_id: str | None = None
    deadline: float | None = None


class EmbedVectors(StreamReply):
    """Vectors ``start`` .. ``start + count - 1`` of a job, in input order: float32, little-endian, row after row,
    base64. A job's vectors come in several of these, each well under NATS's payload limit."""

    kind: Literal["embed_vectors"] = "embed_vectors"
    start: int = Field(ge=0)
    count: int = Field(ge=1)
    dimensions: int = Field(ge=1)
    data_b64: str


class EmbedResult(StreamReply):
    """The final reply: how many vectors were sent, and the tokens the model read (what the key is charged)."""

    kind: Literal["embed_result"] = "embed_result"
    count: int = Field(ge=0)
    dimensions: int = Field(ge=1)
    prompt_tokens: int = Field(ge=0)


# --- functions (ember.functions) ------------------------------------------------------------------------------


class FunctionJob(_Message):
    """Run one registered function on its input (already validated against the function's input schema)."""

    kind: Literal["function"] = "function"
    request_id: str
    # The function's name; it is also the "model" part of the job subject.
    model: str
    input: dict[str, Any] = {}
    timeout_s: float = Field(default=60.0, gt=0)
    priority: int = 0
    key_id: str | None = None
    # Unix time by which the job must be finished; the worker aborts it then (None: no deadline).
    deadline: float | None = None


class FunctionResult(StreamReply):
    """The function's output (JSON), the final reply."""

    kind: Literal["function_result"] = "function_result"
    output: Any = None


class FunctionInfo(_Message):
    """A served function's declaration; functions workers write one per function to the ``ember_functions`` KV
    bucket at start, and gateways read it to list functions and check inputs before any work is done."""

    kind: Literal["function_info"] = "function_info"
    name: str
    description: str = ""
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] = {}
    # None: the server's functions.default_timeout_s.
    timeout_s: float | None = Field(default=None, gt=0)


def decode_function_info(raw: bytes) -> FunctionInfo:
    return FunctionInfo.model_validate(_load(raw))


class CancelJob(_Message):
    kind: Literal["cancel"] = "cancel"
    request_id: str


class JobProbe(_Message):
    """The gateway asking a job's worker where the job stands (a quiet stream, a gap, a reconnect).

    With ``resend``, the worker publishes again, to the job's reply subject, every reply it still holds from
    position ``next_seq`` on (-1: from the acceptance), so replies lost while the gateway was cut off from NATS
    are recovered instead of waited for.

    With ``release``, the worker gives the job up if it has not started it (accepted, still waiting in its
    engine's queue, nothing sent but the acceptance), so the gateway can send it to a worker with room: one that
    just started while this one's queue is long. The worker answers at once and releases at its engine's next
    step; ``JobState.release`` says how that went, in this answer or a later one.
    """

    kind: Literal["probe"] = "probe"
    request_id: str
    next_seq: int = Field(default=0, ge=-1)
    resend: bool = True
    release: bool = False


# A job's release (see JobProbe.release): not asked, asked and pending, done (the worker dropped the job and will
# send nothing more for it), or refused (it had started).
ReleaseState = Literal["", "pending", "released", "refused"]


class JobState(_Message):
    """A worker's answer to a ``JobProbe``."""

    kind: Literal["job_state"] = "job_state"
    request_id: str
    # False: the worker has no such job (never got it, or finished it long enough ago to forget).
    known: bool
    finished: bool = False
    # Numbered replies sent so far; and whether the replies from ``next_seq`` on were sent again (False when there
    # were none, or when some of them are no longer kept).
    sent: int = Field(default=0, ge=0)
    resent: bool = False
    # Seconds the worker's engine has been inside one step: a stuck engine answers probes but makes no progress.
    stalled_s: float = Field(default=0.0, ge=0)
    release: ReleaseState = ""


# The span of the recent jobs a worker's announced TTFT p90 covers (``WorkerInfo.ttft_p90_s``).
TTFT_WINDOW_S = 10.0


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
    # Announcements arrive at least this often; a worker silent for a few intervals is gone.
    interval_s: float = Field(default=1.0, gt=0)
    # p90 of the time its recent jobs took from arriving to their first output (queue wait + prefill), for the
    # scaler (ember.cli.scaler); None where the runtime does not measure it or no job ended lately.
    ttft_p90_s: float | None = Field(default=None, ge=0)


class ScaleDemand(_Message):
    """A gateway holding a request for a model that no live worker serves (``ember.v1.demand.<modality>.<model>``,
    sent about every second while the request waits): a scaler that manages the model starts a worker."""

    kind: Literal["demand"] = "demand"
    modality: Modality
    model: str


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
    # Characters of text spoken (/v1/audio/speech).
    characters: int = Field(default=0, ge=0)
    duration_ms: float = Field(ge=0)
    # "ok", or the error code the client got (e.g. "rate_limit_exceeded", "worker_lost").
    status: str = "ok"
    # A line of a batch: its batch, and the share of the online price it is charged (batch.price_factor).
    batch_id: str | None = None
    price_factor: float = Field(default=1.0, ge=0, le=1)


def decode_usage(raw: bytes) -> UsageRecord:
    return UsageRecord.model_validate(_load(raw))


# Every job a gateway (or the orchestrator) sends to a worker.
Job = TextJob | ImageJob | AudioJob | SpeechJob | EmbedJob | FunctionJob
_JOB: TypeAdapter[Job] = TypeAdapter(Annotated[Job, Field(discriminator="kind")])

# Everything a worker sends back on a job's reply subject.
Reply = (
    JobAccepted
    | JobFailed
    | TextChunk
    | ImageProgress
    | ImageResult
    | AudioSegment
    | AudioResult
    | SpeechAudio
    | SpeechResult
    | EmbedVectors
    | EmbedResult
    | FunctionResult
)
_REPLY: TypeAdapter[Reply] = TypeAdapter(Annotated[Reply, Field(discriminator="kind")])

# The modality (and so the subject) each job kind travels on.
JOB_MODALITY: dict[str, Modality] = {
    "text": Modality.TEXT,
    "image": Modality.IMAGE,
    "audio": Modality.AUDIO,
    "speech": Modality.SPEECH,
    "embed": Modality.EMBED,
    "function": Modality.FUNCTION,
}


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


def decode_reply(raw: bytes) -> Reply:
    return _REPLY.validate_python(_load(raw))


def decode_job(raw: bytes) -> Job:
    return _JOB.validate_python(_load(raw))


def decode_cancel(raw: bytes) -> CancelJob:
    return CancelJob.model_validate(_load(raw))


def decode_probe(raw: bytes) -> JobProbe:
    return JobProbe.model_validate(_load(raw))


def decode_job_state(raw: bytes) -> JobState:
    return JobState.model_validate(_load(raw))


def decode_worker_info(raw: bytes) -> WorkerInfo:
    return WorkerInfo.model_validate(_load(raw))


def decode_demand(raw: bytes) -> ScaleDemand:
    return ScaleDemand.model_validate(_load(raw))
