"""Uploads in any container and sample format become 16 kHz mono float32; anything else is a clean AudioDecodeError."""

from __future__ import annotations

import io
import random
import wave

import av
import numpy as np
import pytest

from ember.runtimes.audio.decode import SAMPLE_RATE, AudioDecodeError, decode_audio


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """A 440 Hz sine, ``[channels, n]`` float32 in [-0.5, 0.5]."""
    t = np.arange(int(seconds * rate)) / rate
    return np.tile(0.5 * np.sin(2 * np.pi * 440 * t), (channels, 1)).astype(np.float32)


def encode(samples: np.ndarray, rate: int, container: str, codec: str, fmt: str) -> bytes:
    """``samples`` ([channels, n] float32) written by PyAV's encoders into a file of ``container``."""
    buf = io.BytesIO()
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1, order="F"), format="flt", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        for f in resampler.resample(frame):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples[0] * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.mark.parametrize(
    ("container", "codec", "fmt", "rate", "channels"),
    [
        ("wav", "pcm_s16le", "s16", 22050, 1),
        ("wav", "pcm_u8", "u8", 8000, 1),
        ("wav", "pcm_f32le", "flt", 48000, 2),
        ("flac", "flac", "s16", 44100, 2),
        ("mp3", "libmp3lame", "fltp", 44100, 1),
        ("ogg", "libopus", "s16", 48000, 1),
        ("adts", "aac", "fltp", 16000, 1),
    ],
)
def test_formats_decode_to_16k_mono(container: str, codec: str, fmt: str, rate: int, channels: int) -> None:
    data = encode(tone(2.0, rate, channels), rate, container, codec, fmt)
    samples = decode_audio(data)
    assert samples.dtype == np.float32 and samples.ndim == 1
    # Lossy codecs pad a frame or two at either end.
    assert abs(samples.size - 2 * SAMPLE_RATE) < 0.15 * SAMPLE_RATE  # lossy codecs pad a frame or two (AAC: 2048)
    # The level survives; stereo is downmixed as ffmpeg -ac 1 does (-3 dB per channel), not summed (1.0).
    assert 0.3 < np.abs(samples).max() <= 0.75


def test_the_tone_keeps_its_pitch() -> None:
    samples = decode_audio(wav_bytes(tone(1.0, 22050), 22050))
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / samples.size - 440) < 5


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"hello, this is not audio at all" * 20, "decode"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "decode"),  # a header cut short
        (wav_bytes(tone(0.0, 16000), 16000), "no audio samples"),  # a valid header with no frames
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "no audio stream"),  # an image
    ],
    ids=["empty", "text", "cut-header", "no-frames", "png"],
)
def test_bad_input_is_a_decode_error(data: bytes, why: str) -> None:
    with pytest.raises(AudioDecodeError, match=why):
        decode_audio(data)


def test_a_video_without_audio_is_refused() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=1)
        stream.width, stream.height = 16, 16
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_audio(buf.getvalue())


def test_audio_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(AudioDecodeError, match="longer than"):
        decode_audio(wav_bytes(tone(3.0, 16000), 16000), max_seconds=1.0)


def corruptions(data: bytes, n: int, seed: int = 0) -> list[bytes]:
    """Damaged copies: cut short, bytes flipped, chunks zeroed or shuffled, headers spliced."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        b = bytearray(data)
        kind = i % 5
        if kind == 0:
            b = b[: rng.randrange(0, len(b))]
        elif kind == 1:
            for _ in range(rng.randrange(1, 64)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind == 2:
            start = rng.randrange(len(b))
            b[start : start + rng.randrange(1, 4096)] = bytes(min(4096, len(b) - start))
        elif kind == 3:
            cut = rng.randrange(len(b))
            b = b[cut:] + b[:cut]
        else:
            b[: rng.randrange(1, 64)] = bytes(rng.randrange(256) for _ in range(64))[: rng.randrange(1, 64)]
        out.append(bytes(b))
    return out


@pytest.mark.parametrize(
    ("container", "codec", "fmt"), [("wav", "pcm_s16le", "s16"), ("flac", "flac", "s16"), ("mp3", "libmp3lame", "fltp")]
)
def test_corrupted_files_decode_or_fail_cleanly(container: str, codec: str, fmt: str) -> None:
    """A fuzz: every damaged file either decodes to finite samples or raises AudioDecodeError, nothing else."""
    data = encode(tone(1.0, 16000), 16000, container, codec, fmt)
    outcomes = {"decoded": 0, "refused": 0}
    for bad in corruptions(data, 100, seed=len(container)):
        try:
            samples = decode_audio(bad)
        except AudioDecodeError:
            outcomes["refused"] += 1
            continue
        assert samples.dtype == np.float32 and np.isfinite(samples).all() and np.abs(samples).max() <= 1.0
        outcomes["decoded"] += 1
    print(container, outcomes)
    assert outcomes["refused"] > 0 and outcomes["decoded"] > 0
