"""Ending a background task from the task that owns it.

``task.cancel()`` followed by ``with suppress(CancelledError): await task`` is the usual way, and it is wrong
whenever the caller can itself be cancelled while it waits: the suppress cannot tell the task's cancellation
from the caller's, swallows the caller's, and the caller runs on as if nothing had asked it to stop. The key
store's re-watch ended its old watch that way, so a ``stop()`` that cancelled it at that moment waited forever
for a supervisor that had swallowed the cancel and gone back to its loop.

A cancel can also be lost below our code: on Python 3.11, ``asyncio.wait_for`` returns the awaited result when
it arrives in the same loop turn as the cancel (python/cpython#86296, fixed in 3.12), and nats-py waits for every
request's reply that way. A loop that makes requests can so swallow the one cancel it was sent and run on; so
the cancel is sent again for as long as the task runs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("ember.bus")

# How long a cancelled task may run before it is cancelled again. A task that cleans up after its cancel (a
# ``finally`` that awaits) has this long before its clean-up is interrupted too.
RECANCEL_S = 1.0


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (again every ``RECANCEL_S`` while it runs) and return once it has ended.

    A cancellation of the caller still reaches the caller.

    ``asyncio.wait`` never raises what the task raised, so only the caller's own cancellation comes out of it.
    An error the task ended with (not its cancellation) is logged rather than left unretrieved.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=RECANCEL_S)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("task %s ended with %r while being cancelled", task.get_name(), error)
