"""The batch runner: takes batches off a durable queue and runs their lines on idle capacity, resuming any batch
whose gateway died.

    POST /v1/batches --publish (Nats-Msg-Id = batch id)--> EMBER_BATCHES --fetch--> a gateway's BatchRunner
                                                               ^                       | in progress: every ack_wait_s/3
                                                               +----- redelivered -----+ no word for ack_wait_s

Each gateway runs one. A batch goes validating -> in_progress -> finalizing -> completed (see ``schemas``): its
lines run through the gateway's own app (``line_call``), at most ``batch.max_share`` of the model's worker slots
at once, at a priority below every tier's; each line's result is written once (``ResultStore``) and metered once
(its usage record's id is the line's). A runner that picks up a batch another left half done reads the results
so far and runs only the rest, so no answered line runs again. A line that fails for the platform's reasons (no
worker, a worker lost, overloaded) is tried again, up to ``batch.line_attempts`` times; a 429 waits out the
key's limit. Cancelling stops new lines and lets running ones finish; past the completion window the lines left
are written as expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from starlette.types import ASGIApp

from ember.auth.keys import ApiKey
from ember.batches import line_call
from ember.batches.lines import Line, Parsed, parse
from ember.batches.schemas import BatchError, BatchErrors, BatchRecord, LineResult, RequestCounts
from ember.batches.share import BatchShare
from ember.batches.store import BatchStore, ResultStore
from ember.bus import subjects
from ember.bus.blobs import BlobNotFound
from ember.bus.messages import Modality, UsageRecord
from ember.bus.tasks import cancel_and_wait
from ember.config.settings import BatchSettings
from ember.files.store import FileStore
from ember.usage import stream as usage_stream

log = logging.getLogger("ember.batches")

STREAM = "EMBER_BATCHES"
SUBJECT = f"{subjects.PREFIX}.batches.run"
CONSUMER = "batch-runners"
MODALITY = {"/v1/chat/completions": Modality.TEXT, "/v1/completions": Modality.TEXT, "/v1/embeddings": Modality.EMBED}
# Deliveries of one batch (each error of its runner, or crash of its gateway, is one) after which an error of the
# runner fails the batch instead of sending it back: a batch that fails the same way wherever it runs is a bug,
# and retrying it forever would only fill the log. Crashes alone never fail a batch.
MAX_RUNS = 10
# Statuses a line is tried again for: the platform failed it, not the request.
RETRIED = frozenset({500, 502, 503, 504})


async def ensure_stream(js: JetStreamContext) -> None:
    config = StreamConfig(
        name=STREAM,
        subjects=[SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=600.0,
    )
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):  # another gateway created it meanwhile
            await js.add_stream(config)


async def enqueue(js: JetStreamContext, batch_id: str) -> None:
    await js.publish(SUBJECT, batch_id.encode(), stream=STREAM, headers={"Nats-Msg-Id": batch_id})


@dataclass
class BatchRunner:
    app: ASGIApp
    js: JetStreamContext
    batches: BatchStore
    results: ResultStore
    files: FileStore
    settings: BatchSettings
    # The key a batch runs as, by id (None: gone, or revoked); whether a model exists; its worker slots.
    find_key: Callable[[str], Awaitable[ApiKey | None]]
    known_model: Callable[[str], bool]
    slots: Callable[[Modality, str], int]
    # This gateway's id and connection, for the share of lines with the other gateways (``BatchShare``).
    gateway_id: str = "gateway"
    nc: NATS | None = None
    # Batches this gateway runs at once; more wait on the queue for this or another gateway.
    max_batches: int = 4
    gate: BatchShare = field(init=False)
    _pull: asyncio.Task[None] | None = field(default=None, init=False)
    _sub: JetStreamContext.PullSubscription | None = field(default=None, init=False)
    _running: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.gate = BatchShare(self._line_capacity, self.gateway_id, self.nc)

    def _line_capacity(self, key: str) -> int:
        modality, model = key.split(":", 1)
        return math.floor(self.slots(Modality(modality), model) * self.settings.max_share)

    # --- the queue ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.gate.start()
        await ensure_stream(self.js)
        config = ConsumerConfig(
            name=CONSUMER,
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_ack_pending=-1,
        )
        await self.js.add_consumer(STREAM, config)
        self._sub = await self.js.pull_subscribe_bind(durable=CONSUMER, stream=STREAM)
        self._pull = asyncio.create_task(self._pull_forever(self._sub))

    async def stop(self) -> None:
        """Stop taking batches and stop running ones; their messages go back to the queue for another gateway."""
        if self._pull is not None:
            self._pull.cancel()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, *([self._pull] if self._pull else []), return_exceptions=True)
        await self.gate.stop()
        # Unsubscribed here, not left to the connection's drain: a pull request cut short still gets its expiry
        # notice from the server, which nobody reads, and a drain waits for it until its own timeout (30 s).
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _pull_forever(self, sub: JetStreamContext.PullSubscription) -> None:
        free = asyncio.Semaphore(self.max_batches)
        while True:
            await free.acquire()
            try:
                msgs = await sub.fetch(1, timeout=5.0)
            except (nats.errors.TimeoutError, TimeoutError):
                free.release()
                continue
            except (nats.errors.Error, nats.js.errors.Error, OSError) as e:  # reconnecting
                free.release()
                log.debug("fetching batches failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._one(msg))
                self._running.add(task)

                def ended(t: asyncio.Task[None]) -> None:
                    self._running.discard(t)
                    free.release()

                task.add_done_callback(ended)

    async def _one(self, msg: Msg) -> None:
        batch_id = msg.data.decode()
        keepalive = asyncio.create_task(self._keep_alive(msg))
        done = False
        delay = 1.0
        try:
            await self.run(batch_id)
            done = True
        except asyncio.CancelledError:
            raise  # stopping: another gateway takes the batch up now (nak below)
        except Exception as e:
            tries = msg.metadata.num_delivered or 1
            if tries >= MAX_RUNS:  # it fails the same way wherever it runs: a bug, not a crash to resume from
                log.exception("batch %s failed in its runner %d times; it fails", batch_id, tries)
                done = await self._give_up(batch_id, f"the batch runner failed {tries} times: {e}")
            else:
                log.exception("batch %s failed in its runner; it goes back to the queue", batch_id)
                delay = min(2.0**tries, 60.0)
        finally:
            keepalive.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.ack_sync(timeout=5.0) if done else msg.nak(delay=delay))

    async def _give_up(self, batch_id: str, why: str) -> bool:
        error = BatchErrors(data=[BatchError(code="batch_runner_failed", message=why)])
        with contextlib.suppress(Exception):
            await self.batches.change(batch_id, lambda r: None if r.finished else r.moved("failed", errors=error))
            return True
        return False

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.settings.ack_wait_s / 3)
            with contextlib.suppress(Exception):  # a reconnect; the next tick will do
                await msg.in_progress()

    # --- one batch ----------------------------------------------------------------------------------------------

    async def run(self, batch_id: str) -> None:
        """Take the batch from wherever it stands to a finished status."""
        record = await self.batches.get(batch_id)
        if record is None or record.finished:
            return
        try:
            data = await self.files.content(record.input_file_id)
        except BlobNotFound:
            gone = BatchError(code="input_file_missing", message=f"the input file {record.input_file_id} is gone")
            await self._fail(record, [gone])
            return
        parsed = await asyncio.to_thread(
            parse, data, record.endpoint, self.settings.max_lines, lambda m: self.known_model(m)
        )
        if record.status == "validating":
            if parsed.errors:
                await self._fail(record, parsed.errors)
                return
            total = len(parsed.lines)
            await self.batches.change(
                batch_id,
                lambda r: (
                    r.moved("in_progress", request_counts=r.request_counts.model_copy(update={"total": total}))
                    if r.status == "validating"
                    else None
                ),
            )
        record = await self.batches.get(batch_id)
        if record is None:
            return
        if record.status == "in_progress":
            await self._run_lines(record, parsed)
            record = await self.batches.get(batch_id)
            if record is None:
                return
        if record.status in ("in_progress", "finalizing", "cancelling"):
            await self._finalize(record, parsed)

    async def _fail(self, record: BatchRecord, errors: list[BatchError]) -> None:
        await self.batches.change(
            record.id,
            lambda r: (
                r.moved("failed", errors=BatchErrors(data=errors))
                if r.status in ("validating", "in_progress")
                else None
            ),
        )

    async def _run_lines(self, record: BatchRecord, parsed: Parsed) -> None:
        """Run every line that has no result yet, until all have one, the batch is cancelled, or it expires."""
        done = await self.results.all(record.id, len(parsed.lines))
        for result in done.values():  # a crash may have come between a result and its usage record
            await self._meter(record, result, parsed.model)
        key = await self.find_key(record.key_id)
        progress = Progress(record, done)
        stop = asyncio.Event()
        watch = asyncio.create_task(self._watch(record.id, stop, progress))
        gate_key = f"{MODALITY[record.endpoint]}:{parsed.model}"
        lines: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []

        def ended(task: asyncio.Task[None]) -> None:
            lines.discard(task)
            self.gate.release(gate_key)
            error = None if task.cancelled() else task.exception()
            if error is not None:
                failures.append(error)
                stop.set()

        try:
            for line in parsed.lines:
                if line.index in done:
                    continue
                acquired = asyncio.create_task(self.gate.acquire(gate_key))
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait([acquired, stopped], return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not acquired.done():
                    await cancel_and_wait(acquired)
                    if not acquired.cancelled() and acquired.exception() is None:
                        self.gate.release(gate_key)  # the slot came just as it was given up
                    break
                if stop.is_set():
                    self.gate.release(gate_key)
                    break
                task = asyncio.create_task(self._line(record, line, key, parsed.model, progress, stop))
                lines.add(task)
                task.add_done_callback(ended)
            # Lines already running finish, cancelled or not (OpenAI's cancel lets them): their answers are paid for.
            await asyncio.gather(*lines, return_exceptions=True)
            if failures:  # a result not written (NATS away): the batch goes back to the queue and resumes
                raise failures[0]
        finally:
            watch.cancel()
            for task in list(lines):
                task.cancel()
        await self._save_counts(record.id, progress)

    async def _watch(self, batch_id: str, stop: asyncio.Event, progress: Progress) -> None:
        """Every second: write the counts so far, and stop the batch once it is cancelled or past its window."""
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):  # a NATS blip: the next second will do
                record = await self._save_counts(batch_id, progress)
                if record is None or record.status != "in_progress" or time.time() >= record.expires_at:
                    stop.set()

    async def _save_counts(self, batch_id: str, progress: Progress) -> BatchRecord | None:
        counts = progress.counts()
        return await self.batches.change(
            batch_id,
            lambda r: (
                r.model_copy(update={"request_counts": counts})
                if r.request_counts != counts and not r.finished
                else None
            ),
        )

    async def _line(
        self,
        record: BatchRecord,
        line: Line,
        key: ApiKey | None,
        model: str | None,
        progress: Progress,
        stop: asyncio.Event,
    ) -> None:
        result = await self._answer(record, line, key, stop)
        if result is not None and await self.results.record(record.id, result):
            progress.add(result)
            await self._meter(record, result, model)

    async def _answer(
        self, record: BatchRecord, line: Line, key: ApiKey | None, stop: asyncio.Event
    ) -> LineResult | None:
        """The line's response after its tries: a 2xx, a request error, or the last platform error; None if the
        batch was cancelled or expired while the line waited for room (it is then written as such)."""
        request_id = f"{record.id}-{line.index}"
        if key is None:
            return LineResult(
                index=line.index,
                custom_id=line.custom_id,
                request_id=request_id,
                error={"code": "invalid_api_key", "message": "the key that created this batch was revoked"},
            )
        context = line_call.BatchLineContext(record.id, self.settings.price_factor)
        attempt = waits = 0
        while True:
            rid = request_id if attempt + waits == 0 else f"{request_id}-{attempt + waits}"
            response = await line_call.call(self.app, record.endpoint, line.body, key=key, line=context, request_id=rid)
            wait = waiting_for_room(response)
            if wait is not None:
                # The key's limit, or no worker with room yet (one may be starting: a batch has hours, not
                # seconds): not the line's failure, so it waits, however often, until the batch ends.
                waits += 1
                delay = wait if response.status == 429 else min(0.5 * 2**waits, 10.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set() or time.time() >= record.expires_at:
                    return None
                continue
            attempt += 1
            if response.status in RETRIED and attempt < self.settings.line_attempts:
                log.info("batch %s line %d: %d, trying again", record.id, line.index, response.status)
                await asyncio.sleep(min(0.5 * 2**attempt, 10.0))
                continue
            return LineResult(
                index=line.index,
                custom_id=line.custom_id,
                request_id=rid,
                status_code=response.status,
                body=response.json(),
            )

    async def _meter(self, record: BatchRecord, result: LineResult, model: str | None) -> None:
        """The line's one usage record: its id is the line's, so a second write is dropped as a duplicate."""
        usage: dict[str, Any] = (result.body or {}).get("usage") or {} if result.succeeded else {}
        error = (result.body or {}).get("error") if result.body else None
        status = "ok" if result.succeeded else (error or {}).get("code") or (result.error or {}).get("code") or "error"
        rec = UsageRecord(
            request_id=f"{record.id}-{result.index}",
            key_id=record.key_id,
            model=model or "",
            modality=MODALITY[record.endpoint],
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            duration_ms=0.0,
            status=str(status),
            batch_id=record.id,
            price_factor=self.settings.price_factor,
        )
        try:
            await usage_stream.record(self.js, rec)
        except Exception as e:  # the backlog retries it; usage must not fail the batch
            log.warning("usage record of %s not written: %s", rec.request_id, e)

    # --- the end ------------------------------------------------------------------------------------------------

    async def _finalize(self, record: BatchRecord, parsed: Parsed) -> None:
        """Write the output and error files from the results, and end the batch."""
        if record.status == "in_progress":
            moved = await self.batches.change(
                record.id, lambda r: r.moved("finalizing") if r.status == "in_progress" else None
            )
            record = moved or record
        results = await self.results.all(record.id, len(parsed.lines))
        cancelled = record.status == "cancelling"
        expired = not cancelled and time.time() >= record.expires_at
        for line in parsed.lines:
            if line.index not in results:
                code, why = (
                    ("batch_cancelled", "The batch was cancelled before this request ran.")
                    if cancelled
                    else ("batch_expired", "This request could not be executed before the completion window expired.")
                )
                results[line.index] = LineResult(
                    index=line.index,
                    custom_id=line.custom_id,
                    request_id=f"{record.id}-{line.index}",
                    error={"code": code, "message": why},
                )
        ordered = [results[line.index] for line in parsed.lines]
        output = [r.output_line(record.id) for r in ordered if r.succeeded]
        failed = [r.output_line(record.id) for r in ordered if not r.succeeded]
        hexid = record.id.removeprefix("batch_")
        output_id = await self._write(record, output, f"file-{hexid}-output", "batch_output.jsonl")
        error_id = await self._write(record, failed, f"file-{hexid}-errors", "batch_errors.jsonl")
        counts = record.request_counts.model_copy(update={"completed": len(output), "failed": len(failed)})
        end = "cancelled" if cancelled else "expired" if expired else "completed"
        await self.batches.change(
            record.id,
            lambda r: (
                r.moved(end, output_file_id=output_id, error_file_id=error_id, request_counts=counts)
                if not r.finished
                else None
            ),
        )
        await self.results.drop(record.id, [line.index for line in parsed.lines])
        log.info("batch %s %s: %d answered, %d failed", record.id, end, len(output), len(failed))

    async def _write(self, record: BatchRecord, lines: list[dict[str, Any]], file_id: str, name: str) -> str | None:
        if not lines:
            return None
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
        await self.files.create(data, filename=name, purpose="batch_output", key_id=record.key_id, file_id=file_id)
        return file_id


@dataclass
class Progress:
    """The lines answered so far, succeeded or failed, for ``request_counts``."""

    record: BatchRecord
    done: dict[int, LineResult]

    def add(self, result: LineResult) -> None:
        self.done[result.index] = result

    def counts(self) -> RequestCounts:
        ok = sum(r.succeeded for r in self.done.values())
        return self.record.request_counts.model_copy(update={"completed": ok, "failed": len(self.done) - ok})


# 503s that say there is no room now rather than that the line's run failed.
NO_ROOM = frozenset({"no_worker", "overloaded", "bus_unavailable"})


def waiting_for_room(response: line_call.LineResponse) -> float | None:
    """Seconds to wait before the line's next try when its answer says "not now" (429, or a 503 for lack of a
    worker with room); None for any other answer."""
    if response.status == 429:
        return retry_after(response.headers)
    if response.status == 503:
        error = response.json().get("error") or {}
        if isinstance(error, dict) and error.get("code") in NO_ROOM:
            return 0.0  # the caller backs off
    return None


def retry_after(headers: dict[str, str]) -> float:
    """Seconds to wait after a 429: its Retry-After, else the sooner x-ratelimit reset; between 0.1 and 60."""
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        value = headers.get(name)
        if value:
            seconds = _seconds(value)
            if seconds is not None:
                return min(max(seconds, 0.1), 60.0)
    return 1.0


def _seconds(value: str) -> float | None:
    """ "12", "1.5", "6m0s", "250ms", "1h2m3s" as seconds; None if it is none of these."""
    try:
        return float(value)
    except ValueError:
        pass
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if value[i : i + 2] == "ms" else ch
        if unit not in units or not number:
            return None
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return total if not number else None
