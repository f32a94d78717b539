"""Tool schemas made strict for decoding: closed objects, bounded values, and never wider than the original."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import jsonschema
import llguidance
import openai
import pydantic
from tokenizers import Tokenizer

from ember.runtimes.text.grammar import GrammarCompiler, with_style
from ember.runtimes.text.strict_schema import (
    DECIMAL_STEP,
    MAX_ITEMS,
    MAX_MAGNITUDE,
    MAX_PROPERTIES,
    MAX_STRING_LENGTH,
    strict_schema,
)
from ember.runtimes.text.tokenizer import TextTokenizer
from tests.helpers.tiny_checkpoint import tiny_tokenizer_json

NESTED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string", "maxLength": 3}}}},
        "where": {"anyOf": [{"$ref": "#/$defs/Point"}, {"type": "null"}]},
        "extra": {"type": "object", "additionalProperties": {"type": "integer"}},
        "free": {"type": "object", "additionalProperties": True},
        "unit": {"enum": ["c", "f"]},
        "n": {"type": "integer", "minimum": 0},
        "x": {"type": ["number", "null"], "exclusiveMaximum": 5},
    },
    "required": ["city"],
    "$defs": {"Point": {"properties": {"lat": {"type": "number", "multipleOf": 0.5}}}},
}


def test_every_object_is_closed_unless_it_says_otherwise() -> None:
    s = strict_schema(NESTED)
    assert s["additionalProperties"] is False
    assert s["properties"]["tags"]["items"]["additionalProperties"] is False
    assert s["$defs"]["Point"]["additionalProperties"] is False  # untyped, but it has properties
    assert s["properties"]["extra"]["additionalProperties"] == {
        "type": "integer",
        "minimum": -MAX_MAGNITUDE,
        "maximum": MAX_MAGNITUDE,
    }
    assert s["properties"]["free"]["additionalProperties"] is True
    assert s["properties"]["extra"]["maxProperties"] == s["properties"]["free"]["maxProperties"] == MAX_PROPERTIES


def test_unbounded_values_get_caps_and_bounded_ones_keep_theirs() -> None:
    s = strict_schema(NESTED)
    props = s["properties"]
    assert props["city"]["maxLength"] == MAX_STRING_LENGTH
    assert props["tags"]["maxItems"] == MAX_ITEMS and props["tags"]["items"]["properties"]["k"]["maxLength"] == 3
    assert props["unit"] == {"enum": ["c", "f"]}
    assert props["n"] == {"type": "integer", "minimum": 0, "maximum": MAX_MAGNITUDE}
    assert props["x"] == {
        "type": ["number", "null"],
        "exclusiveMaximum": 5,
        "minimum": -MAX_MAGNITUDE,
        "multipleOf": DECIMAL_STEP,
    }
    assert s["$defs"]["Point"]["properties"]["lat"]["multipleOf"] == 0.5


def test_the_original_is_not_modified() -> None:
    before = copy.deepcopy(NESTED)
    strict_schema(NESTED)
    assert before == NESTED


def test_all_of_branches_stay_open_to_each_other() -> None:
    schema = {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"properties": {"b": {}}}]}
    s = strict_schema(schema)
    assert all("additionalProperties" not in branch for branch in s["allOf"])
    assert s["allOf"][0]["properties"]["a"]["maxLength"] == MAX_STRING_LENGTH


@functools.cache
def _compiler() -> GrammarCompiler:
    tok = TextTokenizer(Tokenizer.from_str(tiny_tokenizer_json()), eos_token_ids=[2])
    return GrammarCompiler(tok, tok.vocab_size)


def accepts(schema: dict[str, Any], text: str) -> bool:
    """Whether the grammar of ``schema`` (as the worker compiles it) matches the whole of ``text``."""
    compiler = _compiler()
    matcher = compiler.matcher(llguidance.LLMatcher.grammar_from_json_schema(with_style(schema)))
    ids = compiler._tokenizer.encode(text, add_special_tokens=False)
    return matcher.validate_tokens(ids) == len(ids) and matcher.consume_tokens(ids) and matcher.is_accepting()


def test_what_the_strict_grammar_allows_the_original_schema_accepts() -> None:
    s = strict_schema(NESTED)
    samples = [
        '{"city": "' + "a" * MAX_STRING_LENGTH + '"}',
        '{"city": "P", "n": 1000000000000000, "x": -999999999999999.123456789}',
        '{"city": "P", "where": {"lat": 1.5}, "extra": {"a": 1}, "free": {"k": [1, "x"]}}',
    ]
    for text in samples:
        assert accepts(s, text), text
        jsonschema.validate(json.loads(text), NESTED)
    for text in [
        '{"city": "' + "a" * (MAX_STRING_LENGTH + 1) + '"}',
        '{"city": "P", "n": 1000000000000001}',
        '{"city": "P", "x": 0.0000000001}',
        '{"city": "P", "other": 1}',
        '{"city": "P", "where": {"lat": 1.5, "lon": 2}}',
    ]:
        assert not accepts(s, text), text


class Point(pydantic.BaseModel):
    lat: float
    lon: float


class Trip(pydantic.BaseModel):
    city: str
    stops: list[Point]
    nights: int | None = None


def test_pydantic_function_tools_compile_and_stay_strict() -> None:
    tool = openai.pydantic_function_tool(Trip)
    params = tool["function"]["parameters"]
    s = strict_schema(params)
    assert s["$defs"]["Point"]["additionalProperties"] is False
    assert accepts(s, '{"city": "Rome", "stops": [{"lat": 41.9, "lon": 12.5}], "nights": 2}')
    assert not accepts(s, '{"city": "Rome", "stops": [{"lat": 41.9, "lon": 12.5, "alt": 1}], "nights": 2}')
