"""Connecting to NATS the same way everywhere: reconnect forever, name the client, log state changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from nats.aio.client import Client as NATS

log = logging.getLogger("ember.bus")


async def connect(url: str, *, name: str) -> NATS:
    """Connect to NATS; the first connection and every reconnect are retried forever."""
    nc = NATS()

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # a shutdown of our own is not worth a warning
            log.warning("%s: disconnected from NATS; reconnecting", name)

    async def on_reconnect() -> None:
        log.info("%s: reconnected to NATS", name)

    async def on_error(e: Exception) -> None:
        log.warning("%s: NATS error: %s", name, e)

    delay = 0.2
    while True:
        try:
            await nc.connect(
                url,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # typed int, but any sleep() value works
                allow_reconnect=True,
                connect_timeout=5,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
            )
            return nc
        except (OSError, nats.errors.NoServersError, TimeoutError) as e:
            # A worker may start before its NATS does.
            log.warning("%s: cannot reach NATS at %s (%s); retrying in %.1fs", name, url, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def sync(nc: NATS, within_s: float = 10.0) -> None:
    """Return once the server has handled everything ``nc`` sent before, subscriptions included.

    ``nc.flush()`` does not promise that: nats-py writes its PING straight to the socket, ahead of the SUBs
    and PUBs still queued for its flusher task, so the PONG can come back before the server has read them,
    and another connection's publish then still finds no interest ("no responders"). A message that we send
    ourselves travels in that same queue, and the server handles one connection's commands in order: when it
    comes back, every SUB queued before it is in the server's interest graph, for every connection to see.
    """
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(inbox, b"")
        await sub.next_msg(within_s)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
