"""The one thread that owns a runtime's torch work: it loads the model, then runs the engine's loop.

Every runtime keeps all model work on one thread (a second OpenMP team on the same cores halves the speed of
both); the event loop only hands jobs over. Loading happens on that thread too, so a slow load never blocks the
loop, and a failed one surfaces as the awaited exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from ember.runtimes.device_group.slot import current_slot


class Engine(Protocol):
    def run(self) -> None:
        """Serve until stopped (the thread's whole life after loading)."""


L = TypeVar("L")
E = TypeVar("E", bound=Engine)


async def start_engine_thread(name: str, load: Callable[[], tuple[L, E]]) -> tuple[L, E]:
    """Run ``load`` on a new daemon thread that then runs the engine; returns what ``load`` built.

    In a device group (``device_group``) the thread runs inside its runtime's slot: the slot's context variable is
    carried over (a new thread starts with an empty context), its ``engine_context`` holds for the thread's life,
    and it measures what the load took.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[tuple[L, E]] = loop.create_future()
    context = contextvars.copy_context()

    def engine_thread() -> None:
        slot = current_slot.get()
        with slot.engine_context() if slot is not None else contextlib.nullcontext():
            try:
                if slot is not None:
                    slot.loading()
                loaded, engine = load()
                if slot is not None:
                    slot.loaded()
            except BaseException as e:
                loop.call_soon_threadsafe(ready.set_exception, e)
                return
            finally:
                if slot is not None:
                    loop.call_soon_threadsafe(slot.load_done.set)
            loop.call_soon_threadsafe(ready.set_result, (loaded, engine))
            engine.run()

    threading.Thread(target=context.run, args=(engine_thread,), name=name, daemon=True).start()
    return await ready
