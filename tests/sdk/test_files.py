"""``client.files`` over loopback against the fake gateway: what a multipart upload sends, and list, retrieve,
delete and download."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import ember
from ember.types import FileDeleted, FileList, FileObject
from tests.sdk.fake_gateway import ServerState

JSONL = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


def test_upload_a_path_sends_its_name_purpose_and_bytes(
    client: ember.Ember, server_state: ServerState, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(JSONL)
    created = client.files.create(file=path, purpose="batch")
    recorded = server_state.last
    assert (recorded.method, recorded.path) == ("POST", "/v1/files")
    assert recorded.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert recorded.headers["authorization"] == "Bearer sk-test"
    assert recorded.form == {"file": ("requests.jsonl", JSONL, "application/octet-stream"), "purpose": "batch"}
    assert isinstance(created, FileObject)
    assert (created.id, created.object, created.bytes) == ("file-1", "file", len(JSONL))
    assert (created.filename, created.purpose, created.status, created.expires_at) == (
        "requests.jsonl",
        "batch",
        "processed",
        None,
    )
    assert created.ember_store == "memory"  # an extension field is kept
    assert created._request_id == "req-1"


@pytest.mark.parametrize(
    ("file", "part"),
    [
        (JSONL, ("upload", JSONL, "application/octet-stream")),
        (io.BytesIO(JSONL), ("upload", JSONL, "application/octet-stream")),
        (("in.jsonl", JSONL), ("in.jsonl", JSONL, "application/octet-stream")),
        (("in.jsonl", io.BytesIO(JSONL), "application/jsonl"), ("in.jsonl", JSONL, "application/jsonl")),
    ],
    ids=["bytes", "nameless-file", "tuple", "tuple-with-type"],
)
def test_upload_forms(
    client: ember.Ember, server_state: ServerState, file: ember.resources.files.FileTypes, part: tuple[str, bytes, str]
) -> None:
    client.files.create(file=file, purpose="user_data", extra_body={"note": 7})
    assert server_state.last.form == {"file": part, "purpose": "user_data", "note": "7"}


def test_upload_an_open_file_sends_its_base_name(
    client: ember.Ember, server_state: ServerState, tmp_path: Path
) -> None:
    (tmp_path / "data.jsonl").write_bytes(JSONL)
    with open(tmp_path / "data.jsonl", "rb") as f:
        assert client.files.create(file=f, purpose="batch").filename == "data.jsonl"
    assert server_state.last.form is not None and server_state.last.form["file"][0] == "data.jsonl"


def test_a_failed_upload_is_retried_with_the_same_bytes(client: ember.Ember, server_state: ServerState) -> None:
    # A file object is read once: the retry must not send an empty, already-read file.
    extra = {"x-fail-status": "503", "x-fail-times": "1"}
    created = client.files.create(file=("a.jsonl", io.BytesIO(JSONL)), purpose="batch", extra_headers=extra)
    assert server_state.attempts == 2
    assert created.bytes == len(JSONL)


def test_list_pages_and_filters(client: ember.Ember, server_state: ServerState) -> None:
    for name in ("one", "two", "three"):
        client.files.create(file=(name, b"x"), purpose="batch")
    client.files.create(file=("other", b"y"), purpose="user_data")

    everything = client.files.list()
    assert isinstance(everything, FileList)
    assert [f.filename for f in everything] == ["other", "three", "two", "one"]  # newest first by default
    assert (len(everything), everything.has_more, everything.next_after) == (4, False, None)
    assert server_state.last.query == {}

    first = client.files.list(purpose="batch", limit=2, order="asc")
    assert server_state.last.query == {"purpose": "batch", "limit": "2", "order": "asc"}
    assert [f.filename for f in first.data] == ["one", "two"]
    assert (first.first_id, first.last_id, first.has_more, first.next_after) == ("file-1", "file-2", True, "file-2")
    assert first.next_after is not None
    rest = client.files.list(purpose="batch", limit=2, order="asc", after=first.next_after)
    assert server_state.last.query["after"] == "file-2"
    assert [f.filename for f in rest] == ["three"]
    assert not rest.has_more


def test_retrieve_delete_and_not_found(client: ember.Ember, server_state: ServerState) -> None:
    created = client.files.create(file=("a.jsonl", JSONL), purpose="batch")
    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert server_state.last.path == "/v1/files/file-1"
    deleted = client.files.delete(created.id)
    assert (server_state.last.method, server_state.last.path) == ("DELETE", "/v1/files/file-1")
    assert isinstance(deleted, FileDeleted)
    assert (deleted.id, deleted.object, deleted.deleted) == ("file-1", "file", True)
    with pytest.raises(ember.NotFoundError, match="No such File object: file-1"):
        client.files.retrieve(created.id)
    with pytest.raises(ember.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(ValueError, match="file_id=''"):
        client.files.delete("")


def test_content_is_the_raw_bytes(client: ember.Ember, server_state: ServerState, tmp_path: Path) -> None:
    created = client.files.create(file=("r.jsonl", JSONL, "application/jsonl"), purpose="batch")
    content = client.files.content(created.id)
    assert server_state.last.path == "/v1/files/file-1/content"
    assert content.content == content.read() == JSONL
    assert content.text == JSONL.decode()
    assert content.content_type == "application/jsonl"
    assert json.loads(content.text)["custom_id"] == "a"
    content.write_to_file(tmp_path / "copy.jsonl")
    assert (tmp_path / "copy.jsonl").read_bytes() == JSONL


async def test_async_files(aclient: ember.AsyncEmber, server_state: ServerState, tmp_path: Path) -> None:
    created = await aclient.files.create(file=("a.jsonl", JSONL), purpose="batch")
    assert server_state.last.form == {"file": ("a.jsonl", JSONL, "application/octet-stream"), "purpose": "batch"}
    assert [f.id for f in await aclient.files.list(purpose="batch")] == [created.id]
    assert (await aclient.files.retrieve(created.id)).filename == "a.jsonl"
    content = await aclient.files.content(created.id)
    assert content.text == JSONL.decode() and await content.read() == JSONL
    await content.write_to_file(tmp_path / "copy.jsonl")
    assert (tmp_path / "copy.jsonl").read_bytes() == JSONL
    assert (await aclient.files.delete(created.id)).deleted
    with pytest.raises(ember.NotFoundError):
        await aclient.files.retrieve(created.id)
