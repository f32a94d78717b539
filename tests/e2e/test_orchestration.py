"""Orchestrated chats (``ember_tools``) end to end: a tiny text model, a functions worker, the real gateway.

The model has random weights, so what it says is noise; the grammar makes every call it emits valid, and
``ember_tool_plan`` (a tool_choice per turn) makes the flow deterministic. The checks are about the platform:
what ran, with which arguments, what went back to the model, what was charged, and how failures end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest

from ember.config import load_settings
from ember.limits.tiers import Tier
from ember.usage import stream as usage_stream
from tests.functions.cluster import TOOL_MODEL, USER_MODULE, functions_worker, text_worker, write_tool_model
from tests.helpers.cluster import GatewayThread, write_config

NAMES = ["user_functions.add", "user_functions.explode", "user_functions.hang", "user_functions.broken_schema"]
# Enough for one forced call (~70 tokens in the tiny model's tool format); a free answer stops here too.
MAX_TOKENS = 96


@pytest.fixture(scope="module")
def url(nats_url: str, gateway: GatewayThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("orchestration")
    model = write_tool_model(root / "model")
    config = write_config(root / "ember.toml", {TOOL_MODEL: {"path": str(model), "max_batch": 4}})
    with (
        text_worker(config, TOOL_MODEL, nats_url, gateway.url, root / "text.log"),
        functions_worker(config, nats_url, gateway.url, [USER_MODULE], NAMES, root / "functions.log"),
    ):
        yield gateway.url


def body(**extra: Any) -> dict[str, Any]:
    return {
        "model": TOOL_MODEL,
        "messages": [{"role": "user", "content": "Add two numbers."}],
        "max_tokens": MAX_TOKENS,
        **extra,
    }


def chat(url: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body(**extra), timeout=120)


def stream(url: str, headers: dict[str, str] | None = None, **extra: Any) -> list[dict[str, Any]]:
    """Every data event of a streamed chat, [DONE] last (checked) and left out."""
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body(stream=True, **extra), headers=headers, timeout=120
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def of_type(steps: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [s for s in steps if s["type"] == kind]


def test_the_loop_runs_each_call_and_feeds_its_result_back(url: str) -> None:
    tools = ["user_functions.add", "user_functions.explode", "user_functions.hang"]
    started = time.monotonic()
    r = chat(url, ember_tools=tools, ember_tool_plan=[*tools, "none"], parallel_tool_calls=False)
    assert r.status_code == 200, r.text
    result = r.json()
    steps = result["ember_steps"]
    assert [(s["type"], s.get("name")) for s in steps] == [
        ("model", None),
        ("function", "user_functions.add"),
        ("model", None),
        ("function", "user_functions.explode"),
        ("model", None),
        ("function", "user_functions.hang"),
        ("model", None),
    ]
    models = of_type(steps, "model")
    added, exploded, hung = of_type(steps, "function")
    # The call ran once, with the arguments the model gave; the sum is the function's own.
    (call,) = models[0]["tool_calls"]
    args = json.loads(call["function"]["arguments"])
    assert call["function"]["name"] == "user_functions.add" and added["call_id"] == call["id"]
    assert added["arguments"] == args and added["status"] == "ok" and added["output"] == args["a"] + args["b"]
    # A function that raises, and one that hangs past its timeout, are error results the model sees.
    assert exploded["status"] == "error" and exploded["error"]["code"] == "function_raised"
    assert "RuntimeError" in exploded["error"]["message"]
    assert hung["status"] == "error" and hung["error"]["code"] == "function_timeout"
    assert time.monotonic() - started < 110
    # Each turn saw the calls and results before it: with the same tools offered, each prompt is longer.
    prompts = [m["usage"]["prompt_tokens"] for m in models]
    assert prompts[0] < prompts[1] < prompts[2]
    final = models[-1]
    assert not final["tool_calls"] and final["finish_reason"] in ("stop", "length")
    assert result["choices"][0]["message"]["content"] == final["content"]
    assert result["choices"][0]["finish_reason"] == final["finish_reason"]
    assert result["usage"]["prompt_tokens"] == sum(prompts)
    assert result["usage"]["completion_tokens"] == sum(m["usage"]["completion_tokens"] for m in models)
    assert r.headers["x-ember-steps"] == "4"


def test_unknown_functions_and_bad_plans_are_400s_before_any_work(url: str) -> None:
    r = chat(url, ember_tools=["user_functions.add", "user_functions.nope"])
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unknown_function" and r.json()["error"]["param"] == "ember_tools.1"
    r = chat(url, ember_tools=["user_functions.add"], ember_tool_plan=["user_functions.explode"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "ember_tool_plan.0"
    r = chat(url, ember_tools=["user_functions.add"], tools=[{"type": "function", "function": {"name": "x"}}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    r = chat(url, ember_tools=[])
    assert r.status_code == 400 and r.json()["error"]["param"] == "ember_tools"
    r = chat(url, ember_tools=["user_functions.add"], ember_tool_plan=["required"] * 3, ember_max_steps=2)
    assert r.status_code == 400 and r.json()["error"]["param"] == "ember_tool_plan"


def test_a_function_with_a_bad_schema_is_refused_up_front(url: str) -> None:
    r = chat(url, ember_tools=["user_functions.add", "user_functions.broken_schema"])
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_tool_schema" and err["param"] == "ember_tools.1"
    assert "user_functions.broken_schema" in err["message"]
    r = httpx.post(f"{url}/v1/functions/user_functions.broken_schema/invoke", json={"input": {"x": 1}})
    assert r.status_code == 500 and r.json()["error"]["code"] == "invalid_function_schema"


def test_a_model_that_never_stops_calling_hits_the_step_budget(url: str) -> None:
    events = stream(
        url, ember_tools=["user_functions.add"], tool_choice="required", parallel_tool_calls=False, ember_max_steps=2
    )
    kinds = [e["ember_event"]["type"] for e in events if "ember_event" in e]
    # The first turn's call ran; the last turn's was never run, since no turn was left to read its result.
    assert kinds == ["model", "function.started", "function", "model"]
    error = events[-1]["error"]
    assert error["code"] == "step_budget_exceeded" and error["param"] == "ember_max_steps"
    assert "after 2 turns" in error["message"]


ADMIN = "admin-" + "o" * 24
# Three requests a minute and no burst: one orchestrated chat of two turns and one call uses them all.
THREE = Tier(
    requests_per_minute=3,
    burst_fraction=0.0,
    concurrent_requests=4,
    prompt_tokens_per_minute=1_000_000,
    completion_tokens_per_minute=1_000_000,
    max_tokens_per_request=None,
)


@pytest.fixture(scope="module")
def secured(cluster_config: Path, nats_url: str, url: str) -> Iterator[str]:
    """A gateway with keys required, on the same NATS and workers."""
    base = load_settings(cluster_config)
    settings = base.model_copy(
        update={
            "auth": base.auth.model_copy(update={"enabled": True, "admin_key": ADMIN}),
            "tiers": {**base.tiers, "three": THREE},
        }
    )
    gw = GatewayThread(settings, nats_url).start()
    yield gw.url
    gw.stop()


def test_streamed_steps_and_every_turn_and_call_charged_to_the_key(secured: str, nats_url: str) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    created = httpx.post(f"{secured}/v1/admin/keys", json={"tier": "three"}, headers=admin).json()
    headers = {"authorization": f"Bearer {created['secret']}"}
    plan = {
        "ember_tools": ["user_functions.add"],
        "ember_tool_plan": ["user_functions.add", "none"],
        "parallel_tool_calls": False,
        "stream_options": {"include_usage": True},
    }
    events = stream(secured, headers, **plan)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    steps = [e["ember_event"] for e in events if "ember_event" in e]
    assert [s["type"] for s in steps] == ["model", "function.started", "function", "model"]
    assert steps[2]["status"] == "ok" and steps[1]["call_id"] == steps[2]["call_id"]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finish = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == steps[3]["finish_reason"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == steps[3]["content"]
    models = [s for s in steps if s["type"] == "model"]
    assert events[-1]["usage"]["completion_tokens"] == sum(m["usage"]["completion_tokens"] for m in models)

    # Two turns and one call: the key's three requests are spent.
    r = httpx.post(f"{secured}/v1/chat/completions", json=body(**plan), headers=headers, timeout=60)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"

    async def totals() -> list[Any]:
        nc = await nats.connect(nats_url)
        try:
            return await usage_stream.summarize(nc.jetstream(), key_id=created["id"])
        finally:
            await nc.close()

    by_model = {s.model: s for s in asyncio.run(totals())}
    assert by_model["user_functions.add"].requests == 1 and by_model["user_functions.add"].errors == 0
    charged = by_model[TOOL_MODEL]
    assert charged.requests == 3 and charged.errors == 1  # two turns, then the refused request
    assert charged.prompt_tokens == sum(m["usage"]["prompt_tokens"] for m in models)
    assert charged.completion_tokens == sum(m["usage"]["completion_tokens"] for m in models)


def test_the_official_openai_client_reads_orchestrated_chats(url: str) -> None:
    extra = {"ember_tools": ["user_functions.add"], "ember_tool_plan": ["user_functions.add", "none"]}
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model=TOOL_MODEL,
                messages=[{"role": "user", "content": "Add."}],
                max_tokens=MAX_TOKENS,
                parallel_tool_calls=False,
                stream=True,
                extra_body=extra,
            )
        )
    events = [c.model_extra["ember_event"] for c in chunks if c.model_extra and "ember_event" in c.model_extra]
    assert [e["type"] for e in events] == ["model", "function.started", "function", "model"]
    assert events[2]["output"] == sum(events[2]["arguments"].values())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == events[3]["content"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        events[3]["finish_reason"]
    ]
