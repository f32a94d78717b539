"""The Ember SDK: a typed Python client for Ember's OpenAI-compatible API.

    import ember

    client = ember.Ember(base_url="http://127.0.0.1:8000/v1")  # or $EMBER_BASE_URL; api_key= or $EMBER_API_KEY
    for model in client.models.list():
        print(model.id)

    reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hello"}])
    print(reply.choices[0].message.content)

    with client.chat.completions.create(model="smollm2", messages=[...], stream=True) as stream:
        for chunk in stream:
            print(chunk.choices[0].delta.content or "", end="")

``ember.AsyncEmber`` is the same with ``await``. Failures raise ``ember.APIError`` subclasses (see
``ember._exceptions`` for the tree). Only httpx and pydantic are needed: the server lives in ``ember[server]``.
"""

from . import types
from ._base_client import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ._client import AsyncEmber, Ember
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    EmberError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from ._functions import function
from ._streaming import AsyncStream, ServerSentEvent, Stream
from ._version import __version__

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncEmber",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "Ember",
    "EmberError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServerSentEvent",
    "ServiceUnavailableError",
    "Stream",
    "UnprocessableEntityError",
    "__version__",
    "function",
    "types",
]
