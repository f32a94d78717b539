"""The official openai client, unchanged, against Ember over loopback."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import TINY


@pytest.fixture
def client(tiny_worker: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_worker}/v1", api_key="unused", max_retries=0)


def test_models(client: openai.OpenAI) -> None:
    assert TINY in [m.id for m in client.models.list()]
    assert client.models.retrieve(TINY).id == TINY


def test_chat(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0
    )
    assert r.choices[0].message.role == "assistant"
    assert r.usage is not None and r.usage.completion_tokens <= 5


def test_chat_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    kwargs = {"model": TINY, "messages": [{"role": "user", "content": "count"}], "max_tokens": 8, "temperature": 0}
    full = client.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[call-overload]
    parts = []
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(parts) == full
    assert usage is not None and usage.completion_tokens >= 1


def test_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model=TINY, prompt="The sky is", max_tokens=4, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=TINY, prompt="The sky is", max_tokens=4, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == r.choices[0].text


def test_errors_map_to_the_clients_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "x"}], max_tokens=100_000)
    assert e.value.code == "context_length_exceeded"


CALC = {
    "type": "function",
    "function": {
        "name": "calc",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["a"],
            "additionalProperties": False,
        },
    },
}


def test_tool_round_trip_streaming_and_not(client: openai.OpenAI) -> None:
    """The tiny model's output is noise, but under the grammar its calls are valid: a whole round trip works."""
    messages: list[Any] = [{"role": "user", "content": "add"}]
    kwargs: dict[str, Any] = {"model": TINY, "tools": [CALC], "tool_choice": "required", "parallel_tool_calls": False}
    for seed in range(8):
        r = client.chat.completions.create(messages=messages, max_tokens=60, temperature=1.0, seed=seed, **kwargs)
        if r.choices[0].finish_reason == "tool_calls":
            break
    else:
        raise AssertionError("no seed produced a tool call")
    message = r.choices[0].message
    [call] = message.tool_calls or []
    assert (
        call.type == "function" and call.function.name == "calc" and 0 <= json.loads(call.function.arguments)["a"] <= 9
    )

    # The same request streamed: the openai client's own accumulation rebuilds the same call.
    with client.chat.completions.stream(
        messages=messages, max_tokens=60, temperature=1.0, seed=seed, **kwargs
    ) as stream:
        final = stream.get_final_completion()
    [streamed] = final.choices[0].message.tool_calls or []
    assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"

    messages += [message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "7"}]
    # required: auto's guidance to the model would not fit this tiny model's 512-token context beside the turn.
    after = client.chat.completions.create(
        model=TINY, messages=messages, tools=[CALC], tool_choice="required", max_tokens=3, temperature=0
    )
    assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")
