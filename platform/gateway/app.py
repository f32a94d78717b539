"""The gateway as an ASGI app: routes, middleware, error handlers, and the NATS connection it lives on."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from ember.auth.keys import ApiKey, anonymous_key
from ember.auth.nats_kv import NatsKeyStore
from ember.batches.runner import BatchRunner
from ember.batches.store import BatchStore, ResultStore
from ember.bus.blobs import BlobStore
from ember.bus.client import JobClient, StreamTiming
from ember.bus.connection import connect
from ember.config import Settings
from ember.files.store import FileStore
from ember.gateway import errors, metrics
from ember.gateway.auth import AuthMiddleware
from ember.gateway.disconnect import DisconnectMiddleware
from ember.gateway.middleware import BodyLimitMiddleware, RequestIdMiddleware
from ember.gateway.request_metrics import RequestMetricsMiddleware
from ember.gateway.routes import (
    admin,
    audio,
    batches,
    chat,
    completions,
    embeddings,
    files,
    functions,
    health,
    images,
    models,
    playground,
    speech,
    usage,
)
from ember.gateway.state import GatewayState
from ember.limits.nats_kv import NatsRateLimiter
from ember.usage import stream as usage_stream

log = logging.getLogger("ember.gateway")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    errors.GatewayError: errors.handle_gateway_error,
    HTTPException: errors.handle_http_exception,
    Exception: errors.handle_unexpected,
}


async def batch_key(gw: GatewayState, key_id: str) -> ApiKey | None:
    """The key a batch runs as: the live key of that id, or (auth off) the anonymous one; None if revoked."""
    if not gw.settings.auth.enabled:
        return anonymous_key(gw.settings.auth.anonymous_tier)
    key = await gw.key_store.get(key_id) if gw.key_store is not None else None
    return None if key is None or key.revoked else key


def middleware(settings: Settings) -> list[Middleware]:
    """The gateway's middleware, outermost first."""
    return [
        # Outermost: every response is counted and timed, refusals by the middleware below included.
        Middleware(RequestMetricsMiddleware),
        Middleware(RequestIdMiddleware),
        # Outside the others: a client that hangs up cancels whatever handles its request, streamed or not.
        Middleware(DisconnectMiddleware),
        # Before the body is read: a request without a valid key costs us no more than its headers.
        Middleware(AuthMiddleware, settings=settings),
        Middleware(
            BodyLimitMiddleware,
            max_bytes=settings.gateway.max_body_bytes,
            per_path={**audio.BODY_LIMITS, files.PATH: settings.files.max_bytes + files.FORM_OVERHEAD_BYTES},
        ),
    ]


def create_app(settings: Settings, nats_url: str, ready_models: list[str] | None = None) -> Starlette:
    """An app that connects to NATS at startup and drains the connection at shutdown.

    ``ready_models``: those /readyz waits for (``ember serve --model``); all the configured ones by default.
    """

    gw = GatewayState(settings, frozenset(ready_models if ready_models is not None else settings.models))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nc = await connect(nats_url, name="ember-gateway")
        g = settings.gateway
        timing = StreamTiming(
            accept_timeout_s=g.accept_timeout_s,
            idle_probe_s=g.idle_probe_s,
            stall_limit_s=settings.worker.stall_limit_s,
            job_timeout_s=g.job_timeout_s,
            outage_limit_s=g.bus_outage_s,
        )
        # Models that scale to zero: a request for one with no worker waits for a cold start (ember.cli.scaler).
        cold_start = {
            m: spec.autoscale.cold_start_timeout_s
            for m, spec in settings.models.items()
            if spec.autoscaled and spec.worker_range[0] == 0
        }
        client = JobClient(nc, timing=timing, cold_start_s=cold_start)
        await client.start()
        gw.bus = client
        js = gw.js = nc.jetstream()
        await usage_stream.ensure_stream(js)
        # Payloads too big for one NATS message (uploads, big images) travel through the object store; generated
        # images asked for as URLs wait in their own bucket until it expires them.
        gw.blobs = await BlobStore.open(js)
        gw.image_files = await BlobStore.open(js, images.FILES_BUCKET, ttl_s=images.URL_TTL_S)
        gw.functions, gw.function_jobs = await functions.setup(client, js, settings)
        gw.files = await FileStore.open(js, settings.files.max_total_bytes)
        gw.batches = await BatchStore.open(js)
        batch_runner = BatchRunner(
            app,
            js,
            gw.batches,
            await ResultStore.open(js),
            gw.files,
            settings.batch,
            find_key=lambda key_id: batch_key(gw, key_id),
            known_model=lambda model: model in settings.models or model in client.registry.models(),
            slots=lambda modality, model: sum(w.max_batch for w in client.registry.serving(modality, model)),
            gateway_id=client.gateway_id,
            nc=nc,
        )
        # Dev mode (auth off) has no keys to limit: requests run unmetered, though their usage is still recorded.
        limiter = gw.limiter = await NatsRateLimiter.open(nc) if settings.auth.enabled else None
        store: NatsKeyStore | None = None
        # The admin API manages keys in dev mode too, whenever an admin key is set.
        if settings.auth.enabled or settings.auth.admin_key:
            store = NatsKeyStore(nc)
            await store.start()
        gw.key_store = store
        await batch_runner.start()
        try:
            yield
        finally:
            await batch_runner.stop()
            if store is not None:
                await store.stop()
            if limiter is not None:
                await limiter.close()
            await client.stop()
            # Usage records that waited out a NATS outage get a last chance before the connection closes.
            if not await usage_stream.flush_backlog(js, 5.0):
                log.error("usage records not written before shutdown (NATS unreachable)")
            if nc.is_connected:
                await nc.drain()
            else:  # NATS is away: there is nothing to drain, and drain() would refuse
                await nc.close()

    app = Starlette(
        routes=[
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/metrics", metrics.metrics_page, methods=["GET"]),
            Route("/v1/models", models.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", models.retrieve, methods=["GET"]),
            Route("/v1/chat/completions", chat.create, methods=["POST"]),
            Route("/v1/completions", completions.create, methods=["POST"]),
            Route("/v1/embeddings", embeddings.create, methods=["POST"]),
            Route("/v1/audio/transcriptions", audio.transcriptions, methods=["POST"]),
            Route("/v1/audio/translations", audio.translations, methods=["POST"]),
            Route("/v1/audio/speech", speech.create, methods=["POST"]),
            Route("/v1/images/generations", images.generations, methods=["POST"]),
            Route("/v1/images/edits", images.edits, methods=["POST"]),
            Route("/v1/images/variations", images.variations, methods=["POST"]),
            Route("/v1/images/files/{name}", images.file, methods=["GET"], name="image_file"),
            *admin.routes(),
            *functions.routes(),
            *files.routes(),
            *batches.routes(),
            Route("/v1/usage", usage.summary, methods=["GET"]),
            # The web playground: static files that call the API above (see routes/playground.py).
            Route("/", playground.index, methods=["GET"]),
            Route("/playground/{name}", playground.asset, methods=["GET"]),
        ],
        middleware=middleware(settings),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app
