"""Every request measured, whatever its route: counts, latencies, bytes, and where its jobs spent their time.

A pure ASGI middleware (it buffers nothing, so streams pass straight through). It gives the request a list in
``ember.bus.stream.request_jobs``, which ``JobClient.submit`` fills with the jobs the route starts; so each hop
of the first job (received -> published -> accepted -> first reply -> last reply -> response done) is known
without any route's help. The hops known when the response starts are also sent back in two headers:

    Server-Timing: gateway;dur=0.8, accept;dur=2.1, first_reply;dur=35.0, stream;dur=410.2
    x-ember-timing: published=0.8;accepted=2.9;first_reply=37.9;last_reply=448.1   (ms since received)

(a streamed response starts once its job is accepted, so its headers hold the first two hops; the histograms
get them all). The route's model and the key's tier come from ``request.state`` (set by ``Quota.open``).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.bus.stream import JobStream, JobTimeline, request_jobs
from ember.gateway import metrics

# Each mark of a job's timeline, and the hop that ends there: gateway (received -> published), accept, first_reply,
# stream (first -> last reply). "respond" (last reply -> response done) is the middleware's own.
_HOPS = (("published", "gateway"), ("accepted", "accept"), ("first_reply", "first_reply"), ("last_reply", "stream"))


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = time.perf_counter()
        jobs: list[JobStream[Any]] = []
        token = request_jobs.set(jobs)
        status = 500
        sent = 0
        read = 0

        async def counting_receive() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
            return message

        async def timed_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                if jobs:
                    message = {**message, "headers": [*message.get("headers", []), *timing_headers(received, jobs[0])]}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, counting_receive, timed_send)
        finally:
            metrics.IN_FLIGHT.dec()
            request_jobs.reset(token)
            observe(scope, status, received, read, sent, jobs)


def timing_headers(received: float, job: JobStream[Any]) -> list[tuple[bytes, bytes]]:
    """Server-Timing (each hop's own duration) and x-ember-timing (each hop's time since received), in ms."""
    hops = _hops(received, job.timeline)
    if not hops:
        return []
    durations = ", ".join(f"{name};dur={took * 1000:.1f}" for _, name, _, took in hops)
    since = ";".join(f"{mark}={at * 1000:.1f}" for mark, _, at, _ in hops)
    return [(b"server-timing", durations.encode()), (b"x-ember-timing", since.encode())]


def _hops(received: float, timeline: JobTimeline) -> list[tuple[str, str, float, float]]:
    """(timeline mark, hop name, seconds since received, the hop's own seconds) of each hop passed so far, in
    order, stopping at the first one not reached."""
    out = []
    previous = received
    for mark, name in _HOPS:
        at = getattr(timeline, mark)
        if at is None:
            break
        out.append((mark, name, at - received, at - previous))
        previous = at
    return out


def observe(scope: Scope, status: int, received: float, read: int, sent: int, jobs: list[JobStream[Any]]) -> None:
    """Count the finished request in every family it belongs to."""
    done = time.perf_counter()
    route_obj = scope.get("route")
    route = getattr(route_obj, "path", None) or "other"
    state = scope.get("state", {})
    model = state.get("metrics_model", "")
    tier = state.get("metrics_tier", "")
    metrics.HTTP_REQUESTS.labels(route, model, str(status), tier).inc()
    metrics.REQUEST_SECONDS.labels(route, model).observe(done - received)
    metrics.REQUEST_BYTES.labels(route).inc(read)
    metrics.RESPONSE_BYTES.labels(route).inc(sent)
    if not jobs:
        return
    for job in jobs:
        if job.moves:
            metrics.JOBS_MOVED.labels(job.modality, job.model).inc(job.moves)
    t = jobs[0].timeline
    modality = jobs[0].modality
    hops = _hops(received, t)
    for _, name, _, took in hops:
        metrics.HOP_SECONDS.labels(name, modality).observe(took)
    if len(hops) < len(_HOPS):
        return
    assert t.first_reply is not None and t.last_reply is not None
    metrics.HOP_SECONDS.labels("respond", modality).observe(max(done - t.last_reply, 0.0))
    if status < 400:
        metrics.FIRST_TOKEN_SECONDS.labels(route, model).observe(t.first_reply - received)
        generated = state.get("metrics_completion_tokens", 0)
        if generated > 1:
            metrics.TOKEN_SECONDS.labels(model).observe((t.last_reply - t.first_reply) / (generated - 1))
