"""A batch's input file, read and checked line by line before any line runs.

Each line is ``{"custom_id": "...", "method": "POST", "url": "<the batch's endpoint>", "body": {...}}``; the
body is checked with the endpoint's own request schema, so a line that would get a 400 online fails the whole
batch here instead, with its line number (1-based), as OpenAI's validation does. All lines name one model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ember.batches.schemas import BatchError
from ember.gateway.embedding_schemas import EmbeddingsBody
from ember.gateway.schemas import ChatCompletionRequest, CompletionRequest

SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingsBody,
}
# A file with more bad lines than this names only these: the first ones are what its author needs to see.
MAX_ERRORS = 100


@dataclass(frozen=True)
class Line:
    index: int  # 0-based position among the lines (blank lines are skipped and not counted)
    number: int  # 1-based line number in the file, for errors
    custom_id: str
    body: dict[str, Any]


@dataclass
class Parsed:
    lines: list[Line]
    model: str | None
    errors: list[BatchError]


def parse(data: bytes, endpoint: str, max_lines: int, known_model: Callable[[str], bool]) -> Parsed:
    """Every line of ``data``, or the errors that fail the batch (then ``lines`` is not to be run)."""
    errors: list[BatchError] = []
    lines: list[Line] = []
    seen: set[str] = set()
    model: str | None = None

    def error(code: str, message: str, number: int | None, param: str | None = None) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append(BatchError(code=code, message=message, param=param, line=number))

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        error("invalid_file", "the input file is not UTF-8 text", None)
        return Parsed([], None, errors)
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) >= max_lines:
            error("too_many_lines", f"a batch holds at most {max_lines} lines", number)
            break
        line = _line(raw, number, endpoint, error)
        if line is None:
            continue
        if line.custom_id in seen:
            error("duplicate_custom_id", f"custom_id {line.custom_id!r} is on an earlier line", number, "custom_id")
            continue
        seen.add(line.custom_id)
        name = line.body.get("model")
        if not isinstance(name, str) or not known_model(name):
            error("model_not_found", f"the model {name!r} does not exist", number, "body.model")
            continue
        if model is None:
            model = name
        elif name != model:
            error("mismatched_model", f"every line must use one model: {model!r}, not {name!r}", number, "body.model")
            continue
        lines.append(Line(len(lines), number, line.custom_id, line.body))
    if not lines and not errors:
        error("empty_file", "the input file has no lines", None)
    return Parsed(lines, model, errors)


def _line(raw: str, number: int, endpoint: str, error: Callable[..., None]) -> Line | None:
    try:
        item = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        error("invalid_json_line", f"this line is not valid JSON: {e}", number)
        return None
    if not isinstance(item, dict):
        error("invalid_request", "each line must be a JSON object", number)
        return None
    unknown = set(item) - {"custom_id", "method", "url", "body"}
    custom_id, method, url, body = (item.get(k) for k in ("custom_id", "method", "url", "body"))
    if unknown:
        error("invalid_request", f"unknown fields: {', '.join(sorted(unknown))}", number)
    elif not isinstance(custom_id, str) or not custom_id:
        error("missing_required_parameter", "custom_id is required: a non-empty string", number, "custom_id")
    elif method != "POST":
        error("invalid_request", f"method must be 'POST', not {method!r}", number, "method")
    elif url != endpoint:
        error("mismatched_endpoint", f"url {url!r} is not the batch's endpoint {endpoint!r}", number, "url")
    elif not isinstance(body, dict):
        error("invalid_request", "body must be a JSON object: the request's body", number, "body")
    elif body.get("stream"):
        error("invalid_request", "a batch line cannot stream", number, "body.stream")
    else:
        try:
            checked = SCHEMAS[endpoint].model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            error("invalid_request", f"body.{where}: {first['msg']}", number, f"body.{where}")
            return None
        unsupported = getattr(checked, "unsupported", lambda: None)()
        if unsupported is not None:
            param, why = unsupported
            error("unsupported_parameter", why, number, f"body.{param}")
            return None
        assert isinstance(custom_id, str) and isinstance(body, dict)
        return Line(-1, number, custom_id, body)
    return None
