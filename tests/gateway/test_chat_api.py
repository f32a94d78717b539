"""POST /v1/chat/completions through the real gateway, NATS and a tiny-model worker process."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import TINY

HI = [{"role": "user", "content": "Say hi"}]


def chat(url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": TINY, "messages": HI, **body}, timeout=60)


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def stream_chat(url: str, **body: object) -> tuple[httpx.Response, list[str]]:
    payload = {"model": TINY, "messages": HI, "stream": True, **body}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=60) as r:
        return r, sse_events(r)


def test_chat_completion_shape_and_usage(tiny_worker: str) -> None:
    r = chat(tiny_worker, max_tokens=6, temperature=0)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"].startswith("req_")
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == TINY
    assert body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    assert usage["completion_tokens"] <= 6 and usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_is_deterministic_and_streaming_gives_the_same_text(tiny_worker: str) -> None:
    a = chat(tiny_worker, max_tokens=12, temperature=0).json()["choices"][0]["message"]["content"]
    b = chat(tiny_worker, max_tokens=12, temperature=0).json()["choices"][0]["message"]["content"]
    assert a == b
    r, events = stream_chat(tiny_worker, max_tokens=12, temperature=0)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == a
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_stream_usage_comes_last_when_asked(tiny_worker: str) -> None:
    _, events = stream_chat(tiny_worker, max_tokens=4, temperature=0, stream_options={"include_usage": True})
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-1])


def test_seed_reproduces_sampled_output(tiny_worker: str) -> None:
    texts = [
        chat(tiny_worker, max_tokens=10, temperature=1.0, seed=1234).json()["choices"][0]["message"]["content"]
        for _ in range(2)
    ]
    assert texts[0] == texts[1]


def test_n_choices_are_independent_jobs(tiny_worker: str) -> None:
    body = chat(tiny_worker, max_tokens=8, temperature=1.0, n=3, seed=5).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 24
    assert len({c["message"]["content"] for c in body["choices"]}) > 1


def test_streaming_several_choices(tiny_worker: str) -> None:
    _, events = stream_chat(tiny_worker, max_tokens=5, temperature=0, n=2)
    chunks = [json.loads(e) for e in events[:-1]]
    finished = {c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]}
    assert finished == {0, 1}


def test_max_tokens_and_max_completion_tokens(tiny_worker: str) -> None:
    r = chat(tiny_worker, max_completion_tokens=3, temperature=0, ignore_eos=True)
    assert r.json()["usage"]["completion_tokens"] == 3
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_stop_string_ends_the_text_before_it(tiny_worker: str) -> None:
    full = chat(tiny_worker, max_tokens=20, temperature=0, ignore_eos=True).json()["choices"][0]["message"]["content"]
    assert len(full) > 4
    stop = full[3:5]
    r = chat(tiny_worker, max_tokens=20, temperature=0, ignore_eos=True, stop=[stop]).json()
    text = r["choices"][0]["message"]["content"]
    assert text == full[: full.index(stop)]
    assert r["choices"][0]["finish_reason"] == "stop"


def test_logprobs_in_openai_shape(tiny_worker: str) -> None:
    body = chat(tiny_worker, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    for entry in content:
        assert entry["logprob"] <= 0 and isinstance(entry["bytes"], list)
        assert len(entry["top_logprobs"]) == 2
        # Greedy picks the most likely token, so it is the first alternative.
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-5)


def test_content_parts_and_developer_role(tiny_worker: str) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]},
    ]
    r = httpx.post(
        f"{tiny_worker}/v1/chat/completions", json={"model": TINY, "messages": messages, "max_tokens": 2}, timeout=60
    )
    assert r.status_code == 200, r.text


def test_a_client_id_header_is_kept(tiny_worker: str) -> None:
    r = httpx.post(
        f"{tiny_worker}/v1/chat/completions",
        json={"model": TINY, "messages": HI, "max_tokens": 1},
        headers={"x-request-id": "trace-42"},
        timeout=60,
    )
    assert r.headers["x-request-id"] == "trace-42"


def test_a_repeated_prompt_reports_its_cached_tokens(tiny_worker: str) -> None:
    """The second request with the same long system prompt takes its blocks from the worker's prefix cache, and
    says so in usage.prompt_tokens_details, streamed or not."""
    system = "You are a careful assistant who answers in one short sentence. " * 6
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Say hi"}]
    first = chat(tiny_worker, messages=messages, max_tokens=2, temperature=0).json()["usage"]
    again = chat(tiny_worker, messages=messages, max_tokens=2, temperature=0).json()["usage"]
    assert first["prompt_tokens"] == again["prompt_tokens"] > 32
    assert again["prompt_tokens_details"]["cached_tokens"] >= 32  # at least two full 16-token blocks
    assert again["prompt_tokens_details"]["cached_tokens"] < again["prompt_tokens"]
    _, events = stream_chat(
        tiny_worker, messages=messages, max_tokens=2, temperature=0, stream_options={"include_usage": True}
    )
    usage = json.loads(events[-2])["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens_details"]["cached_tokens"]
