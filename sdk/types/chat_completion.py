"""The result of ``client.chat.completions.create()`` without streaming."""

from __future__ import annotations

from typing import Literal, TypeAlias

from .._models import BaseModel
from .chat_completion_message import ChatCompletionMessage
from .chat_completion_token_logprob import ChoiceLogprobs
from .completion_usage import CompletionUsage

__all__ = ["ChatCompletion", "Choice", "FinishReason"]

# Why generation stopped: OpenAI's values, plus Ember's "abort" (the job was cancelled) and "error" (the worker
# failed it), from ``ember.bus.messages.JobStatus.finish_reason``.
FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter", "function_call", "abort", "error"]


class Choice(BaseModel):
    """One of the ``n`` completions generated for the request."""

    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    """A chat completion: ``choices[0].message.content`` is the reply."""

    id: str
    object: Literal["chat.completion"]
    # Unix time (seconds) the completion was created.
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None
