"""Every response_format, encoded a piece at a time, decodes back to the audio made, at the rate it claims."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from ember.runtimes.speech.encoding import FORMATS, OPENAI_RATE, StreamEncoder, wav_header
from ember.runtimes.speech.model import PiperModel


def decoded(data: bytes) -> tuple[float, int, str]:
    """(seconds, rate, container) of an encoded stream, read back with FFmpeg."""
    with av.open(io.BytesIO(data)) as container:
        samples, rate = 0, 0
        for frame in container.decode(audio=0):
            samples += frame.samples
            rate = frame.sample_rate
        return samples / rate, rate, container.format.name


@pytest.fixture(scope="module")
def sentences(piper: PiperModel) -> list[np.ndarray]:
    voice = piper.voice_for(0, 1.0)
    return [piper.synthesize(p, voice) for p in piper.pieces("Knowledge is power. Practice makes perfect.")]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_decodes_to_the_duration_and_rate(fmt: str, sentences: list[np.ndarray]) -> None:
    encoder = StreamEncoder(fmt, 22050)
    parts = [encoder.encode(s) for s in sentences]
    parts.append(encoder.finish())
    seconds = sum(s.size for s in sentences) / 22050
    # Each sentence's bytes come out as it is encoded, not all at the end (an encoder holds back a frame at most).
    assert parts[0] and parts[1] and len(parts[-1]) < len(parts[0])
    data = b"".join(parts)
    if fmt == "pcm":  # raw 16-bit at OpenAI's 24 kHz
        assert encoder.sample_rate == OPENAI_RATE
        assert len(data) % 2 == 0 and len(data) / 2 / OPENAI_RATE == pytest.approx(seconds, abs=0.01)
        return
    got, rate, container = decoded(data)
    # Codecs pad to whole frames (and mp3/aac add an encoder delay): a few hundredths of a second at most.
    assert got == pytest.approx(seconds, abs=0.1)
    expected = {"mp3": ("mp3", 22050), "opus": ("ogg", 48000), "aac": ("aac", 22050), "flac": ("flac", 22050)}
    expected["wav"] = ("wav", 22050)
    assert (container, rate) == expected[fmt]
    if fmt == "wav":  # a streamed RIFF: its sizes say "to the end"
        assert data[:44] == wav_header(22050) and data[4:8] == data[40:44] == b"\xff\xff\xff\xff"


def test_the_pcm_stream_is_the_audio_resampled(sentences: list[np.ndarray]) -> None:
    encoder = StreamEncoder("pcm", 22050)
    data = b"".join([encoder.encode(s) for s in sentences] + [encoder.finish()])
    pcm = np.frombuffer(data, "<i2").astype(np.float32) / 32767
    source = np.concatenate(sentences)
    # The same signal at 24 kHz: compare on a common grid.
    grid = np.linspace(0, source.size / 22050, 2000, endpoint=False)
    ours = np.interp(grid, np.arange(pcm.size) / OPENAI_RATE, pcm)
    theirs = np.interp(grid, np.arange(source.size) / 22050, source)
    assert np.corrcoef(ours, theirs)[0, 1] > 0.9


def test_an_empty_stream_and_an_abandoned_one(sentences: list[np.ndarray]) -> None:
    assert StreamEncoder("wav", 22050).finish() == wav_header(22050)
    assert StreamEncoder("pcm", 22050).finish() == b""
    encoder = StreamEncoder("mp3", 22050)
    assert encoder.encode(sentences[0])
    encoder.close()  # a request that ended early: no trailer, no error
