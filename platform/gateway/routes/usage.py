"""GET /v1/usage (admin): totals per key and model from the usage stream. ``?key_id=`` and ``?since=`` filter."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ember.config import ConfigError
from ember.gateway.errors import InvalidRequest, ServiceUnavailable
from ember.gateway.routes.admin import require_admin
from ember.gateway.state import state
from ember.usage import stream
from ember.usage.stream import parse_since


async def summary(request: Request) -> Response:
    require_admin(request)
    js = state(request).js
    if js is None:
        raise ServiceUnavailable("usage is not recorded by this gateway", code="usage_unavailable")
    try:
        since = parse_since(request.query_params.get("since"))
    except ConfigError as e:
        raise InvalidRequest(str(e), code="invalid_value", param="since") from None
    totals = await stream.summarize(js, key_id=request.query_params.get("key_id"), since=since)
    return JSONResponse({"object": "list", "data": [t.as_dict() for t in totals]})
