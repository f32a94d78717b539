"""What every generation route does first: parse the body, check the model, and find the bus."""

from __future__ import annotations

import json
import time
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ember.bus.client import JobClient
from ember.config import Settings
from ember.gateway.errors import InvalidRequest, NotFound, from_validation

B = TypeVar("B", bound=BaseModel)


async def parse_body(request: Request, schema: type[B]) -> B:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    try:
        body = schema.model_validate(data)
    except ValidationError as e:
        raise from_validation(e) from None
    unsupported = getattr(body, "unsupported", lambda: None)()
    if unsupported is not None:
        param, why = unsupported
        raise InvalidRequest(why, code="unsupported_parameter", param=param)
    return body


def bus(request: Request) -> JobClient:
    client: JobClient = request.app.state.bus
    return client


def settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


def check_model(request: Request, model: str) -> None:
    """404 for a model that no worker serves and the config does not name; a configured one may still 503."""
    if model in bus(request).registry.models() or model in settings(request).models:
        return
    raise NotFound(f"The model {model!r} does not exist", code="model_not_found", param="model")


def now() -> int:
    return int(time.time())
