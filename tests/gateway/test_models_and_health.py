from __future__ import annotations

from pathlib import Path

import httpx

from ember.bus.nats_server import EmbeddedNats
from ember.config import Settings
from tests.conftest import TINY
from tests.helpers.cluster import GatewayThread


def test_models_lists_what_live_workers_serve(tiny_worker: str) -> None:
    body = httpx.get(f"{tiny_worker}/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert TINY in ids and "tiny-unserved" not in ids
    tiny = next(m for m in body["data"] if m["id"] == TINY)
    assert tiny["object"] == "model" and tiny["owned_by"] == "ember"
    assert tiny["context_length"] == 512 and tiny["modality"] == "text" and tiny["workers"] >= 1


def test_retrieve_one_model(tiny_worker: str) -> None:
    assert httpx.get(f"{tiny_worker}/v1/models/{TINY}").json()["id"] == TINY
    r = httpx.get(f"{tiny_worker}/v1/models/unknown")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_health_and_readiness(tiny_worker: str) -> None:
    assert httpx.get(f"{tiny_worker}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{tiny_worker}/readyz", params={"model": TINY})
    assert ready.status_code == 200, ready.text
    assert ready.json()["nats"] == "connected" and ready.json()["models"][TINY]["workers"] >= 1
    # The gateway as a whole is not ready: one of its configured models has no worker at all.
    whole = httpx.get(f"{tiny_worker}/readyz")
    assert whole.status_code == 503 and whole.json()["status"] == "not_ready"
    assert whole.json()["models"]["tiny-unserved"] == {"workers": 0, "ready": False}
    assert whole.json()["models"][TINY]["ready"] is True
    missing = httpx.get(f"{tiny_worker}/readyz", params={"model": "not-configured"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_not_ready_without_workers(tmp_path: Path) -> None:
    with EmbeddedNats(data_dir=tmp_path / "nats") as nats:
        gw = GatewayThread(Settings(auth={"enabled": False}), nats.url).start()
        try:
            r = httpx.get(f"{gw.url}/readyz")
            assert r.status_code == 503 and r.json()["workers"] == 0
            assert httpx.get(f"{gw.url}/healthz").status_code == 200
            assert httpx.get(f"{gw.url}/v1/models").json()["data"] == []
        finally:
            gw.stop()
