"""Run the gateway app under uvicorn."""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette

from ember.config import Settings
from ember.gateway.app import create_app


def uvicorn_config(settings: Settings, app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.gateway.host,
        port=settings.gateway.port,
        log_level="warning",
        # Streams run for minutes, but an idle keep-alive connection need not.
        timeout_keep_alive=30,
        # On SIGTERM / SIGINT: requests in flight get this long to finish, then they are cancelled.
        timeout_graceful_shutdown=settings.gateway.shutdown_timeout_s,
    )


async def run_gateway(settings: Settings, nats_url: str) -> None:
    server = uvicorn.Server(uvicorn_config(settings, create_app(settings, nats_url)))
    print(f"ember gateway: listening on http://{settings.gateway.host}:{settings.gateway.port}/v1", flush=True)
    await server.serve()
