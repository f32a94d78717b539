"""Uploads in the allowed containers and any sample format become 16 kHz mono float32; anything else is a clean
AudioDecodeError, and nothing in an upload makes FFmpeg open another resource."""

from __future__ import annotations

import io
import random
import time
import wave

import av
import numpy as np
import pytest

from ember.runtimes.audio import decode
from ember.runtimes.audio.decode import SAMPLE_RATE, AudioDecodeError, AudioTooLong, decode_audio, probe, sniff
from tests.helpers.audio_files import NOT_AUDIO, SDP, silent_wav


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
        ("ipod", "aac", "fltp", 16000, 1),  # .m4a
        ("mp4", "aac", "fltp", 44100, 2),
        ("webm", "libopus", "s16", 48000, 1),
        ("matroska", "libopus", "flt", 48000, 2),  # .mka
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
        (b"hello, this is not audio at all" * 20, "not in a supported audio format"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "could not read"),  # a header cut short
        (wav_bytes(tone(0.0, 16000), 16000), "no audio samples"),  # a valid header with no frames
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "not in a supported audio format"),  # an image
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


# Not on the list: raw AAC, with no container.
HOSTILE = {**NOT_AUDIO, "adts-aac": encode(tone(0.5, 16000), 16000, "adts", "aac", "fltp")}


@pytest.mark.parametrize("name", HOSTILE)
def test_playlists_and_session_descriptions_are_refused_at_once(name: str) -> None:
    for read in (decode_audio, probe):
        started = time.monotonic()
        with pytest.raises(AudioDecodeError):
            read(HOSTILE[name])
        assert time.monotonic() - started < 0.5, (name, read)


def test_even_a_forced_network_demuxer_opens_nothing() -> None:
    """The second lock: were the SDP demuxer ever chosen, the protocol whitelist stops its UDP opens at once
    (without it FFmpeg waits 20 s on the ports the file names)."""
    started = time.monotonic()
    with pytest.raises(AudioDecodeError):
        decode._open(SDP, "sdp", timeout_s=30.0)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("container", "codec", "fmt", "demuxer"),
    [
        ("wav", "pcm_s16le", "s16", "wav"),
        ("mp3", "libmp3lame", "fltp", "mp3"),
        ("flac", "flac", "s16", "flac"),
        ("ogg", "libopus", "s16", "ogg"),
        ("ipod", "aac", "fltp", "mov"),
        ("webm", "libopus", "s16", "matroska"),
    ],
)
def test_each_allowed_container_is_recognised_and_its_duration_read(
    container: str, codec: str, fmt: str, demuxer: str
) -> None:
    rate = 48000 if codec == "libopus" else 16000
    data = encode(tone(2.0, rate), rate, container, codec, fmt)
    assert sniff(data) == demuxer
    found = probe(data)
    assert found.demuxer == demuxer and found.duration is not None and abs(found.duration - 2.0) < 0.1


def test_mp3_without_a_tag_is_recognised_by_its_frame_header() -> None:
    data = encode(tone(1.0, 16000), 16000, "mp3", "libmp3lame", "fltp")
    bare = data[decode._id3_size(data) :]
    assert bare[:3] != b"ID3" and sniff(bare) == "mp3"
    assert abs(decode_audio(bare).size - SAMPLE_RATE) < 0.1 * SAMPLE_RATE


def test_a_file_over_the_cap_is_refused_from_its_header_before_decoding() -> None:
    data = silent_wav(600)
    started = time.monotonic()
    with pytest.raises(AudioTooLong, match="limit of 60 s"):
        probe(data, max_seconds=60)
    assert time.monotonic() - started < 0.1  # decoding all of it takes ~0.3 s here
    assert probe(data, max_seconds=600).duration == 600.0


def test_a_header_that_understates_the_length_is_caught_while_decoding() -> None:
    """A streamed WAV declares no size; whatever the header says, decoding stops at the cap."""
    data = bytearray(silent_wav(120))
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"
    with pytest.raises(AudioTooLong, match="limit of 30 s"):
        decode_audio(bytes(data), max_seconds=30)


def test_decoding_stops_at_its_deadline() -> None:
    data = silent_wav(600)
    started = time.monotonic()
    with pytest.raises(AudioDecodeError, match=r"took longer than the limit of 0\.02 s"):
        decode_audio(data, timeout_s=0.02)
    assert time.monotonic() - started < 0.5


def test_samples_grow_past_an_understated_header() -> None:
    """The buffer is sized from the header; more audio than it said is kept, not cut."""
    data = bytearray(wav_bytes(tone(3.0, 16000), 16000))
    data[40:44] = b"\xff\xff\xff\xff"  # a data chunk of unknown size: FFmpeg reads to the end
    samples = decode_audio(bytes(data))
    assert abs(samples.size - 3 * SAMPLE_RATE) < 0.01 * SAMPLE_RATE
