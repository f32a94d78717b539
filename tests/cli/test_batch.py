"""``ember batch`` in-process (``ember.cli.main.main``) against the fake gateway over loopback, whose batches move
one step each time they are read (``tests/sdk/fake_batches.py``), so ``--wait`` sees every status in turn."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from ember.cli import batch as batch_cli
from ember.cli.main import main
from ember.types import Batch
from tests.sdk.fake_gateway import ServerState

ENDPOINT = "/v1/chat/completions"


def write_requests(path: Path, *bodies: dict[str, Any], url: str = ENDPOINT) -> Path:
    lines = [
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}) + "\n"
        for i, body in enumerate(bodies, 1)
    ]
    path.write_text("".join(lines))
    return path


def ember_batch(url: str, *args: str) -> int:
    return main(["batch", *args, "--base-url", url, "--api-key", "sk-cli"])


def test_submit_uploads_starts_and_prints_the_id(
    fake_gateway: ServerState, gateway_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = write_requests(tmp_path / "requests.jsonl", {"model": "tiny"})
    assert ember_batch(gateway_url, "submit", str(requests), "--endpoint", ENDPOINT, "--completion-window", "24h") == 0
    out, err = capsys.readouterr()
    assert out == "batch_2\n"
    assert "uploaded requests.jsonl as file-1; batch batch_2 is validating" in err
    upload, create = fake_gateway.requests
    assert upload.form == {
        "file": ("requests.jsonl", requests.read_bytes(), "application/octet-stream"),
        "purpose": "batch",
    }
    assert upload.headers["authorization"] == "Bearer sk-cli"
    assert create.json == {"input_file_id": "file-1", "endpoint": ENDPOINT, "completion_window": "24h"}


def test_base_url_and_key_default_to_the_environment(
    fake_gateway: ServerState,
    gateway_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EMBER_BASE_URL", gateway_url)
    monkeypatch.setenv("EMBER_API_KEY", "sk-env")
    requests = write_requests(tmp_path / "requests.jsonl", {"n": 1})
    assert main(["batch", "submit", str(requests), "--endpoint", ENDPOINT]) == 0
    assert capsys.readouterr().out == "batch_2\n"
    assert fake_gateway.last.headers["authorization"] == "Bearer sk-env"


def test_submit_wait_shows_progress_and_downloads_the_results(
    fake_gateway: ServerState, gateway_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = write_requests(tmp_path / "requests.jsonl", {"n": 1}, {"n": 2, "fail": True}, {"n": 3})
    code = ember_batch(gateway_url, "submit", str(requests), "--endpoint", ENDPOINT, "--wait", "--poll-interval", "0")
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "batch_2\n"
    # Not a terminal: a line at each status and each quarter of the requests, not one per poll.
    progress = [line for line in err.splitlines() if line.startswith("ember: batch_2: ")]
    assert progress == [
        "ember: batch_2: validating",
        "ember: batch_2: 0/3 requests (in_progress)",
        "ember: batch_2: 1/3 requests (in_progress)",
        "ember: batch_2: 2/3 requests (in_progress)",
        "ember: batch_2: 3/3 requests (in_progress)",
        "ember: batch_2: 3/3 requests (finalizing)",
        "ember: batch_2: 3/3 requests (completed)",
    ]
    assert err.splitlines()[-1] == "ember: batch batch_2 completed: 2 of 3 requests completed, 1 failed"
    output = [json.loads(line) for line in (tmp_path / "requests.output.jsonl").read_text().splitlines()]
    assert [o["custom_id"] for o in output] == ["r1", "r3"]
    errors = [json.loads(line) for line in (tmp_path / "requests.errors.jsonl").read_text().splitlines()]
    assert [e["custom_id"] for e in errors] == ["r2"]
    assert f"results of batch_2 written to {tmp_path / 'requests.output.jsonl'}" in err


def test_submit_wait_to_named_files(
    fake_gateway: ServerState, gateway_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = write_requests(tmp_path / "in.jsonl", {"n": 1})
    out_path, err_path = tmp_path / "out" / "o.jsonl", tmp_path / "e.jsonl"
    out_path.parent.mkdir()
    args = ["--wait", "--poll-interval", "0", "--output", str(out_path), "--errors", str(err_path)]
    assert ember_batch(gateway_url, "submit", str(requests), "--endpoint", ENDPOINT, *args) == 0
    assert json.loads(out_path.read_text())["custom_id"] == "r1"
    assert not err_path.exists()  # no request failed: no error file
    assert not (tmp_path / "in.output.jsonl").exists()


def test_submit_wait_exits_1_when_the_batch_fails(
    fake_gateway: ServerState, gateway_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = write_requests(tmp_path / "in.jsonl", {"n": 1}, url="/v1/embeddings")
    code = ember_batch(gateway_url, "submit", str(requests), "--endpoint", ENDPOINT, "--wait", "--poll-interval", "0")
    err = capsys.readouterr().err
    assert code == 1
    assert "ember: line 1: The url '/v1/embeddings' does not match the batch's endpoint. (mismatched_url)" in err
    assert err.splitlines()[-1] == "ember: batch batch_2 failed"
    assert not (tmp_path / "in.output.jsonl").exists()


def test_interrupting_the_wait_leaves_the_batch_running(
    fake_gateway: ServerState,
    gateway_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_cli.time, "sleep", interrupt)
    requests = write_requests(tmp_path / "in.jsonl", {"n": 1})
    assert ember_batch(gateway_url, "submit", str(requests), "--endpoint", ENDPOINT, "--wait") == 130
    assert "stopped waiting; batch batch_2 goes on (`ember batch status batch_2`)" in capsys.readouterr().err
    assert fake_gateway.store.batches["batch_2"].json["status"] == "validating"


def test_status_cancel_and_download(
    fake_gateway: ServerState,
    gateway_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    requests = write_requests(tmp_path / "in.jsonl", {"n": 1}, {"n": 2}, {"n": 3})
    ember_batch(gateway_url, "submit", str(requests), "--endpoint", ENDPOINT)
    batch_id = capsys.readouterr().out.strip()

    assert ember_batch(gateway_url, "status", batch_id) == 0  # validating -> in_progress
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        f"id                {batch_id}",
        "status            in_progress",
        f"endpoint          {ENDPOINT}",
        "requests          0/3 done, 0 failed",
    ]
    assert "output_file_id" not in "\n".join(lines)  # steps not taken are left out

    assert ember_batch(gateway_url, "download", batch_id) == 1  # one request done, no results yet
    assert f"batch {batch_id} is in_progress: it has no results to download" in capsys.readouterr().err

    assert ember_batch(gateway_url, "status", batch_id, "--json") == 0  # two requests done
    shown = Batch.model_validate_json(capsys.readouterr().out)
    assert shown.request_counts is not None and shown.request_counts.completed == 2

    assert ember_batch(gateway_url, "cancel", batch_id) == 0
    assert capsys.readouterr().out == f"{batch_id}\tcancelling\n"
    assert ember_batch(gateway_url, "download", batch_id) == 0  # cancelling -> cancelled, with r1's and r2's results
    output = (tmp_path / f"{batch_id}.output.jsonl").read_text().splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == ["r1", "r2"]
    assert not (tmp_path / f"{batch_id}.errors.jsonl").exists()
    out_path = tmp_path / "named.jsonl"
    assert ember_batch(gateway_url, "download", batch_id, "--output", str(out_path)) == 0
    assert out_path.read_bytes() == (tmp_path / f"{batch_id}.output.jsonl").read_bytes()


def test_errors_exit_nonzero_with_the_servers_message(
    fake_gateway: ServerState, gateway_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ember_batch(gateway_url, "status", "batch_404") == 1
    assert "No such Batch object: batch_404" in capsys.readouterr().err
    assert ember_batch(gateway_url, "cancel", "batch_404") == 1
    missing = tmp_path / "missing.jsonl"
    assert ember_batch(gateway_url, "submit", str(missing), "--endpoint", ENDPOINT) == 2
    assert f"cannot read {str(missing)!r}: no such file" in capsys.readouterr().err
    assert main(["batch", "status", "b", "--base-url", "ftp://host/v1"]) == 2
    assert not any(r.path == "/v1/files" for r in fake_gateway.requests)  # nothing uploaded for the missing file


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _batch(status: str, done: int, total: int) -> Batch:
    counts = {"total": total, "completed": done, "failed": 0}
    return Batch.model_validate(
        {
            "id": "batch_1",
            "object": "batch",
            "endpoint": ENDPOINT,
            "input_file_id": "file-1",
            "completion_window": "24h",
            "status": status,
            "created_at": 1,
            "request_counts": counts,
        }
    )


def test_progress_on_a_terminal_is_one_line_redrawn() -> None:
    terminal = Terminal()
    line = batch_cli.ProgressLine(terminal)
    for batch in (_batch("validating", 0, 0), _batch("in_progress", 1, 2), _batch("in_progress", 1, 2)):
        line.update(batch)
    line.close()
    assert terminal.getvalue() == (
        "\rember: batch_1: validating\x1b[K"
        "\rember: batch_1: 1/2 requests (in_progress)\x1b[K"
        "\rember: batch_1: 1/2 requests (in_progress)\x1b[K\n"
    )
