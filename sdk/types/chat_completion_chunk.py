"""One event of ``client.chat.completions.create(stream=True)``."""

from __future__ import annotations

from typing import Literal

from .._models import BaseModel
from .chat_completion import FinishReason
from .chat_completion_token_logprob import ChoiceLogprobs
from .completion_usage import CompletionUsage

__all__ = [
    "ChatCompletionChunk",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "ChoiceDeltaToolCallFunction",
    "ChunkChoice",
]


class ChoiceDeltaToolCallFunction(BaseModel):
    # The name comes once, in the first delta of a call; ``arguments`` arrives in pieces to concatenate.
    name: str | None = None
    arguments: str | None = None


class ChoiceDeltaToolCall(BaseModel):
    """A piece of a tool call. Pieces with the same ``index`` belong to the same call; ``id`` comes first."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChoiceDeltaToolCallFunction | None = None


class ChoiceDeltaFunctionCall(BaseModel):
    """Deprecated by OpenAI in favour of ``tool_calls``."""

    name: str | None = None
    arguments: str | None = None


class ChoiceDelta(BaseModel):
    """What this event adds to the message: append ``content``; ``role`` comes in the first event only."""

    role: Literal["developer", "system", "user", "assistant", "tool"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None
    function_call: ChoiceDeltaFunctionCall | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChoiceDelta
    # None until the choice's last event.
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """A streamed piece of a chat completion; every chunk of one completion has the same ``id`` and ``created``."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    # Empty in the final usage-only chunk sent with ``stream_options={"include_usage": True}``.
    choices: list[ChunkChoice]
    # Set only on that final chunk.
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None
