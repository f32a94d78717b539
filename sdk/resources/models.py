"""``client.models``: the models the server offers (``GET /models``, ``GET /models/{id}``)."""

from __future__ import annotations

from urllib.parse import quote

from .._resource import AsyncAPIResource, SyncAPIResource, request_options
from .._types import NOT_GIVEN, Headers, NotGiven, Timeout
from ..types.model import Model, ModelList

__all__ = ["AsyncModels", "Models"]


class Models(SyncAPIResource):
    def list(self, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN) -> ModelList:
        """List the models the server can run now.

        Args:
            extra_headers: Headers to send with this call only.
            timeout: This call's timeout, instead of the client's.

        Returns:
            A ``ModelList``: iterate it, or read ``.data``.
        """
        return self._client.get("models", cast_to=ModelList, options=request_options(extra_headers, None, timeout))

    def retrieve(
        self, model: str, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> Model:
        """Look up one model by id.

        Args:
            model: The model's id, e.g. ``"HuggingFaceTB/SmolLM2-135M-Instruct"``.
            extra_headers: Headers to send with this call only.
            timeout: This call's timeout, instead of the client's.

        Returns:
            The ``Model``.

        Raises:
            NotFoundError: The server has no such model.
        """
        return self._client.get(_path(model), cast_to=Model, options=request_options(extra_headers, None, timeout))


class AsyncModels(AsyncAPIResource):
    async def list(
        self,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> ModelList:
        """List the models the server can run now; see ``Models.list``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.get("models", cast_to=ModelList, options=options)

    async def retrieve(
        self,
        model: str,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> Model:
        """Look up one model by id; see ``Models.retrieve``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.get(_path(model), cast_to=Model, options=options)


def _path(model: str) -> str:
    if not model:
        raise ValueError(f"model={model!r} must be a non-empty model id")
    # Hugging Face ids hold a "/", kept as a path separator: the server matches `/models/{model:path}`.
    return f"models/{quote(model, safe='/')}"
