"""The assistant's reply in a (non-streamed) chat completion, with any tool calls."""

from __future__ import annotations

from typing import Literal

from .._models import BaseModel

__all__ = ["ChatCompletionMessage", "ChatCompletionMessageToolCall", "Function", "FunctionCall"]


class Function(BaseModel):
    """The function a tool call invokes."""

    name: str
    # JSON text as the model wrote it: it may be invalid, or not match the schema. Validate before use.
    arguments: str


class ChatCompletionMessageToolCall(BaseModel):
    """A call the model wants made; answer it with a ``{"role": "tool", "tool_call_id": id, ...}`` message."""

    id: str
    type: Literal["function"]
    function: Function


class FunctionCall(BaseModel):
    """Deprecated by OpenAI in favour of ``tool_calls``; kept so old responses parse."""

    name: str
    arguments: str


class ChatCompletionMessage(BaseModel):
    """The message the model generated. It can be appended to ``messages`` as is for the next turn."""

    role: Literal["assistant"]
    # None when the model only called tools.
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    function_call: FunctionCall | None = None
