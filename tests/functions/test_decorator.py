"""``@ember.function``: schemas from type hints, names, and what it refuses; the loader and the registry."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import pydantic
import pytest
from pydantic import BaseModel, Field

import ember
from ember._functions import function_def
from ember.functions.loader import FunctionModuleError, load_module
from ember.functions.registry import DuplicateFunction, FunctionRegistry, info
from ember.functions.schema import check_schema, input_error


class Point(BaseModel):
    x: float
    y: float


@ember.function
def distance(a: Point, b: Point, scale: Annotated[float, Field(gt=0, description="multiplier")] = 1.0) -> float:
    """Euclidean distance between two points.

    More prose that is not part of the description.
    """
    return scale * ((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5


def test_schema_comes_from_the_signature() -> None:
    d = function_def(distance)
    assert d is not None
    assert d.name == "test_decorator.distance"
    assert d.description == "Euclidean distance between two points."
    schema = d.input_schema()
    assert schema["type"] == "object" and schema["required"] == ["a", "b"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["scale"] == {
        "default": 1.0,
        "description": "multiplier",
        "exclusiveMinimum": 0,
        "title": "Scale",
        "type": "number",
    }
    assert "Point" in schema["$defs"]
    assert d.output_schema() == {"type": "number"}
    assert check_schema(schema) is None
    # The gateway's JSON-schema check and the worker's pydantic check agree.
    good = {"a": {"x": 0, "y": 0}, "b": {"x": 3, "y": 4}}
    assert input_error(good, schema) is None
    assert d.fn(**d.parse_input(good)) == 5.0
    assert input_error({**good, "scale": 0}, schema) is not None
    with pytest.raises(pydantic.ValidationError):
        d.parse_input({**good, "scale": 0})
    msg, path = input_error({"a": {"x": "far", "y": 0}, "b": good["b"]}, schema) or ("", None)
    assert path == "a.x" and "'far' is not of type 'number'" in msg


def test_the_function_stays_a_plain_callable() -> None:
    assert distance(Point(x=0, y=0), Point(x=0, y=2)) == 2.0
    assert function_def(len) is None and function_def("text") is None


def test_options_and_async_functions() -> None:
    @ember.function(name="geo.area", description="Area of a box.", timeout_s=2.5)
    async def area(w: int, h: int) -> int:
        return w * h

    d = function_def(area)
    assert d is not None and d.is_async
    assert (d.name, d.description, d.timeout_s) == ("geo.area", "Area of a box.", 2.5)
    assert info(d).input_schema == d.input_schema()


def test_outputs_are_checked_against_the_return_type() -> None:
    d = function_def(distance)
    assert d is not None
    assert d.dump_output(2) == 2.0
    with pytest.raises(pydantic.ValidationError):
        d.dump_output("far")


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, ".leading", "semi;colon"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        ember.function(name=name)(lambda: None)


def test_parameters_that_cannot_be_json_fields_are_refused() -> None:
    def star(*args: int) -> int:
        return 0

    def kw(**kwargs: int) -> int:
        return 0

    for fn in (star, kw):
        with pytest.raises(TypeError, match="must be a plain or keyword-only one"):
            ember.function(fn)
    with pytest.raises(ValueError, match="timeout_s"):
        ember.function(name="t", timeout_s=0)(lambda: None)


def test_the_loader_finds_a_modules_functions_and_says_what_is_wrong() -> None:
    names = [d.name for d in load_module("tests.helpers.user_functions")]
    assert names[:3] == ["user_functions.lookup_order", "user_functions.add", "user_functions.word_count"]
    with pytest.raises(FunctionModuleError, match="cannot import function module 'no_such_module_xyz'"):
        load_module("no_such_module_xyz")
    with pytest.raises(FunctionModuleError, match="declares no function"):
        load_module("tests.helpers.cluster")


def test_the_registry_refuses_two_functions_under_one_name() -> None:
    registry = FunctionRegistry()
    registry.extend(load_module("tests.helpers.user_functions"))

    @ember.function(name="user_functions.add")
    def other(a: int, b: int) -> int:
        return a - b

    d = function_def(other)
    assert d is not None
    with pytest.raises(DuplicateFunction, match="declared twice"):
        registry.add(d)


def test_the_sdk_stays_light() -> None:
    """Importing ``ember`` (and declaring functions) pulls in none of the server."""
    code = (
        "import sys, ember\n"
        "@ember.function\n"
        "def f(x: int) -> int: return x\n"
        "heavy = [m for m in ('nats', 'starlette', 'jsonschema', 'torch', 'ember.bus', 'ember.functions') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
