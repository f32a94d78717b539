"""``ember batch``: run a JSONL file of requests as one OpenAI-style batch on a running server, and fetch the results.

ember batch submit FILE --endpoint /v1/chat/completions [--completion-window 24h] [--wait] [--output OUT.jsonl]
                                                        [--errors ERR.jsonl]
ember batch status BATCH_ID [--json]
ember batch cancel BATCH_ID
ember batch download BATCH_ID [--output OUT.jsonl] [--errors ERR.jsonl]

``submit`` uploads FILE (purpose ``batch``), starts the batch and prints its id on stdout; with ``--wait`` it
polls until the batch ends, showing progress on stderr, then downloads the results (default: FILE with suffix
``.output.jsonl``) and the failed requests, if any (``.errors.jsonl``).

Unlike ``ember keys`` and ``ember usage``, which work on NATS directly, these are clients of the HTTP API (through
the SDK), so they work against any Ember gateway, or OpenAI itself: ``--base-url`` (default ``$EMBER_BASE_URL``,
else ``http://127.0.0.1:8000/v1``) and ``--api-key`` (default ``$EMBER_API_KEY``).

Exit status: 0 on success (for ``submit --wait``: the batch completed), 1 when the batch ended otherwise or the
server refused a call, 2 for a FILE that cannot be read, 130 when interrupted while waiting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import ember
from ember.types import Batch

# How often --wait asks the server; a batch runs for minutes to hours, so once a second is plenty.
_POLL_INTERVAL_S = 1.0


def add_parser(sub: Any) -> None:
    """The ``batch`` command group, on the top-level subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", help="the API root (default: $EMBER_BASE_URL, else http://127.0.0.1:8000/v1)")
    common.add_argument("--api-key", help="the API key (default: $EMBER_API_KEY)")

    batch = sub.add_parser("batch", help="run a JSONL file of requests as a batch on a server (Batch API)")
    actions = batch.add_subparsers(dest="batch_command", required=True)

    submit = actions.add_parser("submit", parents=[common], help="upload FILE and start a batch; print its id")
    submit.add_argument("file", metavar="FILE", type=Path, help="JSONL, one request a line (OpenAI's batch format)")
    submit.add_argument("--endpoint", required=True, help="where every request goes, e.g. /v1/chat/completions")
    submit.add_argument("--completion-window", default="24h", help="how long the batch may take (default: 24h)")
    submit.add_argument("--wait", action="store_true", help="wait for the batch to end, then download its results")
    submit.add_argument("--output", type=Path, help="with --wait: results file (default: FILE.output.jsonl)")
    submit.add_argument("--errors", type=Path, help="with --wait: failed requests (default: FILE.errors.jsonl)")
    submit.add_argument(
        "--poll-interval", type=float, default=_POLL_INTERVAL_S, help="seconds between polls (default: 1)"
    )

    status = actions.add_parser("status", parents=[common], help="show a batch's status and request counts")
    status.add_argument("batch_id", metavar="BATCH_ID")
    status.add_argument("--json", action="store_true", help="print the whole batch object as JSON")

    cancel = actions.add_parser("cancel", parents=[common], help="cancel a batch (finished requests are kept)")
    cancel.add_argument("batch_id", metavar="BATCH_ID")

    download = actions.add_parser("download", parents=[common], help="download a finished batch's results")
    download.add_argument("batch_id", metavar="BATCH_ID")
    download.add_argument("--output", type=Path, help="results file (default: BATCH_ID.output.jsonl)")
    download.add_argument("--errors", type=Path, help="failed requests (default: BATCH_ID.errors.jsonl)")


def run(args: argparse.Namespace, *, stderr: TextIO | None = None) -> int:
    """Run one ``ember batch`` command.

    Args:
        args: the parsed command line (``args.batch_command`` and its options).
        stderr: where progress and messages go (default: ``sys.stderr``); results and ids go to stdout.

    Returns:
        The exit status (see the module's docstring).
    """
    err = stderr if stderr is not None else sys.stderr
    try:
        with ember.Ember(base_url=args.base_url, api_key=args.api_key) as client:
            if args.batch_command == "submit":
                return _submit(client, args, err)
            if args.batch_command == "status":
                batch = client.batches.retrieve(args.batch_id)
                print(batch.model_dump_json(indent=2) if args.json else _describe(batch))
                return 0
            if args.batch_command == "cancel":
                batch = client.batches.cancel(args.batch_id)
                print(f"{batch.id}\t{batch.status}")
                return 0
            if args.batch_command == "download":
                batch = client.batches.retrieve(args.batch_id)
                output = args.output or Path(f"{batch.id}.output.jsonl")
                errors = args.errors or Path(f"{batch.id}.errors.jsonl")
                if not _save_results(client, batch, output, errors, err):
                    print(f"ember: batch {batch.id} is {batch.status}: it has no results to download", file=err)
                    return 1
                return 0
    except ember.APIError as e:
        print(f"ember: {e}", file=err)
        return 1
    except ValueError as e:  # the SDK's refusal of an argument: a --base-url that is not http(s), an empty id
        print(f"ember: {e}", file=err)
        return 2
    raise AssertionError(f"unknown batch command {args.batch_command!r}")  # argparse allows only the above


def _submit(client: ember.Ember, args: argparse.Namespace, err: TextIO) -> int:
    path: Path = args.file
    if not path.is_file():
        print(f"ember: cannot read {str(path)!r}: no such file", file=err)
        return 2
    uploaded = client.files.create(file=path, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=args.endpoint, completion_window=args.completion_window
    )
    print(batch.id, flush=True)
    if not args.wait:
        print(f"ember: uploaded {path.name} as {uploaded.id}; batch {batch.id} is {batch.status}", file=err)
        return 0
    try:
        batch = _wait(client, batch, args.poll_interval, err)
    except KeyboardInterrupt:
        print(f"\nember: stopped waiting; batch {batch.id} goes on (`ember batch status {batch.id}`)", file=err)
        return 130
    output = args.output or path.with_suffix(".output.jsonl")
    errors = args.errors or path.with_suffix(".errors.jsonl")
    _save_results(client, batch, output, errors, err)
    for error in (batch.errors.data or []) if batch.errors else []:
        where = f"line {error.line}: " if error.line is not None else ""
        print(f"ember: {where}{error.message} ({error.code})", file=err)
    print(f"ember: batch {batch.id} {batch.status}{_counts(batch)}", file=err)
    return 0 if batch.status == "completed" else 1


def _wait(client: ember.Ember, batch: Batch, poll_interval_s: float, err: TextIO) -> Batch:
    """Poll ``batch`` until it is done, keeping a progress line on ``err`` up to date."""
    line = ProgressLine(err)
    line.update(batch)
    while not batch.done:
        time.sleep(poll_interval_s)
        batch = client.batches.retrieve(batch.id)
        line.update(batch)
    line.close()
    return batch


def _save_results(client: ember.Ember, batch: Batch, output: Path, errors: Path, err: TextIO) -> bool:
    """Download the batch's output and error files (those it has) to ``output`` and ``errors``; False if none."""
    saved = False
    for file_id, path, what in ((batch.output_file_id, output, "results"), (batch.error_file_id, errors, "errors")):
        if file_id is None:
            continue
        client.files.content(file_id).write_to_file(path)
        print(f"ember: {what} of {batch.id} written to {path}", file=err)
        saved = True
    return saved


def _counts(batch: Batch) -> str:
    counts = batch.request_counts
    if counts is None or counts.total == 0:
        return ""
    return f": {counts.completed} of {counts.total} requests completed, {counts.failed} failed"


def _describe(batch: Batch) -> str:
    """A batch as aligned ``field  value`` lines, leaving out the steps it has not taken."""
    rows: list[tuple[str, object]] = [("id", batch.id), ("status", batch.status), ("endpoint", batch.endpoint)]
    if batch.request_counts is not None:
        c = batch.request_counts
        rows.append(("requests", f"{c.completed + c.failed}/{c.total} done, {c.failed} failed"))
    rows += [("input_file_id", batch.input_file_id), ("output_file_id", batch.output_file_id)]
    rows += [("error_file_id", batch.error_file_id), ("completion_window", batch.completion_window)]
    for step in ("created", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"):
        rows.append((f"{step}_at", getattr(batch, f"{step}_at")))
    for error in (batch.errors.data or []) if batch.errors else []:
        rows.append(("error", f"line {error.line}: {error.message}" if error.line is not None else error.message))
    return "\n".join(f"{name:<18}{value}" for name, value in rows if value is not None)


class ProgressLine:
    """``ember: batch_1: 7/10 requests (in_progress)`` on stderr while a batch runs.

    ``ember.config.progress.Progress`` counts steps of a known total forward; a batch is polled instead, its
    total is unknown until validation ends, and its status matters as much as its counts, hence this. Like
    ``Progress``, a terminal gets one line redrawn in place and a log a few plain lines: one at each change of
    status and at each quarter of the requests.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last: tuple[str, int] | None = None

    def update(self, batch: Batch) -> None:
        counts = batch.request_counts
        total = counts.total if counts is not None else 0
        done = counts.completed + counts.failed if counts is not None else 0
        # Before validation ends the total is not known: the status alone.
        progress = f"{done}/{total} requests ({batch.status})" if total else batch.status
        text = f"ember: {batch.id}: {progress}"
        if self._tty:
            self._stream.write(f"\r{text}\x1b[K")
        else:
            key = (batch.status, 4 * done // total if total else 0)
            if key == self._last:
                return
            self._last = key
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
