"""The gateway's own checks of tools and of the calls workers return (no worker needed)."""

from __future__ import annotations

import pytest

from ember.bus.messages import ToolCallDelta
from ember.gateway.errors import InvalidRequest
from ember.gateway.tool_calls import ToolCallAssembler, ToolCallDefect, check_tools, output_constraint, tool_choice

TOOLS = check_tools(
    [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
            },
        },
        {"type": "function", "function": {"name": "g"}},
    ]
)


def assemble(*deltas: ToolCallDelta) -> ToolCallAssembler:
    a = ToolCallAssembler()
    a.add(list(deltas))
    return a


def test_calls_are_assembled_in_order_and_checked() -> None:
    a = assemble(
        ToolCallDelta(index=1, id="call_b", name="g", arguments=""),
        ToolCallDelta(index=0, id="call_a", name="f", arguments=""),
        ToolCallDelta(index=0, arguments='{"x": '),
        ToolCallDelta(index=0, arguments="1}"),
        ToolCallDelta(index=1, arguments="{}"),
    )
    calls = a.complete(TOOLS, "tool_calls")
    assert [(c.id, c.name, c.parsed_arguments) for c in calls] == [("call_a", "f", {"x": 1}), ("call_b", "g", {})]
    assert calls[0].to_openai() == {
        "id": "call_a",
        "type": "function",
        "function": {"name": "f", "arguments": '{"x": 1}'},
    }


@pytest.mark.parametrize(
    "deltas",
    [
        [ToolCallDelta(index=0, id="c", name="f", arguments='{"x": "one"}')],  # does not match the schema
        [ToolCallDelta(index=0, id="c", name="f", arguments='{"x": 1')],  # not JSON
        [ToolCallDelta(index=0, id="c", name="h", arguments="{}")],  # not an offered tool
    ],
    ids=["schema", "json", "name"],
)
def test_a_bad_call_from_a_worker_is_a_500_never_passed_on(deltas: list[ToolCallDelta]) -> None:
    for finish in ("tool_calls", "stop"):
        with pytest.raises(ToolCallDefect) as e:
            assemble(*deltas).complete(TOOLS, finish)
        assert e.value.status == 500 and e.value.code == "invalid_tool_call"


def test_a_call_cut_by_max_tokens_is_passed_on_unchecked() -> None:
    deltas = [
        ToolCallDelta(index=0, id="a", name="f", arguments='{"x": 1}'),
        ToolCallDelta(index=1, id="b", name="f", arguments='{"x": '),
    ]
    first, cut = assemble(*deltas).complete(TOOLS, "length")
    assert not first.cut and cut.cut and cut.to_openai()["function"]["arguments"] == '{"x": '
    # Only the last call can be cut, and only its unfinished arguments excuse it.
    unfinished_first = [
        ToolCallDelta(index=0, id="a", name="f", arguments='{"x": '),
        ToolCallDelta(index=1, id="b", name="f", arguments='{"x": 1}'),
    ]
    with pytest.raises(ToolCallDefect):
        assemble(*unfinished_first).complete(TOOLS, "length")
    with pytest.raises(ToolCallDefect):
        assemble(ToolCallDelta(index=0, id="a", name="f", arguments='{"x": "one"}')).complete(TOOLS, "length")


def test_strict_is_accepted_and_must_be_a_boolean() -> None:
    fn = {"name": "f", "strict": True, "parameters": {"type": "object", "properties": {}}}
    assert check_tools([{"type": "function", "function": fn}])[0]["function"] == {
        "name": "f",
        "parameters": fn["parameters"],
    }
    with pytest.raises(InvalidRequest) as e:
        check_tools([{"type": "function", "function": {**fn, "strict": "yes"}}])
    assert e.value.param == "tools.0.function.strict"


def test_tool_choice_forms() -> None:
    assert tool_choice(None, TOOLS).mode == "auto"
    assert tool_choice(None, ()).mode == "none"
    assert tool_choice("required", TOOLS).mode == "required"
    named = tool_choice({"type": "function", "function": {"name": "g"}}, TOOLS)
    assert (named.mode, named.name) == ("function", "g")
    with pytest.raises(InvalidRequest):
        tool_choice("sometimes", TOOLS)


def test_response_formats() -> None:
    assert output_constraint({"type": "text"}) is None
    assert output_constraint({"type": "json_object"}).type == "json_object"  # type: ignore[union-attr]
    c = output_constraint({"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}})
    assert c is not None and c.json_schema == {"type": "object"}
    with pytest.raises(InvalidRequest) as e:
        output_constraint({"type": "json_schema", "json_schema": {"schema": {"type": 5}}})
    assert e.value.param == "response_format.json_schema.schema"
    with pytest.raises(InvalidRequest):
        output_constraint({"type": "regex"})
