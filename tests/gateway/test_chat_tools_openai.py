"""Tool calls through the official openai client: every tool_choice, parallel calls, streaming with the client's
own helper, and ``parse`` with a pydantic tool (``strict: true``). The tiny model's output is noise, so each case
tries a few seeds for one that ends in calls; whatever ends so must parse and validate in the client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pydantic
import pytest

from tests.conftest import TINY
from tests.gateway.test_chat_tools import ASK, TOOLS

CALC, NOOP = TOOLS


class Add(pydantic.BaseModel):
    a: int
    op: str = pydantic.Field(max_length=1)


@pytest.fixture(scope="module")
def client(tiny_worker: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_worker}/v1", api_key="unused", max_retries=0)


def until_calls(make: Callable[[int], Any], seeds: int = 6) -> Any:
    """The first seed's completion that ends with tool calls."""
    for seed in range(seeds):
        completion = make(seed)
        if completion.choices[0].finish_reason == "tool_calls":
            return completion
    raise AssertionError("no seed produced tool calls")


def create(client: openai.OpenAI, seed: int, **body: Any) -> Any:
    args = {"model": TINY, "messages": ASK, "max_tokens": 60, "temperature": 1.0, "seed": seed}
    return client.chat.completions.create(**{**args, **body})


def test_auto_is_text_or_calls(client: openai.OpenAI) -> None:
    """Noise rarely starts a call (its first token decides), so this checks the form: one or the other."""
    for seed in range(3):
        # One tool: auto's guidance to the model takes room in this tiny model's 512-token context.
        choice = create(client, seed, tools=[CALC], tool_choice="auto", max_tokens=20).choices[0]
        if choice.message.tool_calls:
            assert choice.message.content is None and choice.finish_reason in ("tool_calls", "length")
        else:
            assert "<tool_call>" not in (choice.message.content or "")
            assert choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "calc"}}],
    ids=["required", "named"],
)
def test_each_tool_choice_completes_with_tool_calls(client: openai.OpenAI, choice: Any) -> None:
    completion = until_calls(lambda seed: create(client, seed, tools=[CALC, NOOP], tool_choice=choice))
    message = completion.choices[0].message
    assert message.content is None and message.tool_calls
    for call in message.tool_calls:
        assert call.function.name in ("calc", "noop")
        json.loads(call.function.arguments)
    if isinstance(choice, dict):
        [call] = message.tool_calls
        assert call.function.name == "calc"


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    completion = create(client, 1, tools=[CALC], tool_choice="none", max_tokens=8)
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason in ("stop", "length")


def fixed(name: str) -> dict[str, Any]:
    """A tool with one possible call: after both are made, the model can only repeat one, which ends the turn."""
    params = {"type": "object", "properties": {"x": {"const": name}}, "required": ["x"]}
    return {"type": "function", "function": {"name": name, "parameters": params}}


def test_parallel_calls(client: openai.OpenAI) -> None:
    tools = [fixed("left"), fixed("right")]
    completion = until_calls(
        lambda seed: two_calls(create(client, seed, tools=tools, tool_choice="required", max_tokens=150)), 8
    )
    calls = completion.choices[0].message.tool_calls
    assert sorted(c.function.name for c in calls) == ["left", "right"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"x": c.function.name} for c in calls]
    assert len({c.id for c in calls}) == 2


def two_calls(completion: Any) -> Any:
    """``completion`` when it has two calls; else marked as not ending in calls, for ``until_calls``."""
    if len(completion.choices[0].message.tool_calls or []) < 2:
        completion.choices[0].finish_reason = "stop"
    return completion


def test_the_stream_helper_assembles_calls(client: openai.OpenAI) -> None:
    def run(seed: int) -> Any:
        body = {"model": TINY, "messages": ASK, "max_tokens": 60, "temperature": 1.0, "seed": seed}
        events = []
        try:
            with client.chat.completions.stream(
                **body, tools=[CALC], tool_choice="required", parallel_tool_calls=False
            ) as stream:
                events = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
                final = stream.get_final_completion()
        except openai.LengthFinishReasonError as e:  # the helper refuses a reply cut by max_tokens
            final = e.completion
        final.argument_events = events  # type: ignore[attr-defined]
        return final

    final = until_calls(run)
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "calc" and json.loads(call.function.arguments)["op"] in ("+", "-")
    assert len(final.argument_events) > 1  # the arguments came in pieces


def test_parse_with_a_pydantic_tool(client: openai.OpenAI) -> None:
    tool = openai.pydantic_function_tool(Add)
    assert tool["function"]["strict"] is True

    def run(seed: int) -> Any:
        body = {"model": TINY, "messages": ASK, "max_tokens": 80, "temperature": 1.0, "seed": seed}
        try:
            return client.chat.completions.parse(**body, tools=[tool], tool_choice="required")
        except openai.LengthFinishReasonError as e:
            return e.completion

    completion = until_calls(run)
    [call] = completion.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Add)
