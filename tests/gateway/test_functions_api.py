"""The functions API end to end: a real `ember worker functions` process, the real gateway, a real nats-server."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TINY
from tests.functions.cluster import USER_MODULE, functions_worker
from tests.helpers.cluster import GatewayThread

USER = ["user_functions.lookup_order", "user_functions.add", "user_functions.explode", "user_functions.hang"]
BUILTINS = ["generate_image", "transcribe_audio", "chat"]


@pytest.fixture(scope="module")
def fn_url(
    cluster_config: Path, nats_url: str, gateway: GatewayThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("logs") / "functions-worker.log"
    with functions_worker(cluster_config, nats_url, gateway.url, [USER_MODULE], USER + BUILTINS, log):
        yield gateway.url


def invoke(url: str, name: str, body: dict[str, Any], query: str = "") -> httpx.Response:
    return httpx.post(f"{url}/v1/functions/{name}/invoke{query}", json=body, timeout=30)


def test_list_shows_builtins_and_user_functions_with_schemas(fn_url: str) -> None:
    data = httpx.get(f"{fn_url}/v1/functions").json()["data"]
    by_name = {f["name"]: f for f in data}
    assert set(USER + BUILTINS) <= set(by_name)
    lookup = by_name["user_functions.lookup_order"]
    assert lookup["object"] == "function" and lookup["workers"] == 1
    assert lookup["description"] == "Find an order by its id: its status and total (and its items)."
    schema = lookup["input_schema"]
    assert schema["required"] == ["order_id"]
    assert schema["properties"]["order_id"]["description"] == "e.g. A-1001"
    assert schema["additionalProperties"] is False
    assert set(lookup["output_schema"]["properties"]) == {"order_id", "status", "total", "items"}
    assert by_name["user_functions.hang"]["timeout_s"] == 0.5
    one = httpx.get(f"{fn_url}/v1/functions/user_functions.add").json()
    assert one["input_schema"]["required"] == ["a", "b"] and one["output_schema"] == {"type": "integer"}


def test_invoke_runs_plain_and_async_functions(fn_url: str) -> None:
    r = invoke(fn_url, "user_functions.lookup_order", {"input": {"order_id": "A-1001", "include_items": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "function.result" and body["function"] == "user_functions.lookup_order"
    assert body["output"] == {"order_id": "A-1001", "status": "shipped", "total": 42.5, "items": ["kettle", "mug"]}
    assert r.headers["x-ember-worker"]
    r = invoke(fn_url, "user_functions.add", {"input": {"a": 40, "b": 2}})
    assert r.json()["output"] == 42


def test_bad_input_is_a_400_before_any_work(fn_url: str) -> None:
    r = invoke(fn_url, "user_functions.add", {"input": {"a": "forty", "b": 2}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_function_input" and err["param"] == "input.a"
    assert "'forty' is not of type 'integer'" in err["message"]
    r = invoke(fn_url, "user_functions.lookup_order", {"input": {}})
    assert r.status_code == 400 and "'order_id' is a required property" in r.json()["error"]["message"]
    r = invoke(fn_url, "user_functions.add", {"input": {"a": 1, "b": 2, "c": 3}})
    assert r.status_code == 400
    r = invoke(fn_url, "user_functions.add", {"inputs": {"a": 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "inputs"
    r = invoke(fn_url, "user_functions.add", {"input": {"a": 1, "b": 2}, "timeout_s": 10_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "timeout_s"


def test_unknown_function_is_a_404(fn_url: str) -> None:
    for name in ("nope", "user_functions.nope", "bad name!"):
        r = invoke(fn_url, name, {"input": {}})
        assert r.status_code == 404, name
        assert r.json()["error"]["code"] == "function_not_found"
    assert httpx.get(f"{fn_url}/v1/functions/nope").status_code == 404


def test_a_function_that_raises_is_a_clear_500_and_the_worker_lives_on(fn_url: str) -> None:
    r = invoke(fn_url, "user_functions.explode", {"input": {"message": "kaboom"}})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "function_raised" and err["type"] == "function_error"
    assert "RuntimeError('kaboom')" in err["message"]
    r = invoke(fn_url, "user_functions.lookup_order", {"input": {"order_id": "Z-9"}})
    assert r.status_code == 500 and "KeyError" in r.json()["error"]["message"]
    assert invoke(fn_url, "user_functions.add", {"input": {"a": 1, "b": 1}}).json()["output"] == 2


@pytest.mark.parametrize("name", ["user_functions.hang", "user_functions.hang_sync"])
def test_a_function_that_hangs_times_out(fn_url: str, name: str) -> None:
    started = time.monotonic()
    r = invoke(fn_url, name, {"input": {}})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "function_timeout"
    assert "0.5s" in r.json()["error"]["message"]
    assert time.monotonic() - started < 10
    # A request may shorten a function's timeout, never lengthen it past the server's maximum.
    r = invoke(fn_url, "user_functions.hang_sync", {"input": {"seconds": 5}, "timeout_s": 0.2})
    assert r.status_code == 504 and "0.2s" in r.json()["error"]["message"]


def test_an_output_that_breaks_its_return_type_is_refused(fn_url: str) -> None:
    r = invoke(fn_url, "user_functions.wrong_output", {"input": {}})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "invalid_function_output"


def poll(url: str, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed"):
            return body
        time.sleep(0.05)
    raise TimeoutError(job_id)


def test_async_invocations_are_polled_by_job_id(fn_url: str) -> None:
    r = invoke(fn_url, "user_functions.add", {"input": {"a": 2, "b": 3}}, "?async=true")
    assert r.status_code == 202
    job = r.json()
    assert job["object"] == "function.job" and job["status"] == "queued" and job["id"].startswith("fnjob_")
    done = poll(fn_url, job["id"])
    assert done["status"] == "succeeded" and done["output"] == 5 and done["finished_at"] >= done["created_at"]

    failed = poll(fn_url, invoke(fn_url, "user_functions.hang", {"input": {}}, "?async=true").json()["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "function_timeout"
    assert failed["error"]["status"] == 504
    # Bad input is still refused up front, not as a failed job.
    assert invoke(fn_url, "user_functions.add", {"input": {}}, "?async=true").status_code == 400
    r = httpx.get(f"{fn_url}/v1/jobs/fnjob_0000")
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"


def test_builtin_chat_calls_the_text_model_over_the_bus(fn_url: str, tiny_worker: str) -> None:
    r = invoke(fn_url, "chat", {"input": {"prompt": "Hello", "model": TINY, "max_tokens": 4, "temperature": 0}})
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    assert out["model"] == TINY and isinstance(out["text"], str)
    assert 1 <= out["completion_tokens"] <= 4 and out["finish_reason"] in ("stop", "length")
    # The model's own refusal comes back as the call's error, unchanged.
    r = invoke(fn_url, "chat", {"input": {"prompt": "Hello " * 2000, "model": TINY}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_builtins_without_a_model_of_their_kind_say_so(fn_url: str) -> None:
    wav = base64.b64encode(b"RIFF0000WAVEfmt ").decode()
    r = invoke(fn_url, "transcribe_audio", {"input": {"audio": f"data:audio/wav;base64,{wav}"}})
    assert r.status_code == 503 and r.json()["error"]["code"] in ("no_model", "no_worker")
    r = invoke(fn_url, "transcribe_audio", {"input": {"audio": "%%% not base64"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input.audio"
