"""``client.embeddings``: vectors for texts or token ids (``POST /embeddings``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from .._resource import AsyncAPIResource, SyncAPIResource, request_options
from .._types import NOT_GIVEN, Body, Headers, NotGiven, Timeout
from ..types.embedding import CreateEmbeddingResponse

__all__ = ["AsyncEmbeddings", "Embeddings"]

EmbeddingInput = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]


def _body(
    model: str,
    input: EmbeddingInput,
    encoding_format: Literal["float", "base64"] | NotGiven,
    dimensions: int | NotGiven,
    user: str | NotGiven,
) -> dict[str, Any]:
    # Any sequence goes (a tuple, a numpy row of ids); JSON needs lists.
    payload = input if isinstance(input, str) else [x if isinstance(x, str | int) else list(x) for x in input]
    body: dict[str, Any] = {"model": model, "input": payload}
    for name, value in (("encoding_format", encoding_format), ("dimensions", dimensions), ("user", user)):
        if not isinstance(value, NotGiven):
            body[name] = value
    return body


class Embeddings(SyncAPIResource):
    def create(
        self,
        *,
        model: str,
        input: EmbeddingInput,
        encoding_format: Literal["float", "base64"] | NotGiven = NOT_GIVEN,
        dimensions: int | NotGiven = NOT_GIVEN,
        user: str | NotGiven = NOT_GIVEN,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> CreateEmbeddingResponse:
        """Embed one input or many.

        Args:
            model: An embeddings model's id, e.g. ``"all-minilm-l6-v2"``.
            input: A text, a list of texts, a list of token ids (one input, in the model's own tokenizer), or a
                list of such lists; at most 2,048 inputs, none empty or longer than the model's limit.
            encoding_format: How the vectors travel: ``"float"`` (JSON numbers) or ``"base64"`` (float32 bytes,
                a quarter of the size); either way the result holds floats.
            dimensions: Shorter vectors, for models trained for it (the server says which).
            user: An end-user id, for the operator's logs.
            extra_headers: Headers to send with this call only.
            extra_body: More JSON fields, sent as they are.
            timeout: This call's timeout, instead of the client's.

        Returns:
            A ``CreateEmbeddingResponse``: ``.data[i].embedding`` is input ``i``'s vector.

        Raises:
            BadRequestError: An input is empty or too long (the message names it), or ``dimensions`` is not
                allowed.
            NotFoundError: The server has no such model.
        """
        return self._client.post(
            "embeddings",
            body=_body(model, input, encoding_format, dimensions, user),
            cast_to=CreateEmbeddingResponse,
            options=request_options(extra_headers, extra_body, timeout),
        )


class AsyncEmbeddings(AsyncAPIResource):
    async def create(
        self,
        *,
        model: str,
        input: EmbeddingInput,
        encoding_format: Literal["float", "base64"] | NotGiven = NOT_GIVEN,
        dimensions: int | NotGiven = NOT_GIVEN,
        user: str | NotGiven = NOT_GIVEN,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> CreateEmbeddingResponse:
        """Embed one input or many; see ``Embeddings.create``."""
        return await self._client.post(
            "embeddings",
            body=_body(model, input, encoding_format, dimensions, user),
            cast_to=CreateEmbeddingResponse,
            options=request_options(extra_headers, extra_body, timeout),
        )
