from __future__ import annotations

import asyncio
from pathlib import Path

from ember.bus.connection import connect
from ember.bus.nats_server import EmbeddedNats, free_port


async def test_a_client_started_before_nats_connects_when_it_comes_up(tmp_path: Path) -> None:
    port = free_port()
    pending = asyncio.create_task(connect(f"nats://127.0.0.1:{port}", name="early"))
    await asyncio.sleep(0.6)
    assert not pending.done()
    server = EmbeddedNats(port=port, data_dir=tmp_path / "nats")
    await asyncio.to_thread(server.start)
    try:
        nc = await asyncio.wait_for(pending, 15)
        assert nc.is_connected
        await nc.publish("x", b"y")
        await nc.close()
    finally:
        await server.astop()


async def test_clients_reconnect_after_a_nats_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "nats")
    await asyncio.to_thread(server.start)
    nc = await connect(server.url, name="survivor")
    try:
        await server.astop()
        await asyncio.sleep(0.3)
        assert not nc.is_connected
        server = EmbeddedNats(port=server.port, data_dir=tmp_path / "nats")
        await asyncio.to_thread(server.start)
        for _ in range(100):
            if nc.is_connected:
                break
            await asyncio.sleep(0.1)
        assert nc.is_connected
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_echo(msg) -> None:  # type: ignore[no-untyped-def]
            if not reply.done():
                reply.set_result(msg.data)

        await nc.subscribe("echo", cb=on_echo)
        await nc.flush()
        await nc.publish("echo", b"back")
        assert await asyncio.wait_for(reply, 5) == b"back"
    finally:
        await nc.close()
        await server.astop()
