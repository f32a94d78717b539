"""Constrained decoding in the engine, on the tiny random-weight model: its output is noise, which is the point:
under a grammar every tool call and every constrained reply must still be valid."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ember.bus.messages import ChatMessage, JobStatus, OutputConstraint, SamplingParams, TextJob, ToolChoice
from ember.runtimes.text.engine import EngineConfig, GenerateRequest, TextEngine
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.worker import RequestError, TextJobHandler, split_output
from tests.helpers.text_runner import new_runner

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 6},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = (WEATHER, ADD)
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = (ChatMessage(role="user", content="What is the weather in Paris?"),)


@pytest.fixture(scope="module")
def handler(tiny_model: Path) -> TextJobHandler:
    loaded: LoadedModel = load_model(tiny_model)
    runner = new_runner(loaded, num_blocks=1024, block_size=16, max_context=1024, max_step_tokens=128)
    engine = TextEngine(runner, loaded.tokenizer, EngineConfig(max_batch=8, max_step_tokens=64))
    engine.start()
    yield TextJobHandler("tiny", loaded, engine)
    engine.stop()


def job(rid: str, **fields: Any) -> TextJob:
    sampling = fields.pop("sampling", SamplingParams(temperature=1.0, max_tokens=160))
    return TextJob(request_id=rid, model="tiny", messages=fields.pop("messages", ASK), sampling=sampling, **fields)


async def run_job(handler: TextJobHandler, j: TextJob) -> dict[str, Any]:
    """The job through the worker's own preparation, the engine and the tool-call split, as the worker runs it."""
    prepared = await asyncio.to_thread(handler.prepare, j)
    req = GenerateRequest(
        request_id=j.request_id,
        prompt_ids=prepared.prompt_ids,
        sampling=prepared.sampling,
        max_tokens=prepared.max_tokens,
        matcher=prepared.matcher,
    )
    text, calls, finish, status = [], {}, None, None
    async for out in handler.engine.generate(req):
        assert out.error is None, out.error
        status = out.status
        if prepared.parser is None:
            text.append(out.text)
            continue
        piece, deltas, f = split_output(out, prepared.parser)
        text.append(piece)
        finish = f or finish
        for d in deltas:
            call = calls.setdefault(d.index, {"id": d.id, "name": d.name, "arguments": ""})
            call["arguments"] += d.arguments
    return {"text": "".join(text), "calls": [calls[i] for i in sorted(calls)], "finish": finish, "status": status}


def assert_valid(call: dict[str, Any]) -> None:
    assert call["id"].startswith("call_")
    assert call["name"] in SCHEMAS
    jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


async def test_required_tool_calls_always_validate_even_from_noise(handler: TextJobHandler) -> None:
    jobs = [
        job(f"req-{seed}", tools=TOOLS, tool_choice=ToolChoice(mode="required"), sampling=_seeded(seed))
        for seed in range(6)
    ]
    results = await asyncio.gather(*(run_job(handler, j) for j in jobs))
    finished_with_calls = 0
    for r in results:
        for call in r["calls"]:
            assert_valid(call)
        assert "<tool_call>" not in r["text"]
        if r["status"] == JobStatus.FINISHED_STOPPED:
            assert r["calls"] and r["finish"] == "tool_calls" and r["text"] == ""
            finished_with_calls += 1
    assert finished_with_calls >= 4  # bounded schemas: the grammar itself drives most replies to the end


async def test_a_named_function_is_the_only_one_called(handler: TextJobHandler) -> None:
    choice = ToolChoice(mode="function", name="add")
    results = await asyncio.gather(
        *(run_job(handler, job(f"named-{s}", tools=TOOLS, tool_choice=choice, sampling=_seeded(s))) for s in range(3))
    )
    calls = [c for r in results for c in r["calls"]]
    assert calls and all(c["name"] == "add" for c in calls)
    for c in calls:
        assert_valid(c)


async def test_single_call_when_parallel_calls_are_off(handler: TextJobHandler) -> None:
    results = await asyncio.gather(
        *(
            run_job(
                handler,
                job(
                    f"one-{s}",
                    tools=TOOLS,
                    tool_choice=ToolChoice(mode="required"),
                    parallel_tool_calls=False,
                    sampling=_seeded(s),
                ),
            )
            for s in range(3)
        )
    )
    assert all(len(r["calls"]) <= 1 for r in results)


async def test_auto_text_never_contains_the_call_tag(handler: TextJobHandler) -> None:
    results = await asyncio.gather(
        *(run_job(handler, job(f"auto-{s}", tools=TOOLS, sampling=_seeded(s))) for s in range(4))
    )
    for r in results:
        assert "<tool_call>" not in r["text"]
        for call in r["calls"]:
            assert_valid(call)


async def test_unconstrained_rows_are_untouched_by_their_constrained_neighbours(handler: TextJobHandler) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    alone = await run_job(handler, job("plain-alone", sampling=greedy))
    together = await asyncio.gather(
        run_job(handler, job("plain-mixed", sampling=greedy)),
        *(
            run_job(
                handler, job(f"mixed-{s}", tools=TOOLS, tool_choice=ToolChoice(mode="required"), sampling=_seeded(s))
            )
            for s in range(3)
        ),
    )
    assert together[0]["text"] == alone["text"]


@pytest.mark.parametrize(
    ("constraint", "check"),
    [
        (OutputConstraint(type="json_object"), lambda t: isinstance(json.loads(t), dict)),
        (
            OutputConstraint(
                type="json_schema",
                json_schema={
                    "type": "object",
                    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1, "maximum": 9}},
                    "required": ["ok", "n"],
                    "additionalProperties": False,
                },
            ),
            lambda t: jsonschema.validate(json.loads(t), {"required": ["ok", "n"]}) is None,
        ),
        (
            OutputConstraint(type="regex", pattern=r"(yes|no), [0-9]{3}"),
            lambda t: re.fullmatch(r"(yes|no), [0-9]{3}", t),
        ),
        (
            OutputConstraint(type="grammar", grammar='root ::= "color: " ("red" | "green" | "blue")'),
            lambda t: t in ("color: red", "color: green", "color: blue"),
        ),
    ],
    ids=["json_object", "json_schema", "regex", "gbnf"],
)
async def test_response_format_replies_match(handler: TextJobHandler, constraint: OutputConstraint, check: Any) -> None:
    sampling = SamplingParams(temperature=1.0, seed=3, max_tokens=200)
    r = await run_job(handler, job(f"rf-{constraint.type}", response_format=constraint, sampling=sampling))
    if constraint.type != "json_object":  # these grammars are finite: the reply always ends within max_tokens
        assert r["status"] == JobStatus.FINISHED_STOPPED
    if r["status"] == JobStatus.FINISHED_STOPPED:
        assert check(r["text"]), r["text"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": OutputConstraint(type="regex", pattern="(unclosed")}, "response_format"),
        ({"response_format": OutputConstraint(type="grammar", grammar='root ::= "a" missing_rule')}, "response_format"),
        (
            {"response_format": OutputConstraint(type="json_schema", json_schema={"type": "object", "if": 3})},
            "response_format",
        ),
        (
            {"tools": (WEATHER, {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}})},
            "tools.1.function.parameters",
        ),
    ],
    ids=["regex", "gbnf", "schema", "tool"],
)
def test_constraints_that_cannot_compile_are_refused_with_a_400(
    handler: TextJobHandler, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(RequestError) as e:
        handler.prepare(job("bad", **fields))
    assert e.value.info.status == 400 and e.value.info.param == param


def _seeded(seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=160)
