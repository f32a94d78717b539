"""``client.chat.completions``: chat completions (``POST /chat/completions``), whole or streamed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Unpack, overload

from .._resource import AsyncAPIResource, SyncAPIResource, make_body, request_options
from .._streaming import AsyncStream, Stream
from .._types import NOT_GIVEN, Body, Headers, NotGiven, Timeout
from ..types.chat_completion import ChatCompletion
from ..types.chat_completion_chunk import ChatCompletionChunk
from ..types.chat_completion_create_params import ChatCompletionCreateParams

if TYPE_CHECKING:
    from .._base_client import AsyncAPIClient, SyncAPIClient

__all__ = ["AsyncChat", "AsyncChatCompletions", "Chat", "ChatCompletions"]


class ChatCompletions(SyncAPIResource):
    @overload
    def create(
        self,
        *,
        stream: Literal[False] = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        stream: Literal[True],
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionCreateParams],
    ) -> Stream[ChatCompletionChunk]: ...

    @overload
    def create(
        self,
        *,
        stream: bool,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion | Stream[ChatCompletionChunk]: ...

    def create(
        self,
        *,
        stream: bool = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """Generate the next assistant message for a conversation.

        Args:
            model: The model's id (see ``client.models.list()``).
            messages: The conversation so far, e.g. ``[{"role": "user", "content": "Hello"}]``.
            stream: Return a ``Stream`` of ``ChatCompletionChunk`` as tokens are generated, instead of waiting
                for the whole ``ChatCompletion``.
            temperature: Sampling temperature in [0, 2]; 0 always picks the most likely token.
            top_p: Sample only from the smallest set of tokens whose probabilities add up to ``top_p``.
            max_tokens, max_completion_tokens: The most tokens to generate (``max_completion_tokens`` is
                OpenAI's newer name for the same limit).
            stop: Up to 4 strings that end generation when produced; they are not returned.
            seed: Makes sampling repeatable: the same seed and request give the same tokens.
            presence_penalty, frequency_penalty: In [-2, 2]; positive values discourage tokens that have
                already appeared (at all, or in proportion to how often).
            logit_bias: Token id (as a string) to a bias in [-100, 100] added to its logit.
            logprobs: Return the log probability of each generated token.
            top_logprobs: With ``logprobs``, also return the this many (0 to 20) most likely tokens per position.
            n: How many choices to generate.
            user: An id for the end user, for the server's logs and rate limits.
            tools: Functions the model may call, as OpenAI tool definitions.
            tool_choice: ``"none"``, ``"auto"``, ``"required"``, or one named tool to force.
            parallel_tool_calls: Whether the model may call several tools in one turn.
            response_format: ``{"type": "json_object"}`` or a ``json_schema`` to constrain the output.
            stream_options: With ``stream=True``: ``{"include_usage": True}`` adds a final usage chunk.
            extra_headers: Headers to send with this call only.
            extra_body: Fields merged into the JSON body: for server extensions this SDK does not name.
            timeout: This call's timeout, instead of the client's.

        Returns:
            A ``ChatCompletion``, or with ``stream=True`` a ``Stream[ChatCompletionChunk]``.

        Raises:
            APIStatusError: The server refused or failed the request (a subclass per status).
            APIConnectionError: The server could not be reached, after the client's retries.
            TypeError: An argument this method does not take, or a missing ``model``/``messages``.
        """
        body = make_body("chat.completions.create", params, ChatCompletionCreateParams, stream=stream)
        options = request_options(extra_headers, extra_body, timeout)
        if stream:
            return self._client.post_stream("chat/completions", body=body, cast_to=ChatCompletionChunk, options=options)
        return self._client.post("chat/completions", body=body, cast_to=ChatCompletion, options=options)


class AsyncChatCompletions(AsyncAPIResource):
    @overload
    async def create(
        self,
        *,
        stream: Literal[False] = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        stream: Literal[True],
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ChatCompletionCreateParams],
    ) -> AsyncStream[ChatCompletionChunk]: ...

    @overload
    async def create(
        self,
        *,
        stream: bool,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]: ...

    async def create(
        self,
        *,
        stream: bool = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        """Generate the next assistant message for a conversation; see ``ChatCompletions.create``.

        Returns:
            A ``ChatCompletion``, or with ``stream=True`` an ``AsyncStream[ChatCompletionChunk]``.
        """
        body = make_body("chat.completions.create", params, ChatCompletionCreateParams, stream=stream)
        options = request_options(extra_headers, extra_body, timeout)
        if stream:
            return await self._client.post_stream(
                "chat/completions", body=body, cast_to=ChatCompletionChunk, options=options
            )
        return await self._client.post("chat/completions", body=body, cast_to=ChatCompletion, options=options)


class Chat(SyncAPIResource):
    """``client.chat``: holds ``completions``, as in openai-python."""

    def __init__(self, client: SyncAPIClient) -> None:
        super().__init__(client)
        self.completions = ChatCompletions(client)


class AsyncChat(AsyncAPIResource):
    """``client.chat`` on ``AsyncEmber``."""

    def __init__(self, client: AsyncAPIClient) -> None:
        super().__init__(client)
        self.completions = AsyncChatCompletions(client)
