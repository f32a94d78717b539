"""Tiny pipelines in the real on-disk formats, loaded through the real loader (one per test module)."""

from __future__ import annotations

import pytest

from ember.runtimes.image.loader import LoadedPipeline, load_pipeline
from tests.helpers.tiny_diffusion import write_tiny_pixel, write_tiny_sd


@pytest.fixture(scope="module")
def pixel(tmp_path_factory: pytest.TempPathFactory) -> LoadedPipeline:
    return load_pipeline(write_tiny_pixel(tmp_path_factory.mktemp("img") / "tiny-pixel"))


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> LoadedPipeline:
    return load_pipeline(write_tiny_sd(tmp_path_factory.mktemp("img") / "tiny-sd"))
