"""GET /v1/models and /v1/models/{id}: the models that live workers serve right now."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ember.bus.messages import WorkerInfo
from ember.gateway.errors import NotFound
from ember.gateway.routes.common import bus


def _model(model_id: str, workers: list[WorkerInfo]) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "ember",
        # Extensions: what serves it and how much it can take.
        "modality": workers[0].modality.value,
        "context_length": workers[0].context_length,
        "workers": len(workers),
    }


async def list_models(request: Request) -> Response:
    live = bus(request).registry.models()
    return JSONResponse({"object": "list", "data": [_model(m, w) for m, w in sorted(live.items())]})


async def retrieve(request: Request) -> Response:
    model_id = request.path_params["model"]
    workers = bus(request).registry.models().get(model_id)
    if not workers:
        raise NotFound(f"The model {model_id!r} does not exist", code="model_not_found", param="model")
    return JSONResponse(_model(model_id, workers))
