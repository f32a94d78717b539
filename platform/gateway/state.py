"""What the gateway's routes and middleware find on its app: one typed object instead of a bag of attributes.

``create_app`` makes it with the config; the app's lifespan fills in the services it starts on the NATS
connection (the job client, the stores, the limiter, the key store). A route asks for a service through
``state(request)`` and gets a 503 naming it if the gateway has not started it (yet, or at all: a gateway with
keys off has no limiter).

    app.state.gateway = GatewayState(settings, expected_models)   # create_app
    gw = state(request); gw.running(gw.files, "the file store")     # a route
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from nats.js import JetStreamContext
from starlette.requests import Request

from ember.auth.interface import KeyStore
from ember.bus.blobs import BlobStore
from ember.bus.client import JobClient
from ember.config import Settings
from ember.gateway.errors import ServiceUnavailable
from ember.limits.interface import RateLimiter

if TYPE_CHECKING:
    from ember.batches.store import BatchStore
    from ember.files.store import FileStore
    from ember.functions.async_jobs import AsyncJobs
    from ember.functions.caller import FunctionCaller

T = TypeVar("T")


@dataclass
class GatewayState:
    settings: Settings
    # The models /readyz waits for (``ember serve --model``; every configured one by default).
    expected_models: frozenset[str]
    # Started by the lifespan:
    bus: JobClient | None = None
    # JetStream on the gateway's connection: the usage stream, the batch queue.
    js: JetStreamContext | None = None
    # Payloads too big for a job message, shared with the workers; generated images served as URLs.
    blobs: BlobStore | None = None
    image_files: BlobStore | None = None
    files: FileStore | None = None
    batches: BatchStore | None = None
    functions: FunctionCaller | None = None
    function_jobs: AsyncJobs | None = None
    # None with keys off: requests run unmetered (their usage is still recorded).
    limiter: RateLimiter | None = None
    # None unless keys are on or an admin key is set.
    key_store: KeyStore | None = None

    @staticmethod
    def running(service: T | None, what: str) -> T:
        """``service``, or a 503 saying that ``what`` is not running on this gateway."""
        if service is None:
            code = what.removeprefix("the ").replace(" ", "_") + "_unavailable"
            raise ServiceUnavailable(f"{what} is not running on this gateway", code=code)
        return service


def gateway_state(app: Any) -> GatewayState:
    found = getattr(getattr(app, "state", None), "gateway", None)
    if not isinstance(found, GatewayState):
        raise ServiceUnavailable("the gateway has not started", code="gateway_starting")
    return found


def state(request: Request) -> GatewayState:
    return gateway_state(request.app)
