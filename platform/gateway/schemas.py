"""Request bodies of the OpenAI-compatible API, validated with bounds on every field.

Unknown fields are ignored, as OpenAI does, so that clients sending newer parameters keep working; fields we
know but cannot honour yet are refused with a clear 400 rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ember.bus.messages import SamplingParams

MAX_CHOICES = 8


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | OtherPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> Message:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str | None:
        """The content as plain text; non-text parts are refused here, since text models cannot read them."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if not isinstance(part, TextPart):
                raise ValueError(f"content parts of type {part.type!r} are not supported by text models")
            texts.append(part.text)
        return "".join(texts)


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    """OpenAI's response_format, plus Fireworks-style ``regex`` and ``grammar`` (GBNF or Lark) extensions."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema", "regex", "grammar"]
    json_schema: dict[str, Any] | None = None
    regex: str | None = Field(default=None, max_length=16384)
    grammar: str | None = Field(default=None, max_length=65536)


Stop = Annotated[list[str], Field(max_length=4)]


class _Sampling(_Body):
    """Fields shared by chat and legacy completions."""

    model: str = Field(min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, description="extension: keep the k most likely tokens")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Stop | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    user: str | None = Field(default=None, max_length=256)
    ignore_eos: bool = Field(default=False, description="extension: generate max_tokens tokens whatever comes")
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is not None and any(s == "" for s in ([v] if isinstance(v, str) else v)):
            raise ValueError("stop sequences must not be empty strings")
        return v

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def _sampling(self, max_tokens: int | None, logprobs: bool, top_logprobs: int, choice: int) -> SamplingParams:
        temperature, top_p = self.temperature, self.top_p
        if top_p == 0.0:  # OpenAI accepts 0: only the single most likely token survives
            temperature, top_p = 0.0, None
        seed = None if self.seed is None else (self.seed + choice) % 2**63
        return SamplingParams(
            temperature=temperature,
            top_p=top_p,
            top_k=self.top_k,
            seed=seed,
            max_tokens=max_tokens,
            stop=self.stop_list(),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            ignore_eos=self.ignore_eos,
        )

    def unsupported(self) -> tuple[str, str] | None:
        """(param, why) for a field we know but cannot honour yet."""
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported yet"
        return None


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Extensions for server-executed tools (ember.gateway.orchestrator): the functions the model may call (an
    # allow-list), the most model turns, and a per-turn tool_choice ("auto" | "none" | "required" | a name).
    ember_tools: list[str] | None = Field(default=None, min_length=1, max_length=32)
    ember_max_steps: int | None = Field(default=None, ge=1, le=64)
    ember_tool_plan: list[str] | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def sampling(self, choice: int, max_tokens: int | None) -> SamplingParams:
        return self._sampling(max_tokens, self.logprobs, self.top_logprobs or 0, choice)


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    # Legacy completions default to 16 tokens.
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    # An extension here (OpenAI has it on chat only): the completion must match it.
    response_format: ResponseFormat | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts_not_empty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def unsupported(self) -> tuple[str, str] | None:
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported"
        if self.best_of is not None and self.best_of != self.n:
            return "best_of", "best_of other than n is not supported"
        return super().unsupported()

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling(self, choice: int, max_tokens: int | None) -> SamplingParams:
        return self._sampling(max_tokens, self.logprobs is not None, self.logprobs or 0, choice)
