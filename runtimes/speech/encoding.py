"""Samples to the bytes of each ``response_format``, a piece at a time, so each sentence leaves once it is encoded.

    mp3    MPEG-1/2 layer III (LAME)     voice rate   no Xing header: a stream, as a radio station sends it
    opus   Opus in Ogg                   24 kHz       Opus takes 8/12/16/24/48 kHz only; 24 kHz is OpenAI's rate
    aac    AAC-LC in ADTS frames         voice rate
    flac   raw FLAC                      voice rate   STREAMINFO without a length (it is not known yet)
    wav    RIFF, 16-bit PCM              voice rate   sizes 0xFFFFFFFF: "until the end", as OpenAI streams wav
    pcm    raw 16-bit little-endian      24 kHz       OpenAI's contract: players assume 24 kHz, nothing says otherwise

Formats that carry their rate keep the voice's own (piper's 22.05 kHz): resampling would cost time and add nothing
a decoder needs. pcm has no header to carry a rate, so it is resampled to the 24 kHz every OpenAI client assumes.
Muxers write to a sink that cannot seek, so none of them goes back to patch a header at the end.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

# OpenAI's rate for pcm (and Opus's nearest rate to piper's).
OPENAI_RATE = 24_000


@dataclass(frozen=True)
class Format:
    # PyAV's muxer and encoder; None for wav and pcm, written here.
    container: str | None
    codec: str | None
    # The rate encoded; None: the voice's own.
    rate: int | None
    # Bits per second for lossy codecs (mono speech).
    bit_rate: int | None = None
    # Muxer options: Ogg writes a page per 20 ms of audio instead of holding a second of it.
    options: tuple[tuple[str, str], ...] = ()


FORMATS: dict[str, Format] = {
    "mp3": Format("mp3", "libmp3lame", None, 64_000),
    "opus": Format("ogg", "libopus", OPENAI_RATE, 32_000, (("page_duration", "20000"),)),
    "aac": Format("adts", "aac", None, 64_000),
    "flac": Format("flac", "flac", None),
    "wav": Format(None, None, None),
    "pcm": Format(None, None, OPENAI_RATE),
}


class _Sink(io.RawIOBase):
    """Where a muxer writes: bytes collected until taken; not seekable, so nothing is patched afterwards."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


def wav_header(rate: int) -> bytes:
    """A 16-bit mono RIFF header whose sizes say "unknown": the data runs to the end of the stream."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", unknown)
    )


def to_int16(samples: np.ndarray) -> np.ndarray:
    """[-1, 1] floats as 16-bit samples, [1, n] (PyAV's packed mono layout)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)


class StreamEncoder:
    """One response's encoder: ``encode`` each piece's samples as they come, then ``finish``; each returns the
    bytes that are ready (possibly none: an encoder holds back a frame's worth)."""

    def __init__(self, response_format: str, voice_rate: int) -> None:
        self.format = FORMATS[response_format]
        self.voice_rate = voice_rate
        # The stream's rate as encoded.
        self.sample_rate = self.format.rate or voice_rate
        self._pts = 0
        self._started = False
        self._resampler: av.AudioResampler | None = None
        self._container: Any = None
        self._stream: Any = None
        self._sink = _Sink()
        fmt = self.format
        if fmt.container is None:
            if self.sample_rate != voice_rate:
                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.sample_rate)
            return
        self._container = av.open(
            self._sink, "w", format=fmt.container, container_options={"flush_packets": "1", **dict(fmt.options)}
        )
        self._stream = self._container.add_stream(fmt.codec, rate=self.sample_rate, layout="mono")
        if fmt.bit_rate is not None:
            self._stream.bit_rate = fmt.bit_rate

    def _frame(self, samples: np.ndarray) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(to_int16(samples), format="s16", layout="mono")
        frame.sample_rate = self.voice_rate
        frame.pts = self._pts
        self._pts += samples.shape[-1]
        return frame

    def encode(self, samples: np.ndarray) -> bytes:
        """The bytes of the next piece of audio (``samples``: [n] float32 at the voice's rate)."""
        if samples.size == 0:
            return b""
        if self.format.container is None:
            return self._raw(samples)
        for packet in self._stream.encode(self._frame(samples)):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        """What the encoder still held, and the stream's trailer; the encoder is closed after."""
        if self.format.container is None:
            tail = self._raw(np.zeros(0, np.float32))  # a wav header, when nothing was spoken
            if self._resampler is not None:
                tail += _pcm(self._resampler.resample(None))
            return tail
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def close(self) -> None:
        """Let go of the muxer without finishing (the request ended early)."""
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError, ValueError):
                pass  # half a stream; nobody reads it

    def _raw(self, samples: np.ndarray) -> bytes:
        head = b""
        if not self._started:
            self._started = True
            head = wav_header(self.sample_rate) if self.format is FORMATS["wav"] else b""
        if samples.size == 0:
            return head
        if self._resampler is None:
            return head + to_int16(samples).astype("<i2").tobytes()
        return head + _pcm(self._resampler.resample(self._frame(samples)))


def _pcm(frames: list[av.AudioFrame]) -> bytes:
    """Packed 16-bit mono frames as little-endian bytes."""
    return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)
