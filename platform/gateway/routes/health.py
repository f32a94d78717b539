"""/healthz (the process is up) and /readyz (it can serve every configured model, or ``?model=ID`` one of them).

Readiness asks the workers themselves rather than trusting their last announcement: a worker killed a moment
ago still looks alive in the registry for a few seconds, but its ping subject has no responders at once, and a
frozen one (SIGSTOP, a hung event loop) does not answer within the probe timeout. So /readyz turns 503 within
about a second of the last worker of a model dying, and is 200 only once each model has a worker that answers.
Functions are not models: they have their own registry (``GET /v1/functions``) and no say here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ember.bus.client import JobClient
from ember.bus.errors import NoWorkerError
from ember.gateway.errors import NotFound
from ember.gateway.routes.common import bus
from ember.gateway.state import state

# How long a worker may take to answer a readiness ping.
PING_TIMEOUT_S = 0.5


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    client = bus(request)
    expected = state(request).expected_models
    wanted = request.query_params.get("model")
    if wanted is not None and wanted not in expected:
        raise NotFound(f"The model {wanted!r} is not configured on this gateway", code="model_not_found", param="model")
    models = [wanted] if wanted is not None else sorted(expected)
    connected = client.nc.is_connected
    answering = await asyncio.gather(*(_answering(client, m) for m in models)) if connected else [0] * len(models)
    # A model that scales to zero is ready with no worker: a request for it waits for one to start.
    standby = client.cold_start_s.keys()
    per_model: dict[str, Any] = {
        m: {"workers": n, "ready": n > 0 or m in standby} for m, n in zip(models, answering, strict=True)
    }
    ready = connected and all(v["ready"] for v in per_model.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "nats": "connected" if connected else "disconnected",
        "workers": sum(answering),
        "models": per_model,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


async def _answering(client: JobClient, model: str) -> int:
    """How many of the model's announced workers answer a ping now."""
    workers = client.registry.models().get(model, [])

    async def answers(worker_id: str) -> bool:
        try:
            return await client.ping(worker_id, PING_TIMEOUT_S)
        except NoWorkerError:
            return False

    return sum(await asyncio.gather(*(answers(w.worker_id) for w in workers)))
