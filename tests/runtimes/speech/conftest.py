"""The speech runtime's model: the real piper voice the default config serves (63 MB, loads in a fraction of a
second, speaks at tens of times real time on one core)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.config import DEFAULT_SPEECH_MODEL
from ember.config.settings import default_models
from ember.config.weights import resolve_weights
from ember.runtimes.speech.loader import load_voice
from ember.runtimes.speech.model import PiperModel


@pytest.fixture(scope="session")
def voice_dir() -> Path:
    return resolve_weights(default_models()[DEFAULT_SPEECH_MODEL])


@pytest.fixture(scope="session")
def piper(voice_dir: Path) -> PiperModel:
    return load_voice(voice_dir, device="cpu", voices={"joe": 0})
