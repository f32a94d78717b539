"""``client.files``: upload, list, look up, download and delete files (``/files``), such as a batch's input.

Uploads are ``multipart/form-data`` (the file plus a ``purpose`` field); a download (``content``) is the file's
raw bytes, not JSON. Everything else is OpenAI's JSON.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from .._files import FileTypes, file_part
from .._resource import AsyncAPIResource, SyncAPIResource, query_path, request_options
from .._response import AsyncBinaryResponseContent, BinaryResponseContent
from .._types import NOT_GIVEN, Body, Headers, NotGiven, Timeout
from ..types.file_deleted import FileDeleted
from ..types.file_object import FileList, FileObject, FilePurpose

__all__ = ["AsyncFiles", "Files"]


class Files(SyncAPIResource):
    def create(
        self,
        *,
        file: FileTypes,
        purpose: FilePurpose,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> FileObject:
        """Upload a file.

        Args:
            file: The file: a path, bytes, a binary file, or a tuple (filename, bytes or file[, content type]).
                Bytes and nameless file objects are sent as ``upload``; a path or file sends its own name.
            purpose: What it is for: ``"batch"`` for a batch's JSONL input (one request a line),
                ``"user_data"`` for anything else, ...
            extra_headers: Headers to send with this call only.
            extra_body: More form fields, sent as text.
            timeout: This call's timeout, instead of the client's.

        Returns:
            The stored ``FileObject``; its ``id`` is what other calls take.

        Raises:
            BadRequestError: The server refused the file or the purpose (a batch file that is not JSONL, say).
            APIStatusError: 413 for a file over the server's size limit.
        """
        response = self._client.post_multipart(
            "files",
            fields=_form(purpose, extra_body),
            files={"file": file_part(file, "upload")},
            options=request_options(extra_headers, None, timeout),
            stream=False,
        )
        return self._client._parse(response, FileObject)

    def list(
        self,
        *,
        purpose: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        order: Literal["asc", "desc"] | None = None,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> FileList:
        """List stored files, one page at a time.

        Args:
            purpose: Only files with this purpose.
            limit: The most files on the page (the server caps it; OpenAI's default is 10,000).
            after: A file id: the page starts after it (``page.next_after`` from the previous page).
            order: By ``created_at``: ``"desc"`` (newest first, the default) or ``"asc"``.
            extra_headers: Headers to send with this call only.
            timeout: This call's timeout, instead of the client's.

        Returns:
            A ``FileList``: iterate it, or read ``data``; ``has_more`` says whether another page follows.
        """
        path = query_path("files", purpose=purpose, limit=limit, after=after, order=order)
        return self._client.get(path, cast_to=FileList, options=request_options(extra_headers, None, timeout))

    def retrieve(
        self, file_id: str, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> FileObject:
        """One file's ``FileObject``; raises NotFoundError for an unknown id."""
        options = request_options(extra_headers, None, timeout)
        return self._client.get(_path(file_id), cast_to=FileObject, options=options)

    def delete(
        self, file_id: str, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> FileDeleted:
        """Delete a file; raises NotFoundError for an unknown id."""
        options = request_options(extra_headers, None, timeout)
        return self._client.delete(_path(file_id), cast_to=FileDeleted, options=options)

    def content(
        self, file_id: str, *, extra_headers: Headers | None = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> BinaryResponseContent:
        """Download a file (``GET /files/{id}/content``).

        Returns:
            ``BinaryResponseContent``: ``.content`` (bytes), ``.text``, ``.read()``, ``.write_to_file(path)``.

        Raises:
            NotFoundError: No such file.
        """
        options = request_options(extra_headers, None, timeout)
        return BinaryResponseContent(self._client.get_raw(_path(file_id) + "/content", options=options, stream=False))


class AsyncFiles(AsyncAPIResource):
    async def create(
        self,
        *,
        file: FileTypes,
        purpose: FilePurpose,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FileObject:
        """Upload a file; see ``Files.create``. The file is read before the call awaits anything."""
        response = await self._client.post_multipart(
            "files",
            fields=_form(purpose, extra_body),
            files={"file": file_part(file, "upload")},
            options=request_options(extra_headers, None, timeout),
            stream=False,
        )
        return self._client._parse(response, FileObject)

    async def list(
        self,
        *,
        purpose: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        order: Literal["asc", "desc"] | None = None,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FileList:
        """List stored files, one page at a time; see ``Files.list``."""
        path = query_path("files", purpose=purpose, limit=limit, after=after, order=order)
        return await self._client.get(path, cast_to=FileList, options=request_options(extra_headers, None, timeout))

    async def retrieve(
        self,
        file_id: str,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FileObject:
        """One file's ``FileObject``; see ``Files.retrieve``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.get(_path(file_id), cast_to=FileObject, options=options)

    async def delete(
        self,
        file_id: str,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> FileDeleted:
        """Delete a file; see ``Files.delete``."""
        options = request_options(extra_headers, None, timeout)
        return await self._client.delete(_path(file_id), cast_to=FileDeleted, options=options)

    async def content(
        self,
        file_id: str,
        *,
        extra_headers: Headers | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> AsyncBinaryResponseContent:
        """Download a file; see ``Files.content``."""
        options = request_options(extra_headers, None, timeout)
        response = await self._client.get_raw(_path(file_id) + "/content", options=options, stream=False)
        return AsyncBinaryResponseContent(response)


def _form(purpose: str, extra_body: Body | None) -> dict[str, str]:
    return {"purpose": purpose, **{k: str(v) for k, v in (extra_body or {}).items()}}


def _path(file_id: str) -> str:
    if not file_id:
        raise ValueError(f"file_id={file_id!r} must be a non-empty file id")
    return f"files/{quote(file_id, safe='')}"
