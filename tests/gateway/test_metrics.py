"""GET /metrics on a running stack (the session's gateway, a tiny text worker and a tiny embeddings worker): the
gateway's families and the workers' gathered ones move under load, and each response says where its time went."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TINY
from tests.helpers.cluster import GatewayThread, running_worker, write_config
from tests.helpers.metrics import label_values, scrape, total
from tests.helpers.tiny_embedder import write_tiny_embedder

EMBED = "tiny-embed-metrics"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def stack(
    tiny_worker: str, gateway: GatewayThread, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("metrics")
    folder = write_tiny_embedder(root / "embed")
    config = write_config(root / "ember.toml", {EMBED: {"modality": "embed", "path": str(folder)}})
    with running_worker(config, EMBED, nats_url, gateway.url, log=root / "embed.log", modality="embed", timeout=120):
        yield tiny_worker


def chat(base: str, **body: object) -> httpx.Response:
    payload = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **body}
    return httpx.post(base + CHAT, json=payload, timeout=60)


def test_gateway_and_worker_families_move_under_load(stack: str) -> None:
    before = scrape(stack)
    for _ in range(3):
        assert chat(stack).status_code == 200
    with httpx.stream("POST", stack + CHAT, json={"model": TINY, "messages": [{"role": "user", "content": "go"}],
                      "max_tokens": 12, "ignore_eos": True, "stream": True}, timeout=60) as r:  # fmt: skip
        assert r.status_code == 200 and sum(1 for _ in r.iter_lines()) > 3
    assert httpx.post(stack + "/v1/embeddings", json={"model": EMBED, "input": ["a b", "c"]}, timeout=60).is_success
    assert chat(stack, model="no-such-model").status_code == 404
    after = scrape(stack)

    def moved(name: str, by: float = 1, **labels: str) -> None:
        assert total(after, name, **labels) - total(before, name, **labels) >= by, (name, labels)

    moved("ember_http_requests_total", 4, route=CHAT, model=TINY, status="200")
    moved("ember_http_requests_total", 1, route="/v1/embeddings", model=EMBED, status="200")
    moved("ember_http_errors_total", 1, status="404", code="model_not_found")
    moved("ember_http_request_duration_seconds_count", 4, route=CHAT, model=TINY)
    moved("ember_http_time_to_first_token_seconds_count", 4, route=CHAT, model=TINY)
    moved("ember_http_time_per_output_token_seconds_count", 1, model=TINY)
    moved("ember_http_request_bytes_total", 100, route=CHAT)
    moved("ember_http_response_bytes_total", 100, route=CHAT)
    for hop in ("gateway", "accept", "first_reply", "stream", "respond"):
        moved("ember_job_hop_seconds_count", 4, hop=hop, modality="text")
    moved("ember_prompt_tokens_total", 4, model=TINY)
    moved("ember_completion_tokens_total", 12 + 3, model=TINY)
    assert ("ember_http_requests_in_flight", frozenset()) in after
    # The workers' pages, gathered over NATS and labelled with their worker and model.
    moved("ember_text_tokens_total", 12, model=TINY, phase="decode")
    moved("ember_text_tokens_total", 4, model=TINY, phase="prefill")
    moved("ember_text_generated_tokens_total", 12 + 3, model=TINY)
    moved("ember_text_prompt_tokens_total", 4, model=TINY)
    moved("ember_engine_step_seconds_count", 12, model=TINY, modality="text")
    moved("ember_engine_batch_rows_count", 12, model=TINY)
    moved("ember_embed_inputs_total", 2, model=EMBED, modality="embed")
    assert total(after, "ember_text_kv_blocks", model=TINY, state="free") > 0
    assert {TINY, EMBED} <= label_values(after, "ember_worker_requests_running", "model")
    assert all(w.startswith("w-") for w in label_values(after, "ember_worker_requests_waiting", "worker"))
    # Only this gateway's families: no worker's.
    own = scrape(stack, scope="gateway")
    assert total(own, "ember_http_requests_total") > 0 and not label_values(own, "ember_text_tokens_total", "model")


def test_each_response_says_where_its_time_went(stack: str) -> None:
    r = chat(stack)
    hops = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
    assert list(hops) == ["gateway", "accept", "first_reply", "stream"]
    assert all(float(ms) >= 0 for ms in hops.values())
    marks = dict(kv.split("=") for kv in r.headers["x-ember-timing"].split(";"))
    since = [float(marks[k]) for k in ("published", "accepted", "first_reply", "last_reply")]
    assert since == sorted(since) and since[-1] == pytest.approx(sum(float(v) for v in hops.values()), abs=0.5)
    # A streamed response starts once its job is accepted: its headers have the hops known by then.
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", stack + CHAT, json=body, timeout=60) as streamed:
        assert streamed.headers["server-timing"].startswith("gateway;dur=")
        assert "accepted=" in streamed.headers["x-ember-timing"]


def test_metrics_needs_no_key_and_is_prometheus_text(stack: str) -> None:
    r = httpx.get(stack + "/metrics", timeout=30)
    assert r.status_code == 200 and "# TYPE ember_http_requests_total counter" in r.text
    assert "_created" not in r.text
