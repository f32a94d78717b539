"""The functions worker: serves built-ins and user functions on the bus, one queue group per function.

    ember worker functions --module my_funcs [--module more_funcs]

A call's life: the job's input is validated against the function's input model (400 if it does not fit), the
job is accepted, the function runs (``async`` ones on the loop, plain ones on a thread pool) under its timeout,
and its return value, checked against the return type, goes back as one ``FunctionResult``. Whatever the
function does (raise, hang, return junk) becomes a ``JobFailed`` for that call; the worker itself never dies.

Async jobs (``?async=true``) take the same path from the job queue instead (``ember.functions.queue``): each
function's host also pulls its function's queued jobs, and ``ember.functions.runner`` records their state,
usage and webhook, so that a job survives the loss of its gateway and of its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pydantic
import pydantic_core

from ember._functions import FunctionDef
from ember.bus.blobs import BlobStore
from ember.bus.client import JobClient
from ember.bus.connection import connect
from ember.bus.messages import FunctionJob, FunctionResult, JobStatus, Modality, encode
from ember.bus.worker import JobHandler, ReplySink, WorkerHost, stop_event
from ember.config import Settings
from ember.functions import context, errors, queue
from ember.functions.builtins import builtin_functions
from ember.functions.catalog import FunctionCatalog
from ember.functions.jobs import JobStore
from ember.functions.loader import load_modules
from ember.functions.registry import FunctionRegistry, info
from ember.functions.runner import Outcome, QueuedJobs
from ember.usage import stream as usage_stream

log = logging.getLogger("ember.functions.worker")


@dataclass
class FunctionRuntime:
    """What every function of one worker shares: the settings, the bus and the blob store."""

    settings: Settings
    bus: JobClient | None
    blobs: BlobStore | None
    max_payload: int = 1024 * 1024


class FunctionHandler(JobHandler):
    """Runs the calls of one function."""

    modality = Modality.FUNCTION

    def __init__(self, defn: FunctionDef, runtime: FunctionRuntime) -> None:
        self.defn = defn
        self.model = defn.name
        self.runtime = runtime
        self.max_batch = runtime.settings.functions.max_concurrent
        self._slots = asyncio.Semaphore(self.max_batch)
        self._calls: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: set[str] = set()
        self._waiting = 0

    def load(self) -> tuple[int, int]:
        return (len(self._calls), self._waiting)

    def cancel(self, request_id: str) -> None:
        task = self._calls.get(request_id)
        if task is not None:
            self._cancelled.add(request_id)
            task.cancel()

    async def handle(self, job: FunctionJob, sink: ReplySink) -> None:
        outcome = await self.execute(job, accepted=lambda: sink.accepted(prompt_tokens=0))
        if outcome.aborted:
            await sink.send(FunctionResult, JobStatus.FINISHED_ABORTED)
        elif outcome.error is not None:
            await sink.failed(outcome.error)
        else:
            await sink.send(FunctionResult, JobStatus.FINISHED_STOPPED, output=outcome.output)

    async def execute(self, job: FunctionJob, accepted: Callable[[], Awaitable[None]] | None = None) -> Outcome:
        """Run one call to its end, from a request over the bus or from the job queue (``ember.functions.runner``).

        ``accepted`` is awaited once the input has been checked, before the call waits for a slot.
        """
        name = self.defn.name
        try:
            kwargs = self.defn.parse_input(job.input)
        except pydantic.ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            return Outcome(error=errors.bad_input(name, err["msg"], param))
        if accepted is not None:
            await accepted()
        rt = self.runtime
        context.enter(context.CallContext(rt.bus, rt.blobs, rt.settings, job.request_id, job.key_id, job.priority))
        self._waiting += 1
        async with self._slots:
            self._waiting -= 1
            # Its own task, so that a cancel stops the function and not this handler.
            task = asyncio.create_task(self._call(kwargs))
            self._calls[job.request_id] = task
            try:
                output = await asyncio.wait_for(task, job.timeout_s)
            except TimeoutError:
                log.warning("function %s: call %s timed out after %gs", name, job.request_id, job.timeout_s)
                return Outcome(error=errors.timed_out(name, job.timeout_s))
            except asyncio.CancelledError:
                if job.request_id not in self._cancelled:
                    raise  # the worker itself is stopping
                return Outcome(aborted=True)
            except errors.FunctionFailed as e:
                return Outcome(error=e.info)
            except Exception as e:
                log.warning("function %s raised on call %s", name, job.request_id, exc_info=True)
                return Outcome(error=errors.raised(name, e))
            finally:
                self._calls.pop(job.request_id, None)
                self._cancelled.discard(job.request_id)
        return self._checked(job.request_id, output)

    async def _call(self, kwargs: dict[str, Any]) -> Any:
        if self.defn.is_async:
            return await self.defn.fn(**kwargs)
        ctx = context.current()

        def run() -> Any:
            context.enter(ctx)  # a new thread starts with an empty context
            return self.defn.fn(**kwargs)

        return await in_daemon_thread(run, f"ember-fn-{self.defn.name}")

    def _checked(self, request_id: str, value: Any) -> Outcome:
        """The return value as JSON, once checked against the return type and the bus's message size."""
        name = self.defn.name
        try:
            output = self.defn.dump_output(value)
        except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as e:
            return Outcome(error=errors.bad_output(name, str(e).splitlines()[0]))
        # The reply (or the job's record) is one NATS message; a bigger one would be refused by the server.
        size = len(encode(FunctionResult(request_id=request_id, seq=0, output=output)))
        if size > self.runtime.max_payload:
            limit = self.runtime.max_payload
            return Outcome(error=errors.bad_output(name, f"{size} bytes of JSON, over the bus's limit of {limit}"))
        return Outcome(output=output)


async def in_daemon_thread(fn: Callable[[], Any], name: str) -> Any:
    """``fn()`` on a thread of its own; awaiting it can be cancelled (a timeout), though the thread runs on.

    NOTE: a daemon thread, not a pool's: a plain function that hangs keeps its thread after its call timed out
    (Python cannot kill a thread), and a pool's threads are joined at exit, so one hung call would keep the
    worker from stopping. Calls are already bounded by the handler's slots.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if done.done():  # cancelled (timed out) meanwhile
            return
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)

    def run() -> None:
        try:
            result = fn()
        except BaseException as e:
            outcome = (False, e)
        else:
            outcome = (True, result)
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


def build_registry(settings: Settings, modules: list[str], builtins: bool = True) -> FunctionRegistry:
    """Built-ins (unless off) plus every function of ``modules`` and of the config's ``functions.modules``."""
    registry = FunctionRegistry()
    if builtins:
        registry.extend(builtin_functions())
    names = list(dict.fromkeys([*settings.functions.modules, *modules]))
    registry.extend(load_modules(names))
    return registry


async def run_functions_worker(
    settings: Settings,
    modules: list[str],
    nats_url: str,
    *,
    worker_id: str | None = None,
    builtins: bool | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the built-ins and ``modules``' functions until ``stop`` is set, or SIGINT/SIGTERM without one.

    Args:
        settings: The config; its ``functions`` section adds modules and sets limits.
        modules: Importable module names whose ``@ember.function``s to serve.
        nats_url: The bus.
        worker_id: A stable name; each function's host is ``<worker_id>-<n>``. Default: random.
        builtins: Serve ``generate_image``, ``transcribe_audio`` and ``chat`` too. Default: config's
            ``functions.builtins``.
        stop: Set it to stop the worker (tests); None installs signal handlers.
    """
    use_builtins = settings.functions.builtins if builtins is None else builtins
    registry = build_registry(settings, modules, use_builtins)  # a bad module fails before we join the bus
    nc = await connect(nats_url, name="ember-worker-functions")
    bus = JobClient(nc)
    await bus.start()
    js = nc.jetstream()
    runtime = FunctionRuntime(settings, bus, await BlobStore.open(js), max_payload=nc.max_payload)
    catalog = await FunctionCatalog.open(js)
    base = worker_id or f"fn-{uuid.uuid4().hex[:12]}"
    hosts = []
    for i, defn in enumerate(registry):
        await catalog.publish(info(defn))
        hosts.append(WorkerHost(nc, FunctionHandler(defn, runtime), worker_id=f"{base}-{i}"))
    await usage_stream.ensure_stream(js)  # async jobs are billed from here
    await queue.ensure_stream(js, settings.functions)
    store = await JobStore.open(js, settings.functions.job_ttl_s)
    stop = stop_event(stop)
    queued: list[QueuedJobs] = []
    try:
        for host in hosts:
            await host.start()
            h = host.handler
            assert isinstance(h, FunctionHandler)
            queued.append(
                await QueuedJobs.start(
                    nc,
                    store,
                    settings.functions,
                    modality=h.modality,
                    model=h.model,
                    executor=h,
                    worker_id=host.worker_id,
                    capacity=h.max_batch,
                )
            )
        names = ", ".join(d.name for d in registry)
        print(f"ember worker: functions ready ({base}): {names}", flush=True)
        await stop.wait()
    finally:
        # Every host drains at once: the worker leaves within worker.drain_timeout_s however many functions it has;
        # queued jobs still running then go back to the queue for another worker.
        grace = settings.worker.drain_timeout_s
        stopping = [*(q.stop(grace) for q in queued), *(host.stop(grace) for host in hosts)]
        await asyncio.gather(*stopping, return_exceptions=True)
        await bus.stop()
        await nc.drain()
