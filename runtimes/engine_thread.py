"""The one thread that owns a runtime's torch work: it loads the model, then runs the engine's loop.

Every runtime keeps all model work on one thread (a second OpenMP team on the same cores halves the speed of
both); the event loop only hands jobs over. Loading happens on that thread too, so a slow load never blocks the
loop, and a failed one surfaces as the awaited exception.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar


class Engine(Protocol):
    def run(self) -> None:
        """Serve until stopped (the thread's whole life after loading)."""


L = TypeVar("L")
E = TypeVar("E", bound=Engine)


async def start_engine_thread(name: str, load: Callable[[], tuple[L, E]]) -> tuple[L, E]:
    """Run ``load`` on a new daemon thread that then runs the engine; returns what ``load`` built."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[tuple[L, E]] = loop.create_future()

    def engine_thread() -> None:
        try:
            loaded, engine = load()
        except BaseException as e:
            loop.call_soon_threadsafe(ready.set_exception, e)
            return
        loop.call_soon_threadsafe(ready.set_result, (loaded, engine))
        engine.run()

    threading.Thread(target=engine_thread, name=name, daemon=True).start()
    return await ready
