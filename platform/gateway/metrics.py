"""The gateway's Prometheus metrics, and ``GET /metrics``: its own families and every worker's, on one page.

Families (Prometheus conventions: base units, ``_total`` on counters, ``_seconds`` on times)::

    ember_http_requests_total{route,model,status,tier}        every response, by route template and outcome
    ember_http_requests_in_flight                              requests being handled now
    ember_http_request_duration_seconds{route,model}           received -> last byte sent
    ember_http_time_to_first_token_seconds{route,model}        received -> the job's first output reply
    ember_http_time_per_output_token_seconds{model}            first -> last reply, per generated token after the first
    ember_http_request_bytes_total{route} / _response_bytes_total{route}
    ember_http_errors_total{status,code}                       every OpenAI-shaped error, by its code (429s and 503s
                                                               by reason: rate_limit_exceeded, no_worker, overloaded)
    ember_job_hop_seconds{hop,modality}                        each hop of a job: gateway (received -> published),
                                                               accept, first_reply, stream (first -> last), respond
    ember_prompt_tokens_total{model} / ember_completion_tokens_total{model}
    ember_limit_decisions_total{tier,dimension,outcome}        admissions and refusals of the rate limiter

and, gathered from the workers over NATS with ``worker``, ``model`` and ``modality`` labels (ember.bus.metrics):
``ember_worker_requests_running`` / ``_waiting``, ``ember_engine_step_seconds``, ``ember_engine_batch_rows`` and
each runtime's own (``ember_text_*``, ``ember_image_*``, ``ember_audio_*``, ``ember_embed_*``, ``ember_speech_*``).
``/metrics?scope=gateway`` leaves the workers out (scrape one gateway for them, every gateway with it).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import REGISTRY
from starlette.requests import Request
from starlette.responses import Response

from ember.bus.metrics import gather, render
from ember.bus.registry import WorkerRegistry

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)

HTTP_REQUESTS = Counter(
    "ember_http_requests", "HTTP responses by route, model, status and tier.", ["route", "model", "status", "tier"]
)
IN_FLIGHT = Gauge("ember_http_requests_in_flight", "HTTP requests being handled.")
REQUEST_SECONDS = Histogram(
    "ember_http_request_duration_seconds",
    "From the request received to its response's last byte.",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
FIRST_TOKEN_SECONDS = Histogram(
    "ember_http_time_to_first_token_seconds",
    "From the request received to its job's first output (a token, a step, a segment).",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
TOKEN_SECONDS = Histogram(
    "ember_http_time_per_output_token_seconds",
    "Time per generated token after the first.",
    ["model"],
    buckets=TOKEN_BUCKETS,
)
REQUEST_BYTES = Counter("ember_http_request_bytes", "Request body bytes received.", ["route"])
RESPONSE_BYTES = Counter("ember_http_response_bytes", "Response body bytes sent.", ["route"])
ERRORS = Counter("ember_http_errors", "Error responses by status and error code.", ["status", "code"])
HOP_SECONDS = Histogram(
    "ember_job_hop_seconds",
    "Each hop of a job: gateway (received -> published), accept (-> worker accepted), first_reply, "
    "stream (first -> last reply), respond (last reply -> response done).",
    ["hop", "modality"],
    buckets=LATENCY_BUCKETS,
)
JOBS_MOVED = Counter(
    "ember_jobs_moved",
    "Jobs a busy worker released before starting them, sent on to a worker with room (one that came up later).",
    ["modality", "model"],
)
PROMPT_TOKENS = Counter("ember_prompt_tokens", "Prompt tokens of finished requests.", ["model"])
COMPLETION_TOKENS = Counter("ember_completion_tokens", "Generated tokens of finished requests.", ["model"])
LIMIT_DECISIONS = Counter(
    "ember_limit_decisions",
    "Rate-limit decisions by tier and dimension: admitted, or refused by that dimension.",
    ["tier", "dimension", "outcome"],
)


async def metrics_page(request: Request) -> Response:
    """``GET /metrics``: the Prometheus text page (``?scope=gateway``: this gateway's families alone)."""
    families = {f.name: f for f in REGISTRY.collect()}
    if request.query_params.get("scope") != "gateway":
        from ember.gateway.state import GatewayState, state  # errors.py counts into this module: import late

        bus = GatewayState.running(state(request).bus, "the job bus")
        registry: WorkerRegistry = bus.registry
        for family in await gather(bus.nc, registry):
            own = families.get(family.name)
            if own is None:
                families[family.name] = family
            elif own.type == family.type:  # process_* and python_* of the gateway's own process beside the workers'
                own.samples.extend(family.samples)
    return Response(render(families.values()), media_type="text/plain; version=0.0.4; charset=utf-8")
