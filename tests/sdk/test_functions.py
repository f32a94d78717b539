"""``client.functions`` against the real gateway and a real functions worker, sync and async."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import ember
from tests.functions.cluster import USER_MODULE, functions_worker
from tests.helpers.cluster import GatewayThread


@pytest.fixture(scope="module")
def base_url(
    cluster_config: Path, nats_url: str, gateway: GatewayThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("logs") / "sdk-functions.log"
    names = ["user_functions.lookup_order", "user_functions.add", "user_functions.hang"]
    with functions_worker(cluster_config, nats_url, gateway.url, [USER_MODULE], names, log):
        yield f"{gateway.url}/v1"


def test_list_retrieve_and_invoke(base_url: str) -> None:
    with ember.Ember(base_url=base_url, max_retries=0) as client:
        listed = {f.name: f for f in client.functions.list()}
        assert "user_functions.add" in listed and "generate_image" in listed
        assert listed["user_functions.add"].input_schema["required"] == ["a", "b"]
        assert client.functions.retrieve("user_functions.add").output_schema == {"type": "integer"}
        result = client.functions.invoke("user_functions.add", {"a": 2, "b": 40})
        assert result.output == 42 and result.function == "user_functions.add" and result._request_id
        order = client.functions.invoke("user_functions.lookup_order", {"order_id": "A-1002"}).output
        assert order == {"order_id": "A-1002", "status": "processing", "total": 19.0, "items": None}


def test_errors_are_typed(base_url: str) -> None:
    with ember.Ember(base_url=base_url, max_retries=0) as client:
        with pytest.raises(ember.NotFoundError) as nf:
            client.functions.invoke("user_functions.nope", {})
        assert nf.value.code == "function_not_found"
        with pytest.raises(ember.BadRequestError) as bad:
            client.functions.invoke("user_functions.add", {"a": 1})
        assert bad.value.code == "invalid_function_input"
        with pytest.raises(ember.APIStatusError) as late:
            client.functions.invoke("user_functions.hang", timeout_s=0.2)
        assert late.value.status_code == 504 and late.value.code == "function_timeout"


async def test_async_client_submits_and_waits(base_url: str) -> None:
    async with ember.AsyncEmber(base_url=base_url, max_retries=0) as client:
        job = await client.functions.submit("user_functions.add", {"a": 1, "b": 2})
        assert job.status == "queued" and not job.done
        done = await client.functions.wait(job.id, poll_interval_s=0.05, max_wait_s=20)
        assert done.status == "succeeded" and done.output == 3 and done.error is None
        failed = await client.functions.wait((await client.functions.submit("user_functions.hang")).id, max_wait_s=20)
        assert failed.status == "failed" and failed.error is not None and failed.error.code == "function_timeout"
        assert (await client.functions.invoke("user_functions.add", {"a": 5, "b": 5})).output == 10


def test_submit_with_an_idempotency_key_and_cancel(base_url: str) -> None:
    with ember.Ember(base_url=base_url, max_retries=0) as client:
        first = client.functions.submit("user_functions.hang", idempotency_key="sdk-retry-1")
        again = client.functions.submit("user_functions.hang", idempotency_key="sdk-retry-1")
        assert again.id == first.id  # a retried submit gets the same job, not a second one
        cancelled = client.functions.cancel_job(first.id)
        assert cancelled.status == "cancelled" and cancelled.done
        assert client.functions.wait(first.id, max_wait_s=10).status == "cancelled"
        assert client.functions.cancel_job(first.id).status == "cancelled"  # cancelling twice is harmless
        done = client.functions.submit("user_functions.add", {"a": 1, "b": 1})
        assert client.functions.wait(done.id, poll_interval_s=0.05, max_wait_s=20).status == "succeeded"
        with pytest.raises(ember.APIStatusError) as finished:
            client.functions.cancel_job(done.id)
        assert finished.value.status_code == 409 and finished.value.code == "job_finished"
