"""Connecting to NATS the same way everywhere: reconnect forever, name the client, log state changes."""

from __future__ import annotations

import asyncio
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
