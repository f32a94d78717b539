"""Tools on the gateway side: checking a request's tools and turning the worker's deltas into OpenAI tool calls.

The worker decodes every call under a grammar (the tool's schema made strict, which only narrows it), so a
complete call that does not parse or does not match its tool's schema is an Ember defect:
``ToolCallAssembler.complete`` checks each one again with ``jsonschema`` against the tool's own schema and raises
a 500 rather than pass a bad call on. A call cut off by max_tokens is returned as it was generated, unchecked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.validators import validator_for

from ember.bus.messages import OutputConstraint, ToolCallDelta, ToolChoice
from ember.gateway.errors import GatewayError, InvalidRequest

# OpenAI's rule for function names.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_MAX_TOOLS = 128


@dataclass
class ToolCall:
    """One complete call: ``arguments`` is the JSON text the model produced (what OpenAI returns)."""

    id: str
    name: str
    arguments: str
    # Cut off by max_tokens before its arguments were complete (then not JSON, and not checked).
    cut: bool = False

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    @property
    def parsed_arguments(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.arguments)
        return value


class ToolCallDefect(GatewayError):
    """The worker returned a call that does not validate: a bug in Ember, never the client's fault."""

    status = 500
    code = "invalid_tool_call"


@dataclass
class ToolCallAssembler:
    """Collects one choice's streamed deltas into whole calls."""

    calls: dict[int, ToolCall] = field(default_factory=dict)

    def add(self, deltas: list[ToolCallDelta]) -> None:
        for d in deltas:
            call = self.calls.get(d.index)
            if call is None:
                call = self.calls[d.index] = ToolCall(id=d.id or "", name=d.name or "", arguments="")
            call.arguments += d.arguments

    def complete(self, tools: tuple[dict[str, Any], ...] | list[dict[str, Any]], finish_reason: str) -> list[ToolCall]:
        """The calls in order once the reply has ended, each checked against its tool's schema (ToolCallDefect when
        one fails); after "length", the last call is marked ``cut`` instead when its arguments are unfinished."""
        calls = [self.calls[i] for i in sorted(self.calls)]
        if calls and finish_reason == "length" and not _is_json(calls[-1].arguments):
            calls[-1].cut = True
        for call in calls:
            if not call.cut:
                validate_call(call, tools)
        return calls


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def validate_call(call: ToolCall, tools: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> None:
    """Raise ToolCallDefect unless ``call`` names one of ``tools`` and its arguments match that tool's schema."""
    schemas = {t["function"]["name"]: parameters(t) for t in tools}
    if call.name not in schemas:
        raise ToolCallDefect(f"the model called {call.name!r}, which is not one of the tools {sorted(schemas)}")
    try:
        args = json.loads(call.arguments)
    except ValueError as e:
        raise ToolCallDefect(f"tool call {call.id} ({call.name}) has arguments that are not JSON: {e}") from None
    try:
        jsonschema.validate(args, schemas[call.name])
    except jsonschema.ValidationError as e:
        raise ToolCallDefect(f"tool call {call.id} ({call.name}) does not match its schema: {e.message}") from None


def parameters(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool's parameters schema (OpenAI: absent means a function without arguments)."""
    params: dict[str, Any] = tool["function"].get("parameters") or {"type": "object", "properties": {}}
    return params


def check_tools(tools: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The request's tools, each checked (a clear 400 naming the tool otherwise), as the job carries them."""
    if len(tools) > _MAX_TOOLS:
        raise InvalidRequest(f"at most {_MAX_TOOLS} tools are allowed, got {len(tools)}", param="tools")
    seen: set[str] = set()
    out = []
    for i, tool in enumerate(tools):
        param = f"tools.{i}"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise InvalidRequest(f"{param} must be {{'type': 'function', 'function': {{...}}}}", param=param)
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise InvalidRequest(
                f"{param}.function.name={name!r} must be 1-64 characters of a-z, A-Z, 0-9, _ and -",
                param=f"{param}.function.name",
            )
        if name in seen:
            raise InvalidRequest(f"the tool name {name!r} appears twice", param=f"{param}.function.name")
        seen.add(name)
        schema = fn.get("parameters")
        if schema is not None:
            check_schema(schema, f"{param}.function.parameters", f"tool {name!r}", require_object=True)
        # OpenAI's strict mode (sent by the openai client's pydantic_function_tool) is how Ember always decodes
        # calls: the grammar is the schema made strict. Only its type is checked, and it is not rendered.
        if not isinstance(fn.get("strict", False), bool | None):
            raise InvalidRequest(f"{param}.function.strict must be a boolean", param=f"{param}.function.strict")
        clean = {"name": name, "parameters": schema or {"type": "object", "properties": {}}}
        if isinstance(fn.get("description"), str):
            clean["description"] = fn["description"]
        out.append({"type": "function", "function": clean})
    return tuple(out)


def check_schema(schema: Any, param: str, what: str, *, require_object: bool) -> None:
    """400 unless ``schema`` is a valid JSON schema that the grammar compiler supports."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{what}: the schema must be a JSON object", param=param)
    if require_object and schema.get("type") != "object":
        raise InvalidRequest(f"{what}: parameters must be a schema of type 'object'", param=param)
    try:
        validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidRequest(f"{what}: invalid JSON schema: {e.message}", param=param) from None
    # Keywords the grammar compiler cannot enforce are found by the worker, which compiles the schema and
    # refuses the job with a 400 naming the same param.


def tool_choice(value: Any, tools: tuple[dict[str, Any], ...]) -> ToolChoice:
    """OpenAI's ``tool_choice`` (a string or {"type": "function", "function": {"name"}}) as the job carries it."""
    names = [t["function"]["name"] for t in tools]
    if value is None:
        return ToolChoice(mode="auto" if tools else "none")
    if value in ("auto", "none", "required"):
        if value == "required" and not tools:
            raise InvalidRequest("tool_choice='required' needs tools", param="tool_choice")
        return ToolChoice(mode=value)
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if name not in names:
            raise InvalidRequest(
                f"tool_choice names the function {name!r}, which is not one of the tools {names}",
                param="tool_choice",
                code="unknown_function",
            )
        return ToolChoice(mode="function", name=name)
    raise InvalidRequest(
        "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}",
        param="tool_choice",
    )


def output_constraint(rf: dict[str, Any]) -> OutputConstraint | None:
    """``response_format`` (OpenAI's, plus the ``regex`` and ``grammar`` extensions), checked; None for text."""
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return OutputConstraint(type="json_object")
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequest(
                "response_format.json_schema must be {'name': ..., 'schema': {...}}", param="response_format"
            )
        schema = spec.get("schema") or {"type": "object"}
        check_schema(schema, "response_format.json_schema.schema", "response_format", require_object=False)
        return OutputConstraint(type="json_schema", json_schema=schema)
    if kind in ("regex", "grammar"):
        text = rf.get(kind) if kind == "grammar" else rf.get("regex", rf.get("pattern"))
        if not isinstance(text, str) or not text:
            raise InvalidRequest(
                f"response_format of type {kind!r} needs a non-empty '{kind}'", param="response_format"
            )
        return (
            OutputConstraint(type=kind, pattern=text) if kind == "regex" else OutputConstraint(type=kind, grammar=text)
        )
    raise InvalidRequest(
        f"response_format type {kind!r} is not one of text, json_object, json_schema, regex, grammar",
        param="response_format.type",
    )
