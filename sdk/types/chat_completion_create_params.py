"""The parameters of ``client.chat.completions.create()``, as TypedDicts: plain dicts in, type-checked.

No ``from __future__ import annotations`` here: on Python 3.11 it would hide ``Required`` from TypedDict, and
``__required_keys__`` (used to check the arguments at run time) would come out empty.
"""

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Required, TypeAlias, TypedDict

__all__ = [
    "ChatCompletionContentPartParam",
    "ChatCompletionCreateParams",
    "ChatCompletionMessageParam",
    "ChatCompletionMessageToolCallParam",
    "ChatCompletionNamedToolChoiceParam",
    "ChatCompletionStreamOptionsParam",
    "ChatCompletionToolChoiceOptionParam",
    "ChatCompletionToolParam",
    "FunctionDefinition",
    "ImageURL",
    "JSONSchema",
    "ResponseFormat",
]


class ImageURL(TypedDict, total=False):
    # An http(s) URL, or a data: URL with base64 image bytes.
    url: Required[str]
    detail: Literal["auto", "low", "high"]


class ChatCompletionContentPartParam(TypedDict, total=False):
    """One part of a multi-part message: ``{"type": "text", "text": ...}`` or ``{"type": "image_url", ...}``."""

    type: Required[Literal["text", "image_url", "input_audio"]]
    text: str
    image_url: ImageURL
    input_audio: Mapping[str, str]


class FunctionCallParam(TypedDict):
    name: str
    # JSON text.
    arguments: str


class ChatCompletionMessageToolCallParam(TypedDict):
    """A tool call made by the assistant in an earlier turn."""

    id: str
    type: Literal["function"]
    function: FunctionCallParam


class ChatCompletionMessageParam(TypedDict, total=False):
    """One turn of the conversation, e.g. ``{"role": "user", "content": "Hello"}``.

    An ``assistant`` turn may carry ``tool_calls`` instead of content; a ``tool`` turn answers one of them and
    names it in ``tool_call_id``.
    """

    role: Required[Literal["system", "developer", "user", "assistant", "tool"]]
    content: str | Iterable[ChatCompletionContentPartParam] | None
    name: str
    tool_calls: Iterable[ChatCompletionMessageToolCallParam]
    tool_call_id: str


class FunctionDefinition(TypedDict, total=False):
    name: Required[str]
    description: str
    # A JSON Schema object for the arguments.
    parameters: Mapping[str, Any]
    strict: bool | None


class ChatCompletionToolParam(TypedDict):
    """A tool the model may call: ``{"type": "function", "function": {"name": ..., "parameters": {...}}}``."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(TypedDict):
    name: str


class ChatCompletionNamedToolChoiceParam(TypedDict):
    """Force one tool: ``{"type": "function", "function": {"name": "get_weather"}}``."""

    type: Literal["function"]
    function: NamedFunction


ChatCompletionToolChoiceOptionParam: TypeAlias = (
    Literal["none", "auto", "required"] | ChatCompletionNamedToolChoiceParam
)


class JSONSchema(TypedDict, total=False):
    name: Required[str]
    description: str
    schema: Mapping[str, Any]
    strict: bool | None


class ResponseFormat(TypedDict, total=False):
    """``{"type": "json_object"}``, or ``{"type": "json_schema", "json_schema": {...}}`` to constrain the output.

    Ember extensions (Fireworks' grammar mode): ``{"type": "regex", "regex": "..."}`` and
    ``{"type": "grammar", "grammar": "<GBNF or Lark>"}``.
    """

    type: Required[Literal["text", "json_object", "json_schema", "regex", "grammar"]]
    json_schema: JSONSchema
    regex: str
    grammar: str


class ChatCompletionStreamOptionsParam(TypedDict, total=False):
    # Send a last chunk with empty ``choices`` and the request's ``usage``.
    include_usage: bool


class ChatCompletionCreateParams(TypedDict, total=False):
    """The body of ``POST /chat/completions`` less ``stream``; see ``ChatCompletions.create`` for each field."""

    model: Required[str]
    messages: Required[Iterable[ChatCompletionMessageParam]]
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    max_completion_tokens: int | None
    stop: str | list[str] | None
    seed: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    logit_bias: Mapping[str, int] | None
    logprobs: bool | None
    top_logprobs: int | None
    n: int | None
    user: str
    tools: Iterable[ChatCompletionToolParam]
    tool_choice: ChatCompletionToolChoiceOptionParam
    parallel_tool_calls: bool
    response_format: ResponseFormat
    stream_options: ChatCompletionStreamOptionsParam | None
