"""``client.completions``: plain text completions (``POST /completions``), whole or streamed."""

from __future__ import annotations

from typing import Literal, Unpack, overload

from .._resource import AsyncAPIResource, SyncAPIResource, make_body, request_options
from .._streaming import AsyncStream, Stream
from .._types import NOT_GIVEN, Body, Headers, NotGiven, Timeout
from ..types.completion import Completion
from ..types.completion_create_params import CompletionCreateParams

__all__ = ["AsyncCompletions", "Completions"]


class Completions(SyncAPIResource):
    @overload
    def create(
        self,
        *,
        stream: Literal[False] = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionCreateParams],
    ) -> Completion: ...

    @overload
    def create(
        self,
        *,
        stream: Literal[True],
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionCreateParams],
    ) -> Stream[Completion]: ...

    @overload
    def create(
        self,
        *,
        stream: bool,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionCreateParams],
    ) -> Completion | Stream[Completion]: ...

    def create(
        self,
        *,
        stream: bool = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[CompletionCreateParams],
    ) -> Completion | Stream[Completion]:
        """Continue a prompt, with no chat template applied.

        Args:
            model: The model's id (see ``client.models.list()``).
            prompt: The text to continue (or token ids; or a list of either for a batch).
            stream: Return a ``Stream`` of ``Completion`` pieces as tokens are generated.
            echo: Return the prompt in front of the generated text.
            logprobs: Return the log probabilities of this many (0 to 5) most likely tokens per position.
            max_tokens: The most tokens to generate.
            temperature, top_p, stop, seed, presence_penalty, frequency_penalty, logit_bias, n, user,
                stream_options: As for ``client.chat.completions.create``.
            best_of: Generate this many and return the ``n`` best.
            suffix: Text that comes after the completion.
            extra_headers: Headers to send with this call only.
            extra_body: Fields merged into the JSON body: for server extensions this SDK does not name.
            timeout: This call's timeout, instead of the client's.

        Returns:
            A ``Completion``, or with ``stream=True`` a ``Stream[Completion]``.

        Raises:
            APIStatusError: The server refused or failed the request (a subclass per status).
            APIConnectionError: The server could not be reached, after the client's retries.
            TypeError: An argument this method does not take, or a missing ``model``/``prompt``.
        """
        body = make_body("completions.create", params, CompletionCreateParams, stream=stream)
        options = request_options(extra_headers, extra_body, timeout)
        if stream:
            return self._client.post_stream("completions", body=body, cast_to=Completion, options=options)
        return self._client.post("completions", body=body, cast_to=Completion, options=options)


class AsyncCompletions(AsyncAPIResource):
    @overload
    async def create(
        self,
        *,
        stream: Literal[False] = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[CompletionCreateParams],
    ) -> Completion: ...

    @overload
    async def create(
        self,
        *,
        stream: Literal[True],
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[CompletionCreateParams],
    ) -> AsyncStream[Completion]: ...

    @overload
    async def create(
        self,
        *,
        stream: bool,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[CompletionCreateParams],
    ) -> Completion | AsyncStream[Completion]: ...

    async def create(
        self,
        *,
        stream: bool = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[CompletionCreateParams],
    ) -> Completion | AsyncStream[Completion]:
        """Continue a prompt, with no chat template applied; see ``Completions.create``.

        Returns:
            A ``Completion``, or with ``stream=True`` an ``AsyncStream[Completion]``.
        """
        body = make_body("completions.create", params, CompletionCreateParams, stream=stream)
        options = request_options(extra_headers, extra_body, timeout)
        if stream:
            return await self._client.post_stream("completions", body=body, cast_to=Completion, options=options)
        return await self._client.post("completions", body=body, cast_to=Completion, options=options)
