"""OpenAI's Files API: upload, list, retrieve, download and delete files (``ember.files.store``).

POST   /v1/files                  multipart: file, purpose      the file object
GET    /v1/files                  ?purpose ?limit ?after ?order  a page of the key's files
GET    /v1/files/{id}                                            the file object
GET    /v1/files/{id}/content                                    its bytes, streamed
DELETE /v1/files/{id}                                            {"id", "object": "file", "deleted": true}

A key sees only its own files: another key's file is a 404, as a missing one is. The admin key sees every key's
files, and may download and delete them, but does not upload (a file belongs to the key it is billed to).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, cast, get_args

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ember.bus.blobs import BlobNotFound
from ember.files.store import UPLOAD_PURPOSES, FileRecord, FileStore, Purpose, StorageFull
from ember.gateway.auth import current_key, is_admin
from ember.gateway.errors import InvalidRequest, NotFound, PermissionDenied, RequestTooLarge
from ember.gateway.routes.audio import read_form
from ember.gateway.routes.common import settings
from ember.gateway.state import GatewayState, state

PATH = "/v1/files"
# The multipart body may add the purpose field and the boundaries to the file.
FORM_OVERHEAD_BYTES = 256 * 1024
LIST_LIMIT = 10_000  # OpenAI's default and maximum page of files


def routes() -> list[BaseRoute]:
    return [
        Route(PATH, upload, methods=["POST"]),
        Route(PATH, list_files, methods=["GET"]),
        Route(PATH + "/{file_id}", retrieve, methods=["GET"]),
        Route(PATH + "/{file_id}", delete, methods=["DELETE"]),
        Route(PATH + "/{file_id}/content", content, methods=["GET"]),
    ]


def store(request: Request) -> FileStore:
    return GatewayState.running(state(request).files, "the file store")


async def owned(request: Request, file_id: str) -> FileRecord:
    """The file if the request's key owns it (or it is the admin's request); 404 otherwise, whichever it was."""
    record = await store(request).get(file_id)
    if record is None or not (is_admin(request) or record.key_id == current_key(request).id):
        raise NotFound(f"No such File object: {file_id}", code="file_not_found", param="file_id")
    return record


async def upload(request: Request) -> Response:
    if is_admin(request):
        raise PermissionDenied("files belong to the key that uploads them: upload with an API key", code="admin_key")
    form = await read_form(request)
    try:
        purpose = _purpose(form)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("'file' is required: the file, as a multipart file part", param="file")
        limit = settings(request).files.max_bytes
        size = upload.size if upload.size is not None else 0
        if size > limit:
            raise RequestTooLarge(f"file of {size} bytes exceeds the limit of {limit} bytes", param="file")
        if size == 0:
            raise InvalidRequest("the uploaded file is empty", code="empty_file", param="file")
        # Its last path part, without what would break the download's Content-Disposition header.
        filename = re.sub(r'["\\\x00-\x1f\x7f]', "_", (upload.filename or "upload").rsplit("/", 1)[-1])[:255]
        try:
            record = await store(request).create(
                upload.file, filename=filename, purpose=purpose, key_id=current_key(request).id
            )
        except StorageFull as e:
            raise RequestTooLarge(f"the file store is full: {e}", code="storage_full", param="file") from e
    finally:
        await form.close()
    return JSONResponse(record.public())


def _purpose(form: FormData) -> Purpose:
    purpose = form.get("purpose")
    if not isinstance(purpose, str) or not purpose:
        raise InvalidRequest("'purpose' is required: one of " + ", ".join(UPLOAD_PURPOSES), param="purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"invalid purpose {purpose!r}: expected one of " + ", ".join(UPLOAD_PURPOSES),
            code="invalid_value",
            param="purpose",
        )
    assert purpose in get_args(Purpose)
    return cast(Purpose, purpose)


async def list_files(request: Request) -> Response:
    q = request.query_params
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", code="invalid_value", param="order")
    limit = int_param(q.get("limit"), "limit", LIST_LIMIT, 1, LIST_LIMIT)
    key = current_key(request)
    files = [
        f
        for f in await store(request).list()
        if (is_admin(request) or f.key_id == key.id) and q.get("purpose") in (None, f.purpose)
    ]
    if order == "desc":
        files.reverse()
    return JSONResponse(page([f.public() for f in files], q.get("after"), limit))


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page: the items after the one with id ``after`` (all if None), ``limit`` of them."""
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


def int_param(raw: str | None, param: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{param} must be an integer", code="invalid_value", param=param) from None
    if not low <= value <= high:
        raise InvalidRequest(f"{param} must be between {low} and {high}", code="invalid_value", param=param)
    return value


async def retrieve(request: Request) -> Response:
    return JSONResponse((await owned(request, request.path_params["file_id"])).public())


async def delete(request: Request) -> Response:
    record = await owned(request, request.path_params["file_id"])
    await store(request).delete(record.id)
    return JSONResponse({"id": record.id, "object": "file", "deleted": True})


async def content(request: Request) -> Response:
    record = await owned(request, request.path_params["file_id"])
    chunks = store(request).chunks(record.id)
    # The first chunk before the response starts: a file deleted meanwhile is a 404, not a cut-off body.
    try:
        first = await anext(chunks, b"")
    except BlobNotFound:
        raise NotFound(f"No such File object: {record.id}", code="file_not_found", param="file_id") from None

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    headers = {"content-disposition": f'attachment; filename="{record.filename}"', "content-length": str(record.bytes)}
    media = "application/jsonl" if record.filename.endswith(".jsonl") else "application/octet-stream"
    return StreamingResponse(body(), media_type=media, headers=headers)
