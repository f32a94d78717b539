"""One rule for where every runtime puts its model: ModelSpec.device, with "auto" resolved here."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from ember.config import ModelSpec
from ember.runtimes.devices import DeviceError, free_memory, resolve_device


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu() -> None:
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_gpu_that_is_not_there_is_refused_at_start() -> None:
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="cuda:3"):
        resolve_device("cuda:3")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_index_past_the_last_is_refused() -> None:
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="CUDA GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_the_config_takes_only_known_device_names() -> None:
    assert ModelSpec(path="/m").device == "auto"
    assert ModelSpec(path="/m", device="cuda:1").device == "cuda:1"
    for bad in ("tpu", "cuda:x", "CPU", "cuda:"):
        with pytest.raises(ValidationError):
            ModelSpec(path="/m", device=bad)


def test_free_memory_is_some_of_the_machine() -> None:
    free = free_memory(torch.device("cpu"))
    assert 0 < free < 1 << 50
