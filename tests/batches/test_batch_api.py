"""The Files and Batch APIs end to end with the official openai client: a real gateway, NATS and text worker."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest

from ember.batches.store import BatchStore
from ember.bus.connection import connect
from tests.conftest import TINY


@pytest.fixture
def client(tiny_worker: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_worker}/v1", api_key="unused", max_retries=0)


def chat_line(custom_id: str, content: str, max_tokens: int = 4) -> dict[str, object]:
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
    }
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def wait_done(client: openai.OpenAI, batch_id: str, timeout: float = 120) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.2)


def test_a_chat_batch_answers_every_line_exactly_once(client: openai.OpenAI) -> None:
    lines = [chat_line(f"q-{i}", f"question {i}") for i in range(12)]
    upload = client.files.create(file=("questions.jsonl", jsonl(lines)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(jsonl(lines)) and upload.filename == "questions.jsonl"
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "t"}
    )
    assert batch.status == "validating" and batch.metadata == {"run": "t"}
    done = wait_done(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.total == 12 and done.request_counts.completed == 12
    assert done.error_file_id is None and done.output_file_id is not None
    out = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"q-{i}" for i in range(12))
    for o in out:
        assert o["error"] is None and o["response"]["status_code"] == 200
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 4
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert done.id in [b.id for b in client.batches.list()]


def test_a_file_with_bad_lines_fails_validation_naming_each_line(client: openai.OpenAI) -> None:
    good = chat_line("ok", "hi")
    raw = b"\n".join(
        [
            json.dumps(good).encode(),
            b"{not json",
            json.dumps({**good, "custom_id": "wrong-url", "url": "/v1/completions"}).encode(),
            json.dumps({**good, "custom_id": "ok"}).encode(),  # the same custom_id again
            json.dumps({**chat_line("no-model", "hi"), "body": {**good["body"], "model": "nope"}}).encode(),  # type: ignore[dict-item]
            json.dumps({**good, "custom_id": "streams", "body": {**good["body"], "stream": True}}).encode(),  # type: ignore[dict-item]
            json.dumps({**good, "custom_id": "bad-body", "body": {"model": TINY, "messages": "hi"}}).encode(),
        ]
    )
    upload = client.files.create(file=("bad.jsonl", raw), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_done(client, batch.id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.errors is not None and done.errors.data is not None
    found = {(e.line, e.code) for e in done.errors.data}
    assert found == {
        (2, "invalid_json_line"),
        (3, "mismatched_endpoint"),
        (4, "duplicate_custom_id"),
        (5, "model_not_found"),
        (6, "invalid_request"),
        (7, "invalid_request"),
    }


def test_a_batch_needs_a_batch_file_of_its_owner(client: openai.OpenAI) -> None:
    other = client.files.create(file=("notes.txt", b"some notes"), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.code == "invalid_file_purpose"
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.code == "file_not_found"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=other.id, endpoint="/v1/images/generations", completion_window="24h")  # type: ignore[arg-type]


def test_cancelling_stops_new_lines_and_accounts_for_every_line(client: openai.OpenAI) -> None:
    lines = [chat_line(f"c-{i}", f"long {i}", max_tokens=48) for i in range(40)]
    upload = client.files.create(file=("many.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = wait_done(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    answered = []
    for file_id in (done.output_file_id, done.error_file_id):
        if file_id is not None:
            answered += [json.loads(x) for x in client.files.content(file_id).text.splitlines()]
    # Every line once: answered (if it was running when the cancel came) or written as cancelled.
    assert sorted(a["custom_id"] for a in answered) == sorted(f"c-{i}" for i in range(40))
    cancelled = [a for a in answered if a["error"] is not None]
    assert cancelled and all(a["error"]["code"] == "batch_cancelled" for a in cancelled)
    assert client.batches.cancel(batch.id).status == "cancelled"  # a finished batch stays as it is


def test_a_completions_batch(client: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": f"p-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": TINY, "prompt": f"once {i}", "max_tokens": 3, "ignore_eos": True},
        }
        for i in range(3)
    ]
    upload = client.files.create(file=("prompts.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
    done = wait_done(client, batch.id)
    assert done.status == "completed" and done.output_file_id is not None
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["p-0", "p-1", "p-2"]  # in the input's order
    assert all(o["response"]["body"]["object"] == "text_completion" for o in out)


def test_files_list_retrieve_download_and_delete(client: openai.OpenAI) -> None:
    data = b'{"a": 1}\n' * 1000
    first = client.files.create(file=("one.jsonl", data), purpose="batch")
    second = client.files.create(file=("two.txt", b"hello"), purpose="user_data")
    assert client.files.retrieve(first.id).bytes == len(data)
    assert client.files.content(first.id).content == data
    listed = [f.id for f in client.files.list(purpose="user_data")]
    assert second.id in listed and first.id not in listed
    newest = client.files.list(limit=1)
    assert [f.id for f in newest.data] == [second.id] and newest.has_more
    deleted = client.files.delete(first.id)
    assert deleted.deleted and deleted.id == first.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(first.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", b"x"), purpose="nonsense")  # type: ignore[arg-type]
    assert e.value.param == "purpose"


def test_lines_left_when_the_completion_window_ends_are_written_as_expired(
    client: openai.OpenAI, nats_url: str
) -> None:
    lines = [chat_line(f"e-{i}", f"slow {i}", max_tokens=48) for i in range(40)]
    upload = client.files.create(file=("slow.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")

    async def end_the_window() -> None:  # as if 24 hours had passed
        nc = await connect(nats_url, name="test-expiry")
        try:
            store = await BatchStore.open(nc.jetstream())
            await store.change(batch.id, lambda r: r.model_copy(update={"expires_at": int(time.time()) - 1}))
        finally:
            await nc.close()

    asyncio.run(end_the_window())
    done = wait_done(client, batch.id)
    assert done.status == "expired" and done.expired_at is not None
    answered = []
    for file_id in (done.output_file_id, done.error_file_id):
        if file_id is not None:
            answered += [json.loads(x) for x in client.files.content(file_id).text.splitlines()]
    assert sorted(a["custom_id"] for a in answered) == sorted(f"e-{i}" for i in range(40))
    expired = [a for a in answered if a["error"] is not None]
    assert expired and all(a["error"]["code"] == "batch_expired" for a in expired)
    assert done.request_counts is not None and done.request_counts.failed == len(expired)


def test_the_ember_sdk_runs_a_batch(tiny_worker: str) -> None:
    import ember

    with ember.Ember(base_url=f"{tiny_worker}/v1", api_key="unused") as client:
        upload = client.files.create(
            file=("sdk.jsonl", jsonl([chat_line(f"s-{i}", "hi") for i in range(3)])), purpose="batch"
        )
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions")
        deadline = time.monotonic() + 120
        while not (batch := client.batches.retrieve(batch.id)).done:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert batch.status == "completed" and batch.output_file_id is not None
        lines = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert [x["custom_id"] for x in lines] == ["s-0", "s-1", "s-2"]
