"""POST /v1/completions (legacy) through the real stack."""

from __future__ import annotations

import json

import httpx

from tests.conftest import TINY


def complete(url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"model": TINY, **body}, timeout=60)


def test_completion_shape(tiny_worker: str) -> None:
    r = complete(tiny_worker, prompt="Once upon a time", max_tokens=5, temperature=0, ignore_eos=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert body["usage"]["completion_tokens"] == 5


def test_default_max_tokens_is_16(tiny_worker: str) -> None:
    body = complete(tiny_worker, prompt="Hello", temperature=0, ignore_eos=True).json()
    assert body["usage"]["completion_tokens"] == 16


def test_several_prompts_times_n_number_choices_like_openai(tiny_worker: str) -> None:
    body = complete(tiny_worker, prompt=["one", "two"], n=2, max_tokens=3, temperature=0, ignore_eos=True).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    # Greedy: both samples of one prompt agree.
    texts = [c["text"] for c in body["choices"]]
    assert texts[0] == texts[1] and texts[2] == texts[3]
    assert body["usage"]["completion_tokens"] == 12


def test_echo_and_legacy_logprobs(tiny_worker: str) -> None:
    plain = complete(tiny_worker, prompt="abc", max_tokens=4, temperature=0, ignore_eos=True).json()
    body = complete(tiny_worker, prompt="abc", max_tokens=4, temperature=0, echo=True, logprobs=2, ignore_eos=True)
    choice = body.json()["choices"][0]
    assert choice["text"] == "abc" + plain["choices"][0]["text"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert lp["text_offset"][0] == 3
    assert all(len(top) <= 2 for top in lp["top_logprobs"])


def test_streamed_completion_matches(tiny_worker: str) -> None:
    plain = complete(tiny_worker, prompt="xyz", max_tokens=6, temperature=0, ignore_eos=True).json()
    payload = {"model": TINY, "prompt": "xyz", "max_tokens": 6, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{tiny_worker}/v1/completions", json=payload, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
