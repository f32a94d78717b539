"""Resource groups, one module each, attached to the clients as attributes: ``client.models``, ``client.chat``...

Adding a group: a module here with a ``SyncAPIResource`` and an ``AsyncAPIResource`` subclass, and one line in
each client's ``__init__`` (``ember._client``). Async methods take ``timeout=`` as httpx's do (the per-phase
httpx timeouts, not an overall deadline), hence their ``noqa: ASYNC109``.
"""

from .chat import AsyncChat, AsyncChatCompletions, Chat, ChatCompletions
from .completions import AsyncCompletions, Completions
from .models import AsyncModels, Models

__all__ = [
    "AsyncChat",
    "AsyncChatCompletions",
    "AsyncCompletions",
    "AsyncModels",
    "Chat",
    "ChatCompletions",
    "Completions",
    "Models",
]
