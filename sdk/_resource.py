"""The base of every resource group (``client.models``, ``client.chat.completions``, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pydantic

from ._base_client import RequestOptions
from ._types import NOT_GIVEN, Body, Headers, NotGiven, Timeout

if TYPE_CHECKING:
    from ._base_client import AsyncAPIClient, SyncAPIClient


class SyncAPIResource:
    """A group of endpoints on ``Ember``; a new group is a subclass plus one attribute on the client."""

    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client


class AsyncAPIResource:
    """A group of endpoints on ``AsyncEmber``."""

    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client


def request_options(
    extra_headers: Headers | None, extra_body: Body | None, timeout: Timeout | NotGiven = NOT_GIVEN
) -> RequestOptions:
    return RequestOptions(extra_headers=extra_headers, extra_body=extra_body, timeout=timeout)


def query_path(path: str, **params: Any) -> str:
    """``path`` with the parameters that are not None as its query string (``files?purpose=batch&limit=2``)."""
    given = {name: value for name, value in params.items() if value is not None}
    return f"{path}?{urlencode(given)}" if given else path


def make_body(method: str, params: Mapping[str, Any], allowed: type[Any], **fixed: Any) -> dict[str, Any]:
    """The JSON body for ``params`` (the keyword arguments of ``method``), checked against the TypedDict ``allowed``.

    Keyword arguments typed ``**params: Unpack[...]`` are not checked by Python itself, so a misspelt
    ``temprature=`` would otherwise go to the server unnoticed; parameters this SDK does not name belong in
    ``extra_body``.
    """
    known: frozenset[str] = allowed.__required_keys__ | allowed.__optional_keys__
    for name in params:
        if name not in known:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r} (pass extensions in extra_body)")
    missing = sorted(allowed.__required_keys__ - params.keys())
    if missing:
        raise TypeError(f"{method}() missing required keyword arguments: {', '.join(missing)}")
    return {**{name: _jsonable(value) for name, value in params.items()}, **fixed}


def _jsonable(value: Any) -> Any:
    """``value`` with iterables made lists and results (a ``ChatCompletionMessage`` sent back) made dicts."""
    if isinstance(value, str | bytes | int | float | bool | None):
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, Iterable):
        return [_jsonable(item) for item in value]
    return value
