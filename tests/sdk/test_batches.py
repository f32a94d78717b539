"""``client.batches`` against the fake gateway, whose batches move one step each time they are read (see
``fake_batches``): create, follow to the end, validation errors, list, cancel; and the ``Batch`` shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

import ember
from ember.types import Batch, BatchList
from tests.sdk.fake_gateway import ServerState

ENDPOINT = "/v1/chat/completions"


def jsonl(*bodies: dict[str, Any], url: str = ENDPOINT) -> bytes:
    """A batch input file: one request a line, custom ids r1, r2, ..."""
    lines = [
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body})
        for i, body in enumerate(bodies, 1)
    ]
    return "\n".join(lines).encode() + b"\n"


def upload(client: ember.Ember, content: bytes) -> str:
    return client.files.create(file=("in.jsonl", content), purpose="batch").id


def test_create_sends_openais_body(client: ember.Ember, server_state: ServerState) -> None:
    file_id = upload(client, jsonl({"model": "tiny"}))
    batch = client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, metadata={"job": "nightly"})
    assert (server_state.last.method, server_state.last.path) == ("POST", "/v1/batches")
    assert server_state.last.json == {
        "input_file_id": file_id,
        "endpoint": ENDPOINT,
        "completion_window": "24h",
        "metadata": {"job": "nightly"},
    }
    assert isinstance(batch, Batch)
    assert (batch.object, batch.status, batch.endpoint, batch.input_file_id) == (
        "batch",
        "validating",
        ENDPOINT,
        file_id,
    )
    assert batch.metadata == {"job": "nightly"} and not batch.done
    client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h")
    assert "metadata" not in server_state.last.json


def test_a_batch_runs_to_completion(client: ember.Ember, server_state: ServerState) -> None:
    file_id = upload(client, jsonl({"n": 1}, {"n": 2, "fail": True}, {"n": 3}))
    batch = client.batches.create(input_file_id=file_id, endpoint=ENDPOINT)
    seen = [batch.status]
    while not batch.done:
        batch = client.batches.retrieve(batch.id)
        seen.append(batch.status)
    assert server_state.last.path == f"/v1/batches/{batch.id}"
    assert seen == ["validating", "in_progress", *["in_progress"] * 3, "finalizing", "completed"]
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 2, "failed": 1}
    assert batch.completed_at is not None and batch.in_progress_at is not None and batch.failed_at is None
    assert batch.output_file_id is not None and batch.error_file_id is not None

    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert [(o["custom_id"], o["response"]["body"]) for o in output] == [
        ("r1", {"echo": {"n": 1}}),
        ("r3", {"echo": {"n": 3}}),
    ]
    errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("r2", 400)]
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_an_input_that_does_not_validate_fails_the_batch(client: ember.Ember) -> None:
    file_id = upload(client, jsonl({"n": 1}) + b"not json\n" + jsonl({"n": 2}, url="/v1/embeddings"))
    batch = client.batches.retrieve(client.batches.create(input_file_id=file_id, endpoint=ENDPOINT).id)
    assert batch.status == "failed" and batch.done and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.object == "list" and batch.errors.data is not None
    assert [(e.code, e.line, e.param) for e in batch.errors.data] == [
        ("invalid_json_line", 2, None),
        ("mismatched_url", 3, "url"),
    ]
    assert batch.output_file_id is None


def test_list_is_newest_first_and_pages(client: ember.Ember, server_state: ServerState) -> None:
    file_id = upload(client, jsonl({"n": 1}))
    ids = [client.batches.create(input_file_id=file_id, endpoint=ENDPOINT).id for _ in range(3)]
    page = client.batches.list(limit=2)
    assert server_state.last.query == {"limit": "2"}
    assert isinstance(page, BatchList)
    assert [b.id for b in page] == ids[::-1][:2] and page.has_more
    assert page.next_after is not None
    rest = client.batches.list(after=page.next_after, limit=2)
    assert server_state.last.query == {"after": ids[1], "limit": "2"}
    assert [b.id for b in rest.data] == [ids[0]] and not rest.has_more and rest.next_after is None


def test_cancel(client: ember.Ember, server_state: ServerState) -> None:
    file_id = upload(client, jsonl({"n": 1}, {"n": 2}))
    batch = client.batches.create(input_file_id=file_id, endpoint=ENDPOINT)
    client.batches.retrieve(batch.id)  # in_progress
    client.batches.retrieve(batch.id)  # one request done
    cancelling = client.batches.cancel(batch.id)
    assert (server_state.last.method, server_state.last.path) == ("POST", f"/v1/batches/{batch.id}/cancel")
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None and not cancelling.done
    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.done
    assert cancelled.request_counts is not None and cancelled.request_counts.completed == 1
    assert cancelled.output_file_id is not None  # what finished before the cancel is kept
    assert client.batches.cancel(batch.id).status == "cancelled"  # a finished batch stays as it is
    with pytest.raises(ember.NotFoundError, match="No such Batch object: batch_404"):
        client.batches.cancel("batch_404")
    with pytest.raises(ValueError, match="batch_id=''"):
        client.batches.retrieve("")


def test_create_with_an_unknown_file_is_refused(client: ember.Ember) -> None:
    with pytest.raises(ember.BadRequestError, match="No such File object: file-404"):
        client.batches.create(input_file_id="file-404", endpoint=ENDPOINT)


def test_batch_shape_tolerates_missing_and_extra_fields() -> None:
    minimal = {
        "id": "batch_1",
        "object": "batch",
        "endpoint": ENDPOINT,
        "input_file_id": "file-1",
        "completion_window": "24h",
        "status": "in_progress",
        "created_at": 1,
        "model": "tiny",  # newer OpenAI fields, and Ember's own, are kept
        "usage": {"input_tokens": 3},
    }
    batch = Batch.model_validate(minimal)
    assert batch.errors is None and batch.request_counts is None and batch.output_file_id is None
    assert batch.model == "tiny"  # an extension field is kept
    with pytest.raises(ValueError, match="status"):
        Batch.model_validate({**minimal, "status": "sleeping"})


async def test_async_batches(aclient: ember.AsyncEmber, server_state: ServerState) -> None:
    file_id = (await aclient.files.create(file=("in.jsonl", jsonl({"n": 1})), purpose="batch")).id
    batch = await aclient.batches.create(input_file_id=file_id, endpoint=ENDPOINT, metadata={"k": "v"})
    assert server_state.last.json["metadata"] == {"k": "v"}
    while not batch.done:
        batch = await aclient.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id is not None
    assert b'"custom_id": "r1"' in (await aclient.files.content(batch.output_file_id)).content
    assert [b.id for b in await aclient.batches.list(limit=5)] == [batch.id]
    second = await aclient.batches.create(input_file_id=file_id, endpoint=ENDPOINT)
    assert (await aclient.batches.cancel(second.id)).status == "cancelling"
