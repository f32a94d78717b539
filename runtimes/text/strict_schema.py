"""A tool's JSON schema made strict for decoding: no properties it does not name, and every value bounded.

A weak model decoding under a loose schema keeps adding properties the schema never named, or fills one string
or array until max_tokens; under the strict schema every call closes within a bounded number of tokens. Strict
means, as OpenAI's strict mode: ``additionalProperties: false`` on every object schema that does not set
``additionalProperties`` itself; and a cap on every string (length), array (items), number (magnitude and decimals)
and open object (properties) that the schema leaves unbounded.

Every change only narrows the schema, so whatever matches the strict schema matches the original: the gateway
checks calls against the tool's original schema and never sees one it rejects.
"""

from __future__ import annotations

from typing import Any

# Caps for values the schema leaves unbounded. A call that reaches one was looping: real arguments are far shorter.
MAX_STRING_LENGTH = 1024
MAX_ITEMS = 32
MAX_PROPERTIES = 32
# |x| <= 10**15 (16 digits, within a float's exact integers) and at most 9 decimals: a number is at most ~26 tokens.
MAX_MAGNITUDE = 10**15
DECIMAL_STEP = 1e-9

# Keywords whose value is one schema, a list of schemas, or a map of name -> schema.
_ONE = ("items", "additionalItems", "contains", "not", "if", "then", "else", "additionalProperties")
_LIST = ("anyOf", "oneOf", "prefixItems", "items")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def strict_schema(schema: Any) -> Any:
    """``schema`` made strict (see the module docstring); the input is not modified."""
    return _strict(schema, loose=False)


def _strict(schema: Any, *, loose: bool) -> Any:
    """``loose``: the schema is one branch of an ``allOf``, whose other branches may name more properties."""
    if not isinstance(schema, dict):
        return schema  # true / false schemas
    out: dict[str, Any] = dict(schema)
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key], loose=False)
    for key in _LIST:
        if isinstance(out.get(key), list):
            out[key] = [_strict(s, loose=False) for s in out[key]]
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [_strict(s, loose=True) for s in out["allOf"]]
    for key in _MAP:
        if isinstance(out.get(key), dict):
            out[key] = {name: _strict(s, loose=False) for name, s in out[key].items()}
    if "enum" in out or "const" in out:
        return out  # a fixed set of values is bounded already
    types = _types(out)
    if "object" in types:
        if "additionalProperties" not in out and not loose:
            out["additionalProperties"] = False
        if out.get("additionalProperties", True) is not False:
            out.setdefault("maxProperties", MAX_PROPERTIES)
    if "string" in types:
        out.setdefault("maxLength", MAX_STRING_LENGTH)
    if "array" in types:
        out.setdefault("maxItems", MAX_ITEMS)
    if types & {"integer", "number"}:
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -MAX_MAGNITUDE
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = MAX_MAGNITUDE
        if "number" in types and "multipleOf" not in out:
            out["multipleOf"] = DECIMAL_STEP
    return out


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types ``schema`` declares; an untyped schema with ``properties`` is an object schema."""
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return {t for t in declared if isinstance(t, str)}
    return {"object"} if "properties" in schema else set()
