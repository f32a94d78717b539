"""Resource groups, one module each, attached to the clients as attributes: ``client.models``, ``client.chat``...

Adding a group: a module here with a ``SyncAPIResource`` and an ``AsyncAPIResource`` subclass, and one line in
each client's ``__init__`` (``ember._client``). Async methods take ``timeout=`` as httpx's do (the per-phase
httpx timeouts, not an overall deadline), hence their ``noqa: ASYNC109``.
"""

from .batches import AsyncBatches, Batches
from .chat import AsyncChat, AsyncChatCompletions, Chat, ChatCompletions
from .completions import AsyncCompletions, Completions
from .files import AsyncFiles, Files
from .models import AsyncModels, Models

__all__ = [
    "AsyncBatches",
    "AsyncChat",
    "AsyncChatCompletions",
    "AsyncCompletions",
    "AsyncFiles",
    "AsyncModels",
    "Batches",
    "Chat",
    "ChatCompletions",
    "Completions",
    "Files",
    "Models",
]
