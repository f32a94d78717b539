"""/healthz (the process is up) and /readyz (it can serve: connected to NATS and at least one worker is alive)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ember.gateway.routes.common import bus


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    client = bus(request)
    workers = client.workers()
    ready = client.nc.is_connected and bool(workers)
    body = {
        "status": "ready" if ready else "not_ready",
        "nats": "connected" if client.nc.is_connected else "disconnected",
        "workers": len(workers),
        "models": sorted({w.model for w in workers}),
    }
    return JSONResponse(body, status_code=200 if ready else 503)
