"""Sampling a request leaves unset: the request, then the config, then generation_config.json, then OpenAI's."""

from __future__ import annotations

import json
from pathlib import Path

from ember.bus.messages import SamplingDefaults, SamplingParams
from ember.config import DEFAULT_MODEL, SMOLLM2_MODEL, ModelSpec, load_settings
from ember.gateway.schemas import ChatCompletionRequest
from ember.runtimes.text.worker import sampling_defaults

MSG = [{"role": "user", "content": "hi"}]


def write_generation_config(folder: Path, **values: object) -> Path:
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, **values}))
    return folder


def test_the_gateway_leaves_unset_fields_unset() -> None:
    params = ChatCompletionRequest(model="m", messages=MSG).sampling(0, None)  # type: ignore[arg-type]
    assert (params.temperature, params.top_p, params.top_k) == (None, None, None)
    params = ChatCompletionRequest(model="m", messages=MSG, temperature=0.7, top_p=0).sampling(0, None)  # type: ignore[arg-type]
    assert params.temperature == 0.0  # top_p=0 means only the most likely token


def test_request_values_win_over_defaults() -> None:
    defaults = SamplingDefaults(temperature=0.2, top_p=0.9, top_k=40)
    assert SamplingParams().with_defaults(defaults) == SamplingParams(temperature=0.2, top_p=0.9, top_k=40)
    explicit = SamplingParams(temperature=0.0, top_p=1.0, top_k=0).with_defaults(defaults)
    assert (explicit.temperature, explicit.top_p, explicit.top_k) == (0.0, 1.0, 0)


def test_config_then_generation_config_then_openai(tmp_path: Path) -> None:
    folder = write_generation_config(tmp_path, temperature=0.6, top_p=0.95, top_k=20)
    from_file = sampling_defaults(ModelSpec(path=folder), folder)
    assert from_file == SamplingDefaults(temperature=0.6, top_p=0.95, top_k=20)
    configured = SamplingDefaults(temperature=0.1)
    assert sampling_defaults(ModelSpec(path=folder, sampling=configured), folder) == configured
    write_generation_config(tmp_path)
    assert sampling_defaults(ModelSpec(path=folder), folder) == SamplingDefaults()


def test_greedy_models_and_bad_values(tmp_path: Path) -> None:
    folder = write_generation_config(tmp_path, do_sample=False, temperature=0.9)
    assert sampling_defaults(ModelSpec(path=folder), folder).temperature == 0.0
    write_generation_config(tmp_path, temperature=-3)
    assert sampling_defaults(ModelSpec(path=folder), folder) == SamplingDefaults()


def test_the_shipped_models_use_their_published_settings() -> None:
    settings = load_settings(Path("/dev/null"))
    # Qwen2.5's generation_config.json (the GGUF does not carry one); SmolLM2's model card.
    assert settings.model(DEFAULT_MODEL).sampling == SamplingDefaults(temperature=0.7, top_p=0.8, top_k=20)
    assert settings.model(SMOLLM2_MODEL).sampling == SamplingDefaults(temperature=0.2, top_p=0.9)
