"""The base of every typed result, and turning a decoded response body into one."""

from __future__ import annotations

from typing import TypeVar

import httpx
import pydantic

from ._exceptions import APIResponseValidationError


class BaseModel(pydantic.BaseModel):
    """A result from the API. Fields the server adds beyond OpenAI's shape are kept as attributes, not refused.

    ``_request_id`` holds the response's ``x-request-id`` header, to quote when reporting a problem.
    """

    model_config = pydantic.ConfigDict(extra="allow")

    _request_id: str | None = pydantic.PrivateAttr(default=None)


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate(cast_to: type[ModelT], data: object, response: httpx.Response) -> ModelT:
    """``data`` (decoded JSON from ``response``) as a ``cast_to``; APIResponseValidationError if it does not fit."""
    try:
        item = cast_to.model_validate(data)
    except pydantic.ValidationError as exc:
        raise APIResponseValidationError(
            response, data, message=f"the response is not a valid {cast_to.__name__}: {exc}"
        ) from exc
    item._request_id = response.headers.get("x-request-id")
    return item
