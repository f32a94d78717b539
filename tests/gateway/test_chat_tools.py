"""Tool calls and response_format through the real gateway, NATS and a tiny random-weight worker process.

The model's output is noise: every tool call the server returns must still be valid, because it was decoded
under a grammar.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema

from tests.conftest import TINY

ADD_PARAMS = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "op": {"enum": ["+", "-"]}},
    "required": ["a", "op"],
    "additionalProperties": False,
}
NOOP_PARAMS = {"type": "object", "properties": {}, "additionalProperties": False}
# One call per reply keeps the noise short: the grammar then ends the reply right after the call.
TOOLS = [
    {"type": "function", "function": {"name": "calc", "parameters": ADD_PARAMS}},
    {"type": "function", "function": {"name": "noop", "parameters": NOOP_PARAMS}},
]
SCHEMAS = {"calc": ADD_PARAMS, "noop": NOOP_PARAMS}
ASK = [{"role": "user", "content": "Add 2"}]


def chat(url: str, **body: Any) -> httpx.Response:
    payload = {"model": TINY, "messages": ASK, "max_tokens": 90, "temperature": 1.0, **body}
    return httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=60)


def stream_chunks(url: str, **body: Any) -> list[dict[str, Any]]:
    payload = {"model": TINY, "messages": ASK, "max_tokens": 90, "temperature": 1.0, "stream": True, **body}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=60) as r:
        assert r.status_code == 200, r.read()
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def first_with_calls(url: str, **body: Any) -> dict[str, Any]:
    """The first seed whose reply ends in tool calls (noise may run into max_tokens instead)."""
    for seed in range(8):
        r = chat(url, seed=seed, **body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        for call in choice["message"].get("tool_calls") or []:  # complete calls before a cut are valid too
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
        if choice["finish_reason"] == "tool_calls":
            return choice
    raise AssertionError("no seed produced tool calls")


def test_required_tool_calls_are_openai_shaped_and_valid(tiny_worker: str) -> None:
    choice = first_with_calls(tiny_worker, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    assert message["tool_calls"]
    for call in message["tool_calls"]:
        assert call["type"] == "function" and call["id"].startswith("call_")
        name, args = call["function"]["name"], call["function"]["arguments"]
        assert isinstance(args, str)
        jsonschema.validate(json.loads(args), SCHEMAS[name])


def test_a_named_function_and_no_parallel_calls(tiny_worker: str) -> None:
    choice = first_with_calls(
        tiny_worker,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "calc"}},
        parallel_tool_calls=False,
    )
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "calc"


def test_streamed_tool_calls_arrive_as_openai_streams_them(tiny_worker: str) -> None:
    for seed in range(8):
        chunks = stream_chunks(tiny_worker, tools=TOOLS, tool_choice="required", seed=seed, parallel_tool_calls=False)
        if chunks[-1]["choices"][0]["finish_reason"] == "tool_calls":
            break
    else:
        raise AssertionError("no seed produced tool calls")
    deltas = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert all(len(d) == 1 for d in deltas)
    calls: dict[int, dict[str, Any]] = {}
    for (d,) in deltas:
        if d["index"] not in calls:  # a call's first delta: its id, type, name and empty arguments
            assert d["id"].startswith("call_") and d["type"] == "function" and d["function"]["arguments"] == ""
            calls[d["index"]] = {"name": d["function"]["name"], "arguments": ""}
        else:
            assert set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
            calls[d["index"]]["arguments"] += d["function"]["arguments"]
    assert list(calls) == list(range(len(calls)))
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == ""


def test_tool_results_go_back_to_the_model_in_the_next_turn(tiny_worker: str) -> None:
    calc = TOOLS[:1]  # the tiny model's context is short
    choice = first_with_calls(tiny_worker, tools=calc, tool_choice="required", parallel_tool_calls=False)
    calls = choice["message"]["tool_calls"]
    turn = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": json.dumps({"result": 2})} for c in calls),
    ]
    # required: without auto's guidance to the model, which this tiny model's 512-token context has no room for.
    r = chat(tiny_worker, messages=turn, tools=calc, tool_choice="required", max_tokens=4)
    assert r.status_code == 200, r.text
    first_turn = chat(tiny_worker, tools=calc, tool_choice="required", max_tokens=1).json()["usage"]["prompt_tokens"]
    assert r.json()["usage"]["prompt_tokens"] > first_turn + 20  # the call and its result are in the prompt


def test_tool_choice_none_gives_text_only(tiny_worker: str) -> None:
    r = chat(tiny_worker, tools=TOOLS, tool_choice="none", max_tokens=6, seed=1)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] in ("stop", "length")


def test_response_format_json_schema_and_regex(tiny_worker: str) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    rf = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}}
    r = chat(tiny_worker, response_format=rf, seed=2)
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), schema)
    r = chat(tiny_worker, response_format={"type": "regex", "regex": "[a-c]{4}-[0-9]{2}"}, seed=2)
    content = r.json()["choices"][0]["message"]["content"]
    assert len(content) == 7 and content[4] == "-" and set(content[:4]) <= set("abc")


def assert_400(r: httpx.Response, param: str, code: str | None = None) -> None:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    if code is not None:
        assert error["code"] == code


def test_bad_tools_and_formats_are_clear_400s(tiny_worker: str) -> None:
    bad_schema = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": 5}}}]
    assert_400(chat(tiny_worker, tools=bad_schema), "tools.0.function.parameters")
    not_object = [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]
    assert_400(chat(tiny_worker, tools=not_object), "tools.0.function.parameters")
    assert_400(chat(tiny_worker, tools=[{"type": "retrieval"}]), "tools.0")
    assert_400(chat(tiny_worker, tools=[TOOLS[0], TOOLS[0]]), "tools.1.function.name")
    assert_400(chat(tiny_worker, tools=[{"type": "function", "function": {"name": "a b"}}]), "tools.0.function.name")
    unknown = {"type": "function", "function": {"name": "nope"}}
    assert_400(chat(tiny_worker, tools=TOOLS, tool_choice=unknown), "tool_choice", "unknown_function")
    assert_400(chat(tiny_worker, tool_choice="required"), "tool_choice")
    # Checked by the worker, which compiles them: still a 400 before any response byte.
    assert_400(chat(tiny_worker, response_format={"type": "regex", "regex": "(open"}), "response_format")
    assert_400(
        chat(tiny_worker, response_format={"type": "grammar", "grammar": 'root ::= "a" nowhere'}), "response_format"
    )
    r = chat(tiny_worker, response_format={"type": "xml"})
    assert r.status_code == 400 and "response_format" in r.json()["error"]["param"]


def test_completions_take_a_response_format_too(tiny_worker: str) -> None:
    body = {"model": TINY, "prompt": "Three digits:", "max_tokens": 10, "seed": 4, "temperature": 1.0}
    r = httpx.post(
        f"{tiny_worker}/v1/completions", json={**body, "response_format": {"type": "regex", "regex": "[0-9]{3}"}}
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"].isdigit() and len(choice["text"]) == 3 and choice["finish_reason"] == "stop"


PING = {
    "type": "function",
    "function": {
        "name": "ping",
        "parameters": {"type": "object", "properties": {"x": {"const": 1}}, "required": ["x"]},
    },
}


def test_a_named_function_is_one_call_with_parallel_calls_on(tiny_worker: str) -> None:
    for seed in range(2):
        r = chat(tiny_worker, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "calc"}}, seed=seed)
        choice = r.json()["choices"][0]
        if choice["finish_reason"] == "tool_calls":
            [call] = choice["message"]["tool_calls"]
            assert call["function"]["name"] == "calc"


def test_a_repeated_call_ends_the_turn_and_is_dropped(tiny_worker: str) -> None:
    """Every call to ``ping`` is the same call, so a second one is always a repeat."""
    tokens = []
    for seed in (0, 8, 9):  # 8 and 9: seeds whose noise goes on after the first call
        r = chat(tiny_worker, tools=[PING], tool_choice="required", seed=seed)
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        [call] = choice["message"]["tool_calls"]
        assert json.loads(call["function"]["arguments"]) == {"x": 1}
        tokens.append(r.json()["usage"]["completion_tokens"])
    assert max(tokens) > min(tokens)  # some replies went on into a repeat, which the worker cut short


LONG = {
    "type": "function",
    "function": {
        "name": "write",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string", "minLength": 1000, "maxLength": 1000}},
            "required": ["text"],
        },
    },
}


def test_a_call_cut_by_max_tokens_is_returned_with_finish_reason_length(tiny_worker: str) -> None:
    # 80 tokens hold the call's opening but never its 1000 characters of text.
    r = chat(tiny_worker, tools=[LONG], tool_choice="required", max_tokens=80, seed=1)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "write" and call["function"]["arguments"].startswith('{"text": "')
    chunks = stream_chunks(tiny_worker, tools=[LONG], tool_choice="required", max_tokens=80, seed=1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    streamed = "".join(
        d["function"]["arguments"] for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []
    )
    assert streamed == call["function"]["arguments"]  # same seed, same reply


def test_streamed_arguments_come_token_by_token_and_add_up_to_the_whole_reply(tiny_worker: str) -> None:
    body = {"tools": TOOLS, "tool_choice": "required"}
    for seed in range(8):
        whole = chat(tiny_worker, seed=seed, **body).json()["choices"][0]
        if whole["finish_reason"] == "tool_calls":
            break
    else:
        raise AssertionError("no seed produced tool calls")
    chunks = stream_chunks(tiny_worker, seed=seed, **body)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    calls: dict[int, dict[str, Any]] = {}
    pieces = 0
    for c in chunks:
        for d in c["choices"][0]["delta"].get("tool_calls") or []:
            call = calls.setdefault(d["index"], {"name": d["function"].get("name"), "arguments": ""})
            call["arguments"] += d["function"]["arguments"]
            pieces += bool(d["function"]["arguments"])
    assert pieces > len(calls)  # more than one piece of arguments per call
    expected = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in whole["message"]["tool_calls"]
    ]
    assert [calls[i] for i in sorted(calls)] == expected
