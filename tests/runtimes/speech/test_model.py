"""The piper voice: sentences in pieces, input espeak-ng cannot take, speed, and the loader's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ember.config import ConfigError, ModelSpec
from ember.runtimes.speech.loader import load_voice, voice_files
from ember.runtimes.speech.model import MAX_PIECE_PHONEMES, PiperModel, TextError, speakable, split_piece


def test_long_sentences_are_cut_at_a_clause_mark_then_at_a_word() -> None:
    words = list("ab cd ef, gh ij kl; mn op")
    pieces = split_piece(words, limit=12)
    # Cut after the last clause mark that fits, the spaces after a cut dropped; nothing lost or reordered.
    assert ["".join(p) for p in pieces] == ["ab cd ef,", "gh ij kl;", "mn op"]
    assert ["".join(p) for p in split_piece(list("abc def ghi jkl"), limit=8)] == ["abc def", "ghi jkl"]
    assert ["".join(p) for p in split_piece(list("abcdefghij"), limit=4)] == ["abcd", "efgh", "ij"]
    assert split_piece(list("short."), limit=200) == [list("short.")]


def test_pieces_are_sentences_and_text_without_speech_is_refused(piper: PiperModel) -> None:
    assert len(piper.pieces("The first sentence. Is this the second? Yes, the third!")) == 3
    run_on = " ".join(["word"] * 1000)
    pieces = piper.pieces(run_on)
    assert len(pieces) > 5 and all(len(p) <= MAX_PIECE_PHONEMES for p in pieces)
    # A NUL makes espeak-ng raise; control characters go, line breaks become spaces.
    assert speakable("a\x00b\nc\td\x07") == "ab c d"
    assert piper.pieces("Hello\x00 world.") == piper.pieces("Hello world.")
    for nothing in ("", "   \n\t", "\u200b", "\x00\x01"):
        with pytest.raises(TextError, match="nothing to speak"):
            piper.pieces(nothing)


def test_speed_scales_the_duration(piper: PiperModel) -> None:
    (piece,) = piper.pieces("The library opens at nine in the morning.")
    seconds = {
        speed: piper.synthesize(piece, piper.voice_for(0, speed)).size / piper.sample_rate
        for speed in (0.25, 0.5, 1.0, 2.0, 4.0)
    }
    normal = piper.synthesize(piece, piper.voice_for(0, 1.0))
    assert normal.dtype == np.float32 and normal.ndim == 1 and float(np.abs(normal).max()) == pytest.approx(1.0)
    assert piper.sample_rate == 22050 and 1.5 < seconds[1.0] < 3.5
    # Faster is shorter at every step. Speed scales each phoneme's length (piper's length_scale), and a phoneme
    # lasts at least one frame, so the fast end shortens less than asked (the noise piper draws for its prosody
    # moves each length a little too).
    assert seconds[0.25] > seconds[0.5] > seconds[1.0] > seconds[2.0] > seconds[4.0]
    assert seconds[0.5] / seconds[1.0] > 1.6 and seconds[2.0] / seconds[1.0] < 0.75


def test_the_loader_finds_the_voice_and_checks_the_configured_speakers(voice_dir: Path, tmp_path: Path) -> None:
    network, config = voice_files(voice_dir)
    assert network.name == "en_US-joe-medium.onnx" and config.name == "en_US-joe-medium.onnx.json"
    assert voice_files(network) == (network, config)
    (tmp_path / "a.onnx").symlink_to(network)
    with pytest.raises(ConfigError, match=r"needs <name>\.onnx with <name>\.onnx\.json beside it"):
        voice_files(tmp_path)
    (tmp_path / "b.onnx").symlink_to(network)
    with pytest.raises(ConfigError, match=r"exactly one \.onnx voice; .* holds a\.onnx, b\.onnx"):
        voice_files(tmp_path)
    with pytest.raises(ConfigError, match=r"voice 'bob': speaker 3 is not in en_US-joe-medium.onnx"):
        load_voice(voice_dir, device="cpu", voices={"joe": 0, "bob": 3})
    with pytest.raises(ConfigError, match="voice 'amy': speaker 'amy'"):
        load_voice(voice_dir, device="cpu", voices={"amy": "amy"})


def test_voices_are_configured_per_model() -> None:
    spec = ModelSpec(modality="speech", path=Path("/v"), voices={"amy": 3, "bob": "p225"}, default_voice="bob")
    assert spec.speaker("amy") == 3 and spec.speaker("bob") == spec.speaker("nova") == "p225"
    assert spec.voice_names()[:3] == ["amy", "bob", "alloy"] and "shimmer" in spec.voice_names()
    with pytest.raises(KeyError):
        spec.speaker("carol")
    # No voices: OpenAI's names mean the voice file's own default speaker.
    assert ModelSpec(modality="speech", path=Path("/v")).speaker("alloy") is None
    assert ModelSpec(modality="speech", path=Path("/v"), voices={"amy": 3}).speaker("echo") == 3
    with pytest.raises(ValidationError, match="default_voice 'zed' is not one of the model's voices"):
        ModelSpec(modality="speech", path=Path("/v"), voices={"amy": 3}, default_voice="zed")
