"""Who sees which files and batches, with keys on: a key only its own, the admin key everyone's (to read, cancel
and delete, never to upload or create); and the upload size limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ember.config import load_settings
from tests.batches.test_batch_api import chat_line, jsonl
from tests.helpers.cluster import GatewayThread

ADMIN = "admin-" + "owners" * 4


@pytest.fixture(scope="module")
def keyed(cluster_config: Path, nats_url: str) -> Iterator[GatewayThread]:
    base = load_settings(cluster_config)
    settings = base.model_copy(
        update={
            "auth": base.auth.model_copy(update={"enabled": True, "admin_key": ADMIN}),
            "files": base.files.model_copy(update={"max_bytes": 4096}),
        }
    )
    gw = GatewayThread(settings, nats_url).start()
    yield gw
    gw.stop()


def client_of(gw: GatewayThread, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=secret, max_retries=0, timeout=30)


def new_key(gw: GatewayThread) -> openai.OpenAI:
    r = httpx.post(f"{gw.url}/v1/admin/keys", json={"tier": "free"}, headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201, r.text
    return client_of(gw, r.json()["secret"])


def test_a_key_sees_only_its_own_files_and_batches_and_the_admin_sees_all(keyed: GatewayThread) -> None:
    alice, bob, admin = new_key(keyed), new_key(keyed), client_of(keyed, ADMIN)
    mine = alice.files.create(file=("a.jsonl", jsonl([chat_line("x", "hi")])), purpose="batch")
    for attempt in (
        lambda: bob.files.retrieve(mine.id),
        lambda: bob.files.content(mine.id),
        lambda: bob.files.delete(mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert mine.id not in [f.id for f in bob.files.list()]
    with pytest.raises(openai.BadRequestError) as e:  # another key's file is no file at all
        bob.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.code == "file_not_found"
    batch = alice.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(batch.id)
    assert batch.id not in [b.id for b in bob.batches.list()]
    # The admin key: every key's, to read and to cancel...
    assert admin.files.retrieve(mine.id).id == mine.id
    assert mine.id in [f.id for f in admin.files.list()]
    assert admin.batches.retrieve(batch.id).id == batch.id
    assert admin.batches.cancel(batch.id).status in ("cancelling", "cancelled", "completed")
    # ...but a file or a batch belongs to the key it is billed to.
    with pytest.raises(openai.PermissionDeniedError):
        admin.files.create(file=("b.jsonl", b"{}"), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError):
        admin.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert admin.files.delete(mine.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(mine.id)
    with pytest.raises(openai.AuthenticationError):
        client_of(keyed, "em_not-a-key").files.list()


def test_an_upload_over_the_limit_is_refused_with_413(keyed: GatewayThread) -> None:
    alice = new_key(keyed)
    with pytest.raises(openai.APIStatusError) as e:
        alice.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
    assert e.value.status_code == 413
    assert alice.files.create(file=("small.jsonl", b"x" * 4000), purpose="batch").bytes == 4000
