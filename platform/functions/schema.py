"""JSON-schema checks on the gateway's side: a function's input, and the schemas themselves."""

from __future__ import annotations

from typing import Any

import jsonschema
import jsonschema.exceptions


def check_schema(schema: dict[str, Any]) -> str | None:
    """None for a valid JSON schema (draft 2020-12), else what is wrong with it."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        return f"{e.message} at {where}"
    return None


def input_error(
    instance: Any, schema: dict[str, Any] | jsonschema.Draft202012Validator
) -> tuple[str, str | None] | None:
    """None when ``instance`` matches ``schema`` (or a validator built for it); else (message, JSON path of the
    offending value)."""
    validator = (
        schema if isinstance(schema, jsonschema.Draft202012Validator) else jsonschema.Draft202012Validator(schema)
    )
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    path = ".".join(str(p) for p in error.absolute_path) or None
    return error.message, path
