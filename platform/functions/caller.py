"""The caller's side of a function call (the gateway's invoke route and the orchestrator): find the function,
check the input against its schema before any work, send the ``FunctionJob`` and wait for its one result.

Every failure is a ``CallError`` carrying the ErrorInfo to show (see ``ember.functions.errors``); no call waits
past its timeout, even when the worker running it goes silent.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import jsonschema

from ember._functions import NAME_PATTERN
from ember.bus.client import JobClient, JobRefused
from ember.bus.errors import (
    BusUnavailableError,
    DeadlineExceededError,
    NoWorkerError,
    ReplyTimeoutError,
    WorkerLostError,
)
from ember.bus.messages import ErrorInfo, FunctionInfo, FunctionJob, FunctionResult, JobStatus, encode
from ember.config.settings import FunctionsSettings
from ember.functions import errors
from ember.functions.catalog import FunctionCatalog
from ember.functions.schema import check_schema, input_error

# Past a call's own timeout, how long the caller still waits for the worker's answer (the worker times the call
# out itself and says so; this only covers a worker that went away without a word).
BACKSTOP_S = 10.0
# How long a gateway trusts a function's declaration before reading it again (a worker that restarts with a
# changed function is seen within this).
CACHE_S = 2.0


class CallError(Exception):
    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def _unavailable(message: str, code: str) -> CallError:
    return CallError(ErrorInfo(status=503, type="server_error", code=code, message=message))


@dataclass
class CallResult:
    output: Any
    worker_id: str
    duration_ms: float


@dataclass
class FunctionCaller:
    bus: JobClient
    catalog: FunctionCatalog
    settings: FunctionsSettings
    accept_timeout_s: float = 30.0
    # Declarations read from the catalog in the last CACHE_S seconds (a call would otherwise cost a KV read),
    # and each schema's checked validator (building one checks the schema itself: the slow part).
    _declared: dict[str, tuple[float, FunctionInfo]] = field(default_factory=dict, init=False)
    _validators: dict[str, tuple[str, jsonschema.Draft202012Validator | str]] = field(default_factory=dict, init=False)

    def live(self) -> dict[str, int]:
        """Functions some worker serves now, with their worker counts."""
        return {name: len(ws) for name, ws in self.bus.registry.functions().items()}

    async def resolve(self, name: str) -> FunctionInfo:
        """The declaration of a live function; CallError 404 otherwise."""
        if not NAME_PATTERN.match(name) or name not in self.live():
            raise CallError(errors.not_found(name))
        return await self.declared(name)

    async def declared(self, name: str) -> FunctionInfo:
        """The declaration of a function some worker served at some time, live or not; CallError 404 otherwise."""
        if not NAME_PATTERN.match(name):
            raise CallError(errors.not_found(name))
        now = time.monotonic()
        cached = self._declared.get(name)
        if cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        found = await self.catalog.get(name)
        if found is None:
            raise CallError(errors.not_found(name))
        self._declared[name] = (now, found)
        return found

    def no_worker(self, name: str) -> CallError:
        return _unavailable(f"no worker is serving function {name!r} right now", "no_worker")

    def _validator(self, fn: FunctionInfo) -> jsonschema.Draft202012Validator | str:
        """The input schema's validator, or what is wrong with the schema."""
        key = json.dumps(fn.input_schema, sort_keys=True)
        cached = self._validators.get(fn.name)
        if cached is None or cached[0] != key:
            broken = check_schema(fn.input_schema)
            cached = (key, broken if broken is not None else jsonschema.Draft202012Validator(fn.input_schema))
            self._validators[fn.name] = cached
        return cached[1]

    def check_input(self, fn: FunctionInfo, value: Any) -> None:
        validator = self._validator(fn)
        if isinstance(validator, str):
            raise CallError(
                ErrorInfo(
                    status=500,
                    type="function_error",
                    code="invalid_function_schema",
                    message=f"function {fn.name!r} declares an invalid input schema: {validator}",
                )
            )
        problem = input_error(value, validator)
        if problem is not None:
            raise CallError(errors.bad_input(fn.name, *problem))

    def timeout(self, fn: FunctionInfo, requested: float | None) -> float:
        """The call's timeout: the request's, else the function's, else the default; never past the max."""
        cap = self.settings.max_timeout_s
        if requested is not None and requested > cap:
            raise CallError(
                ErrorInfo(
                    status=400,
                    type="invalid_request_error",
                    code="invalid_value",
                    param="timeout_s",
                    message=f"timeout_s={requested:g} exceeds this server's maximum of {cap:g}s",
                )
            )
        return min(requested or fn.timeout_s or self.settings.default_timeout_s, cap)

    async def call(
        self,
        fn: FunctionInfo,
        value: dict[str, Any],
        *,
        request_id: str,
        timeout_s: float,
        key_id: str | None = None,
        priority: int = 0,
    ) -> CallResult:
        """Run one call to its end; raises CallError."""
        job = FunctionJob(
            request_id=request_id, model=fn.name, input=value, timeout_s=timeout_s, priority=priority, key_id=key_id
        )
        limit = self.bus.nc.max_payload
        if len(encode(job)) > limit:
            raise CallError(
                ErrorInfo(
                    status=413,
                    type="invalid_request_error",
                    code="request_too_large",
                    param="input",
                    message=f"the input of function {fn.name!r} is over the bus's limit of {limit} bytes",
                )
            )
        started = time.perf_counter()
        try:
            stream = await self.bus.submit(job, FunctionResult)
        except BusUnavailableError as e:
            raise _unavailable(f"function {fn.name!r}: {e}", "bus_unavailable") from e
        result: FunctionResult | None = None
        try:
            async with asyncio.timeout(self.accept_timeout_s + timeout_s + BACKSTOP_S):
                accepted = await stream.wait_accepted(self.accept_timeout_s)
                async for reply in stream:
                    result = reply
        except JobRefused as e:
            raise CallError(e.failed.error) from e
        except NoWorkerError as e:
            raise self.no_worker(fn.name) from e
        except WorkerLostError as e:
            raise _unavailable(f"the worker running function {fn.name!r} went away: {e}", "worker_lost") from e
        except ReplyTimeoutError as e:
            raise _unavailable(f"function {fn.name!r}: {e}", "worker_timeout") from e
        except BusUnavailableError as e:
            raise _unavailable(f"function {fn.name!r}: {e}", "bus_unavailable") from e
        except (TimeoutError, DeadlineExceededError) as e:
            raise CallError(errors.timed_out(fn.name, timeout_s)) from e
        finally:
            with anyio.CancelScope(shield=True):  # the caller may be going away: still stop the call
                await stream.cancel()
        if result is None or result.status != JobStatus.FINISHED_STOPPED:
            raise _unavailable(f"function {fn.name!r} was stopped before it finished", "worker_stopping")
        return CallResult(result.output, accepted.worker_id, (time.perf_counter() - started) * 1000)
