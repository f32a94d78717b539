"""``Ember`` and ``AsyncEmber``: the clients, and the resource groups they carry."""

from __future__ import annotations

import httpx

from ._base_client import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, AsyncAPIClient, SyncAPIClient
from ._types import Headers, Timeout
from .resources.audio import AsyncAudio, Audio
from .resources.batches import AsyncBatches, Batches
from .resources.chat import AsyncChat, Chat
from .resources.completions import AsyncCompletions, Completions
from .resources.embeddings import AsyncEmbeddings, Embeddings
from .resources.files import AsyncFiles, Files
from .resources.functions import AsyncFunctions, Functions
from .resources.images import AsyncImages, Images
from .resources.models import AsyncModels, Models

__all__ = ["AsyncEmber", "Ember"]


class Ember(SyncAPIClient):
    """A blocking client for an Ember server (or any OpenAI-compatible one).

    Args:
        base_url: The API root, e.g. ``"https://ember.example.com/v1"``. Default: ``$EMBER_BASE_URL``, else
            ``http://127.0.0.1:8000/v1``.
        api_key: Sent as ``Authorization: Bearer <key>``. Default: ``$EMBER_API_KEY``; none at all is fine for
            a server that runs without keys.
        timeout: Seconds, or an ``httpx.Timeout`` for each phase; None waits forever. Default: 600 s, 5 s to
            connect.
        max_retries: How many times to retry a connection error, a timeout, a 408/409/429 or a 502/503/504
            (other errors are never retried). Waits follow ``Retry-After`` when the server sends it.
        default_headers: Headers for every request.
        http_client: An ``httpx.Client`` to send requests with (a proxy, custom TLS, a test transport). It
            stays the caller's to close, and its own timeout is not used: ``timeout`` applies.

    Example::

        with Ember() as client:
            reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}])
    """

    models: Models
    chat: Chat
    completions: Completions
    audio: Audio
    images: Images
    embeddings: Embeddings
    functions: Functions
    files: Files
    batches: Batches

    def __init__(
        self,
        *,
        base_url: str | httpx.URL | None = None,
        api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Headers | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            http_client=http_client,
        )
        self.models = Models(self)
        self.chat = Chat(self)
        self.completions = Completions(self)
        self.audio = Audio(self)
        self.images = Images(self)
        self.embeddings = Embeddings(self)
        self.functions = Functions(self)
        self.files = Files(self)
        self.batches = Batches(self)

    def __repr__(self) -> str:
        return f"Ember(base_url={str(self.base_url)!r})"


class AsyncEmber(AsyncAPIClient):
    """An asyncio client for an Ember server: ``Ember`` with ``await``, ``async for`` and ``async with``.

    Takes the same arguments as ``Ember``, with ``http_client`` an ``httpx.AsyncClient``; in tests that can
    be ``httpx.AsyncClient(transport=httpx.ASGITransport(app))`` to call an app in-process.

    Example::

        async with AsyncEmber() as client:
            stream = await client.chat.completions.create(model="smollm2", messages=messages, stream=True)
            async for chunk in stream:
                print(chunk.choices[0].delta.content or "", end="")
    """

    models: AsyncModels
    chat: AsyncChat
    completions: AsyncCompletions
    audio: AsyncAudio
    images: AsyncImages
    embeddings: AsyncEmbeddings
    functions: AsyncFunctions
    files: AsyncFiles
    batches: AsyncBatches

    def __init__(
        self,
        *,
        base_url: str | httpx.URL | None = None,
        api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Headers | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            http_client=http_client,
        )
        self.models = AsyncModels(self)
        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)
        self.audio = AsyncAudio(self)
        self.images = AsyncImages(self)
        self.embeddings = AsyncEmbeddings(self)
        self.functions = AsyncFunctions(self)
        self.files = AsyncFiles(self)
        self.batches = AsyncBatches(self)

    def __repr__(self) -> str:
        return f"AsyncEmber(base_url={str(self.base_url)!r})"
