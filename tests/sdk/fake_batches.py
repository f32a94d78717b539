"""The fake gateway's Files and Batch API: a file store and a batch that advances one step each time it is read.

No clock and no workers: every ``GET /batches/{id}`` moves the batch on, so a client that polls sees each
status in turn, deterministically::

    validating -> in_progress (one request finishes per read) -> finalizing -> completed
    validating -> failed                   (a line that is not JSON, or whose url is not the endpoint)
    cancelling -> cancelled                (on the read after POST /batches/{id}/cancel)

Errors are the gateway's: 404 for an unknown file or batch in the path, 400 for an unknown ``input_file_id``.

A request whose body holds ``"fail": true`` fails (it goes to the error file); every other one succeeds with
``{"echo": <its body>}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CREATED_AT = 1_700_000_000


class NotFound(KeyError):
    """No file or batch by that id."""


class Refused(ValueError):
    """A request the real API refuses with a 400."""


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    content_type: str
    created_at: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
            "ember_store": "memory",  # an extension field: the SDK must keep it
        }


@dataclass
class FakeBatch:
    json: dict[str, Any]
    # (custom_id, body) of each input line, once validated.
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # One JSONL line per finished request, for the output and the error file.
    output: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class FakeBatchStore:
    """Files and batches by id; ``ServerState.reset`` empties it before every test."""

    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: dict[str, FakeBatch] = field(default_factory=dict)
    _next: int = 0

    def clear(self) -> None:
        self.files.clear()
        self.batches.clear()
        self._next = 0

    def add_file(self, filename: str, purpose: str, content: bytes, content_type: str) -> StoredFile:
        self._next += 1
        stored = StoredFile(f"file-{self._next}", filename, purpose, content, content_type, CREATED_AT + self._next)
        self.files[stored.id] = stored
        return stored

    def file(self, file_id: str) -> StoredFile:
        if file_id not in self.files:
            raise NotFound(f"No such File object: {file_id}")
        return self.files[file_id]

    def list_files(self, purpose: str | None, limit: int, after: str | None, order: str) -> dict[str, Any]:
        chosen = [f for f in self.files.values() if purpose is None or f.purpose == purpose]
        chosen.sort(key=lambda f: f.created_at, reverse=order == "desc")
        return _page([f.as_json() for f in chosen], limit, after)

    def create_batch(
        self, input_file_id: str, endpoint: str, completion_window: str, metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        if input_file_id not in self.files:  # a 400 naming the parameter, not a 404 for the path
            raise Refused(f"No such File object: {input_file_id}")
        if self.files[input_file_id].purpose != "batch":
            raise Refused(f"file {input_file_id} was not uploaded with purpose 'batch'")
        if completion_window != "24h":
            raise Refused(f"completion_window={completion_window!r} is not supported; use '24h'")
        self._next += 1
        batch_id = f"batch_{self._next}"
        created = CREATED_AT + self._next
        self.batches[batch_id] = FakeBatch(
            {
                "id": batch_id,
                "object": "batch",
                "endpoint": endpoint,
                "errors": None,
                "input_file_id": input_file_id,
                "completion_window": completion_window,
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": created,
                "in_progress_at": None,
                "expires_at": created + 86_400,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": metadata,
            }
        )
        return self.batches[batch_id].json

    def batch(self, batch_id: str) -> FakeBatch:
        if batch_id not in self.batches:
            raise NotFound(f"No such Batch object: {batch_id}")
        return self.batches[batch_id]

    def list_batches(self, limit: int, after: str | None) -> dict[str, Any]:
        newest_first = sorted(self.batches.values(), key=lambda b: b.json["created_at"], reverse=True)
        return _page([b.json for b in newest_first], limit, after)

    def cancel(self, batch_id: str) -> dict[str, Any]:
        batch = self.batch(batch_id)
        # Like Ember's gateway: cancelling a finished (or cancelling) batch changes nothing and is no error.
        if batch.json["status"] in ("validating", "in_progress", "finalizing"):
            batch.json.update(status="cancelling", cancelling_at=self._now())
        return batch.json

    def advance(self, batch_id: str) -> dict[str, Any]:
        """One step of the batch's life (see the module's docstring); its JSON after the step."""
        batch = self.batch(batch_id)
        state = batch.json
        status = state["status"]
        if status == "validating":
            self._validate(batch)
        elif status == "in_progress":
            self._run_one(batch)
        elif status == "finalizing":
            self._write_results(batch)
            state.update(status="completed", completed_at=self._now())
        elif status == "cancelling":
            self._write_results(batch)
            state.update(status="cancelled", cancelled_at=self._now())
        return state

    def _validate(self, batch: FakeBatch) -> None:
        state = batch.json
        errors = []
        lines = self.files[state["input_file_id"]].content.decode().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                item = json.loads(line)
            except ValueError:
                errors.append({"code": "invalid_json_line", "message": "This line is not JSON.", "line": number})
                continue
            if item.get("url") != state["endpoint"]:
                message = f"The url {item.get('url')!r} does not match the batch's endpoint."
                errors.append({"code": "mismatched_url", "message": message, "param": "url", "line": number})
                continue
            batch.requests.append((item["custom_id"], item.get("body", {})))
        if errors:
            state.update(status="failed", failed_at=self._now(), errors={"object": "list", "data": errors})
            return
        counts = {"total": len(batch.requests), "completed": 0, "failed": 0}
        state.update(status="in_progress", in_progress_at=self._now(), request_counts=counts)

    def _run_one(self, batch: FakeBatch) -> None:
        counts = batch.json["request_counts"]
        done = counts["completed"] + counts["failed"]
        if done == counts["total"]:
            batch.json.update(status="finalizing", finalizing_at=self._now())
            return
        custom_id, body = batch.requests[done]
        line: dict[str, Any] = {"id": f"batch_req_{done + 1}", "custom_id": custom_id, "error": None}
        if body.get("fail"):
            error = {"message": "injected failure", "type": "invalid_request_error", "param": None, "code": None}
            line["response"] = {"status_code": 400, "request_id": f"req_{done + 1}", "body": {"error": error}}
            batch.errors.append(json.dumps(line))
            counts["failed"] += 1
        else:
            line["response"] = {"status_code": 200, "request_id": f"req_{done + 1}", "body": {"echo": body}}
            batch.output.append(json.dumps(line))
            counts["completed"] += 1

    def _write_results(self, batch: FakeBatch) -> None:
        name = batch.json["id"]
        if batch.output:
            content = "".join(line + "\n" for line in batch.output).encode()
            stored = self.add_file(f"{name}_output.jsonl", "batch_output", content, "application/jsonl")
            batch.json["output_file_id"] = stored.id
        if batch.errors:
            content = "".join(line + "\n" for line in batch.errors).encode()
            stored = self.add_file(f"{name}_error.jsonl", "batch_output", content, "application/jsonl")
            batch.json["error_file_id"] = stored.id

    def _now(self) -> int:
        self._next += 1
        return CREATED_AT + self._next


def _page(items: list[dict[str, Any]], limit: int, after: str | None) -> dict[str, Any]:
    """OpenAI's cursor page: the ``limit`` items after the one whose id is ``after``."""
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }
