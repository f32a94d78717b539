"""Bad input gets OpenAI-shaped errors with the right status, and the worker keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import TINY

HI = [{"role": "user", "content": "hi"}]


def post(url: str, path: str, body: object = None, **kw: object) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60, **kw)  # type: ignore[arg-type]


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    assert r.headers["x-request-id"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": TINY, "messages": "hi"}, "messages"),
        ({"model": TINY, "messages": []}, "messages"),
        ({"model": TINY}, "messages"),
        ({"messages": HI}, "model"),
        ({"model": TINY, "messages": HI, "temperature": "hot"}, "temperature"),
        ({"model": TINY, "messages": HI, "temperature": 3}, "temperature"),
        ({"model": TINY, "messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"model": TINY, "messages": HI, "n": 100}, "n"),
        ({"model": TINY, "messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": TINY, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": TINY, "messages": [{"role": "user"}]}, "messages.0"),
        ({"model": TINY, "messages": HI, "top_logprobs": 3}, None),
    ],
)
def test_bad_fields_are_400_naming_the_field(tiny_worker: str, body: dict, param: str | None) -> None:
    error = assert_error(post(tiny_worker, "/v1/chat/completions", body), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param), error


def test_invalid_json_and_non_object_bodies(tiny_worker: str) -> None:
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(f"{tiny_worker}/v1/chat/completions", content=raw, timeout=10)
        assert_error(r, 400, "invalid_json")


def test_unknown_model_is_404(tiny_worker: str) -> None:
    assert_error(post(tiny_worker, "/v1/chat/completions", {"model": "gpt-9", "messages": HI}), 404, "model_not_found")
    assert_error(post(tiny_worker, "/v1/completions", {"model": "gpt-9", "prompt": "x"}), 404, "model_not_found")


def test_a_configured_model_without_workers_is_503_at_once(tiny_worker: str) -> None:
    r = post(tiny_worker, "/v1/chat/completions", {"model": "tiny-unserved", "messages": HI})
    assert_error(r, 503, "no_worker")
    assert r.headers["retry-after"]
    assert r.elapsed.total_seconds() < 2


def test_max_tokens_over_the_context_is_400(tiny_worker: str) -> None:
    r = post(tiny_worker, "/v1/chat/completions", {"model": TINY, "messages": HI, "max_tokens": 10_000})
    error = assert_error(r, 400, "context_length_exceeded", "max_tokens")
    assert "512" in error["message"]


def test_a_prompt_over_the_context_is_400_also_when_streaming(tiny_worker: str) -> None:
    long = "word " * 2000
    for stream in (False, True):
        body = {"model": TINY, "messages": [{"role": "user", "content": long}], "stream": stream}
        assert_error(post(tiny_worker, "/v1/chat/completions", body), 400, "context_length_exceeded")


def test_huge_body_is_413_with_or_without_content_length(tiny_worker: str) -> None:
    big = {"model": TINY, "messages": [{"role": "user", "content": "x" * 200_000}]}
    assert_error(post(tiny_worker, "/v1/chat/completions", big), 413, "request_too_large")

    def chunks():
        yield b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 4096
        yield b'"}]}'

    r = httpx.post(f"{tiny_worker}/v1/chat/completions", content=chunks(), timeout=30)
    assert_error(r, 413, "request_too_large")


def test_unsupported_parameters_are_refused_clearly(tiny_worker: str) -> None:
    body = {"model": TINY, "prompt": "x", "suffix": "y"}
    assert_error(post(tiny_worker, "/v1/completions", body), 400, "unsupported_parameter", "suffix")


def test_image_content_is_refused_by_a_text_model(tiny_worker: str) -> None:
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    body = {"model": TINY, "messages": [{"role": "user", "content": parts}]}
    assert_error(post(tiny_worker, "/v1/chat/completions", body), 400, param="messages.0.content")


def test_bad_completions_prompts(tiny_worker: str) -> None:
    for prompt in ([], [1, 2, 3], None):
        assert_error(post(tiny_worker, "/v1/completions", {"model": TINY, "prompt": prompt}), 400)


def test_unknown_routes_and_methods(tiny_worker: str) -> None:
    assert_error(httpx.get(f"{tiny_worker}/v1/nope"), 404, "unknown_url")
    assert_error(httpx.get(f"{tiny_worker}/v1/chat/completions"), 405)


def test_the_worker_keeps_serving_after_all_of_that(tiny_worker: str) -> None:
    for _ in range(3):
        post(tiny_worker, "/v1/chat/completions", {"model": TINY, "messages": HI, "max_tokens": 99_999})
        httpx.post(f"{tiny_worker}/v1/chat/completions", content=b"{", timeout=10)
    r = post(tiny_worker, "/v1/chat/completions", {"model": TINY, "messages": HI, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
