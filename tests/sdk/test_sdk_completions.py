"""``client.chat.completions`` and ``client.completions``: request bodies, typed results, and streams."""

from __future__ import annotations

import json

import pytest

import ember
from ember.types import ChatCompletion, ChatCompletionChunk, Completion
from tests.sdk.fake_gateway import ServerState

MESSAGES: list[ember.types.ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
]


def test_chat_completion(client: ember.Ember, server_state: ServerState) -> None:
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=16, seed=7)
    assert isinstance(reply, ChatCompletion)
    assert reply.choices[0].message.content == "echo: Hi"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == 8
    assert reply.ember_worker == "w-1"  # type: ignore[attr-defined]  # extension fields are kept
    assert reply._request_id == "req-1"
    recorded = server_state.last
    assert recorded.path == "/v1/chat/completions"
    assert recorded.headers["content-type"] == "application/json"
    # Only what was passed is sent: no nulls for omitted parameters.
    assert recorded.json == {
        "model": "tiny",
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": 16,
        "seed": 7,
        "stream": False,
    }


def test_every_named_parameter_is_sent(client: ember.Ember, server_state: ServerState) -> None:
    tool: ember.types.ChatCompletionToolParam = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
    }
    params: ember.types.ChatCompletionCreateParams = {
        "model": "tiny",
        "messages": iter(MESSAGES),
        "tools": (tool,),
        "top_p": 0.9,
        "max_completion_tokens": 8,
        "stop": ["\n", "END"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"42": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "n": 1,
        "user": "u-1",
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
    }
    client.chat.completions.create(**params)
    sent = server_state.last.json
    # Iterables (an iterator, a tuple) go out as JSON lists.
    assert sent == {**params, "messages": MESSAGES, "tools": [tool], "stream": False}


def test_logprobs_parse(client: ember.Ember) -> None:
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, logprobs=True, top_logprobs=1)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert logprobs.content[0].token == "echo"
    assert logprobs.content[0].top_logprobs[0].bytes == [101, 99, 104, 111]


def test_extra_body_and_headers(client: ember.Ember, server_state: ServerState) -> None:
    client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        temperature=1.0,
        extra_body={"top_k": 40, "temperature": 0.5},
        extra_headers={"x-request-id": "mine"},
    )
    assert server_state.last.json["top_k"] == 40
    assert server_state.last.json["temperature"] == 0.5  # extra_body wins: it is the escape hatch
    assert server_state.last.headers["x-request-id"] == "mine"


def test_unknown_or_missing_arguments_raise_before_sending(client: ember.Ember, server_state: ServerState) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, temprature=0.5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="missing required keyword arguments: messages"):
        client.chat.completions.create(model="tiny")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^completions\.create\(\) missing required keyword arguments: prompt$"):
        client.completions.create(model="tiny")  # type: ignore[call-overload]
    assert server_state.requests == []


def test_tool_calls(client: ember.Ember) -> None:
    reply = client.chat.completions.create(model="tools", messages=MESSAGES)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("call_1", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"c": "Oslo"}


def test_a_returned_message_can_be_sent_back(client: ember.Ember, server_state: ServerState) -> None:
    reply = client.chat.completions.create(model="tools", messages=MESSAGES)
    history = [*MESSAGES, reply.choices[0].message, {"role": "tool", "tool_call_id": "call_1", "content": "12C"}]
    client.chat.completions.create(model="tiny", messages=history)  # type: ignore[arg-type]
    sent = server_state.last.json["messages"]
    assert sent[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[3] == {"role": "tool", "tool_call_id": "call_1", "content": "12C"}


def test_chat_stream(client: ember.Ember, server_state: ServerState) -> None:
    with client.chat.completions.create(
        model="tiny", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as stream:
        assert isinstance(stream, ember.Stream)
        assert stream.request_id == "req-1"
        chunks = list(stream)
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    # The usage-only chunk comes last; nothing after [DONE] is read.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    assert server_state.last.json["stream"] is True
    assert server_state.last.headers["accept"] == "text/event-stream"
    assert stream.response.is_closed


def test_chat_stream_tool_call_deltas(client: ember.Ember) -> None:
    stream = client.chat.completions.create(model="tools", messages=MESSAGES, stream=True)
    calls = [call for chunk in stream for call in chunk.choices[0].delta.tool_calls or []]
    assert calls[0].id == "call_1" and calls[0].function is not None and calls[0].function.name == "get_weather"
    assert all(call.index == 0 for call in calls)
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == {"c": "Oslo"}
    assert stream.response.is_closed  # exhausting a stream closes it, even without `with`


def test_odd_but_valid_framing(client: ember.Ember) -> None:
    with client.chat.completions.create(model="odd-framing", messages=MESSAGES, stream=True) as stream:
        assert [chunk.choices[0].delta.content for chunk in stream] == ["a", "b", "c"]


def test_closing_a_stream_early_disconnects(client: ember.Ember, server_state: ServerState) -> None:
    with client.chat.completions.create(model="forever", messages=MESSAGES, stream=True) as stream:
        for n, chunk in enumerate(stream):
            assert chunk.choices[0].delta.content == f"{n} "
            if n == 2:
                break
    assert stream.response.is_closed
    # The server's generator is cancelled once it notices the client went away.
    assert server_state.stream_closed.wait(5)


def test_close_without_iterating(client: ember.Ember, server_state: ServerState) -> None:
    stream = client.chat.completions.create(model="forever", messages=MESSAGES, stream=True)
    stream.close()
    stream.close()  # idempotent
    assert stream.response.is_closed
    assert list(stream) == []
    assert server_state.stream_closed.wait(5)


def test_completion(client: ember.Ember, server_state: ServerState) -> None:
    result = client.completions.create(model="tiny", prompt="Once", echo=True, logprobs=1, max_tokens=2)
    assert isinstance(result, Completion)
    assert result.choices[0].text == "Once continued"
    assert result.choices[0].finish_reason == "length"
    assert result.choices[0].logprobs is not None and result.choices[0].logprobs.tokens == [" contin", "ued"]
    assert server_state.last.path == "/v1/completions"
    assert server_state.last.json == {
        "model": "tiny",
        "prompt": "Once",
        "echo": True,
        "logprobs": 1,
        "max_tokens": 2,
        "stream": False,
    }


def test_completion_stream(client: ember.Ember) -> None:
    with client.completions.create(model="tiny", prompt=[1, 2, 3], stream=True) as stream:
        pieces = list(stream)
    assert [p.choices[0].text for p in pieces] == [" contin", "ued"]
    assert [p.choices[0].finish_reason for p in pieces] == [None, "length"]


async def test_async_chat_completion(aclient: ember.AsyncEmber, server_state: ServerState) -> None:
    reply = await aclient.chat.completions.create(model="tiny", messages=MESSAGES, extra_body={"top_k": 5})
    assert reply.choices[0].message.content == "echo: Hi"
    assert reply._request_id == "req-1"
    assert server_state.last.json["top_k"] == 5


async def test_async_chat_stream(aclient: ember.AsyncEmber) -> None:
    stream = await aclient.chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
    assert isinstance(stream, ember.AsyncStream)
    async with stream:
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == "Hello world"
    assert stream.response.is_closed


async def test_async_stream_close_early(aclient: ember.AsyncEmber) -> None:
    stream = await aclient.chat.completions.create(model="tools", messages=MESSAGES, stream=True)
    async for _ in stream:
        break
    await stream.close()
    await stream.close()
    assert stream.response.is_closed
    assert [chunk async for chunk in stream] == []


async def test_async_odd_framing(aclient: ember.AsyncEmber) -> None:
    async with await aclient.chat.completions.create(model="odd-framing", messages=MESSAGES, stream=True) as stream:
        assert [chunk.choices[0].delta.content async for chunk in stream] == ["a", "b", "c"]


async def test_async_completions(aclient: ember.AsyncEmber) -> None:
    result = await aclient.completions.create(model="tiny", prompt="Once")
    assert result.choices[0].text == " continued"
    async with await aclient.completions.create(model="tiny", prompt="Once", stream=True) as stream:
        assert [p.choices[0].text async for p in stream] == [" contin", "ued"]
