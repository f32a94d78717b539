"""What every generation route does first: parse the body, check the model, and find the bus."""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ember.bus.client import JobClient
from ember.bus.messages import Modality
from ember.config import Settings
from ember.gateway.errors import InvalidRequest, NotFound, from_validation
from ember.gateway.state import GatewayState, state

B = TypeVar("B", bound=BaseModel)


def json_depth_exceeds(data: Any, limit: int) -> bool:
    """True if ``data`` nests arrays and objects more than ``limit`` deep (a scalar is depth 0, ``[]`` is 1).

    Iterative, so it cannot overflow the stack whatever the input, and it stops at the first path over the limit.
    """
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth + 1 > limit:
            return True
        stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))
    return False


def parse_json(raw: bytes, max_depth: int) -> Any:
    """A request body as JSON, nested at most ``max_depth`` deep; InvalidRequest (400) for anything else."""
    too_deep = InvalidRequest(
        f"the request body nests JSON arrays and objects more than {max_depth} levels deep", code="invalid_json"
    )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:  # deeper than the parser's own stack allows: far past any limit
        raise too_deep from None
    # Fewer brackets in the whole body than the limit cannot nest past it: most bodies skip the walk (which costs
    # more than the parse for a long array of numbers, as a prompt of token ids is).
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth_exceeds(data, max_depth):
        raise too_deep
    return data


async def parse_body(request: Request, schema: type[B]) -> B:
    data = parse_json(await request.body(), settings(request).gateway.max_json_depth)
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
    return GatewayState.running(state(request).bus, "the job bus")


def settings(request: Request) -> Settings:
    return state(request).settings


def model_modality(request: Request, model: str) -> Modality | None:
    """What ``model`` is, from the config or else from the workers serving it; None for an unknown model."""
    spec = settings(request).models.get(model)
    if spec is not None:
        return spec.modality
    workers = bus(request).registry.models().get(model)
    return workers[0].modality if workers else None


def check_model(request: Request, model: str, modality: Modality) -> None:
    """404 for a model no worker serves and the config does not name; 400 for a model of another modality than
    the route's (an image model on a text route); a known model of the right kind may still 503."""
    known = model_modality(request, model)
    if known is None:
        raise NotFound(f"The model {model!r} does not exist", code="model_not_found", param="model")
    if known != modality:
        raise InvalidRequest(
            f"model {model!r} is {_a(known)} model; {request.url.path} takes {_a(modality)} model",
            code="invalid_model",
            param="model",
        )


def _a(modality: Modality) -> str:
    return f"an {modality}" if modality[0] in "aeiou" else f"a {modality}"


def now() -> int:
    return int(time.time())
