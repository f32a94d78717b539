"""Uploaded audio files as 16 kHz mono float32 samples, through PyAV (bundled FFmpeg libraries, no system ffmpeg).

An upload is untrusted, so FFmpeg never guesses what it is. Left to probe, FFmpeg also picks demuxers that read
other resources named inside the file: SDP opens the UDP ports the file lists (and waits 20 s on them), HLS and
concat playlists fetch URLs and local paths. So the container is recognised here, from its first bytes, as one
of ``FORMATS``, and FFmpeg is told to use exactly that demuxer; nested opens are refused outright (``io_open``)
and the protocol whitelist names no network protocol, as a second lock. Every demuxer allowed here reads only
the bytes it is given (mov's external data references stay off, FFmpeg's default, pinned below).

Reading is bounded twice: ``probe`` reads the header's duration before anything is decoded, so a file over the
cap is refused in milliseconds; ``decode_audio`` stops at the same cap (a header may lie) and at a deadline.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import av
import numpy as np

SAMPLE_RATE = 16_000
# The containers an upload may be: the demuxer each is read with, by the name a client knows it by.
FORMATS: dict[str, str] = {
    "wav": "wav",
    "mp3": "mp3",
    "mp4": "mov",  # also m4a: one demuxer reads the whole ISO family
    "ogg": "ogg",  # Vorbis or Opus inside
    "flac": "flac",
    "webm": "matroska",  # and Matroska (.mka)
}
ALLOWED = "wav, mp3, mp4/m4a, ogg/opus, flac, webm"
# No network or file protocol can be opened from inside an upload ("pipe" is never reached: the bytes are
# handed over as an in-memory file, and nested opens fail in ``_refuse_nested``).
_OPTIONS = {"protocol_whitelist": "pipe", "enable_drefs": "0"}
# Metadata that is not valid UTF-8 is ignored rather than refused. PyAV 19 dropped the argument that says so (and
# av 19 is what pip takes on Python 3.12): there, such metadata still fails to decode, and the upload is refused
# cleanly as unreadable (UnicodeDecodeError is among _FFMPEG_ERRORS).
_OPEN_EXTRA: dict[str, Any] = {"metadata_errors": "ignore"} if int(av.__version__.split(".")[0]) < 19 else {}
# What PyAV raises for a file it cannot read (FFmpeg's errors, and Python's for damaged metadata).
_FFMPEG_ERRORS = (av.FFmpegError, ValueError, IndexError, EOFError, OSError, UnicodeDecodeError)
# ISO base media files start with a box; these are the top-level box types a real one may start with.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")


class AudioDecodeError(ValueError):
    """The upload is not audio we read (an unsupported container, no audio stream, truncated, empty, too long)."""


class AudioTooLong(AudioDecodeError):
    """The audio is longer than the cap."""


@dataclass(frozen=True)
class Probe:
    """What a file's header says, before any decoding."""

    # FFmpeg's name of the demuxer that reads it (a value of FORMATS).
    demuxer: str
    # Seconds of audio the header declares; None when it declares none (a live WebM recording, say).
    duration: float | None


def _id3_size(data: bytes) -> int:
    """The length of an ID3v2 tag at the start of ``data`` (0 if there is none)."""
    if len(data) < 10 or data[:3] != b"ID3" or any(b & 0x80 for b in data[6:10]):
        return 0
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


def _is_mpeg_audio(head: bytes) -> bool:
    """An MPEG audio frame header: 11 sync bits, a known version, and layer I, II or III (ADTS AAC is layer 0)."""
    return (
        len(head) >= 4
        and head[0] == 0xFF
        and head[1] & 0xE0 == 0xE0
        and (head[1] >> 3) & 3 != 1
        and (head[1] >> 1) & 3 != 0
    )


def sniff(data: bytes) -> str:
    """The demuxer for ``data``, from its first bytes; AudioDecodeError for anything not in ``FORMATS``."""
    if not data:
        raise AudioDecodeError("the file is empty")
    skip = _id3_size(data)  # an ID3v2 tag may precede MP3 and FLAC alike
    head = data[skip : skip + 12]
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[4:8] in _ISO_BOXES:
        return "mov"
    if _is_mpeg_audio(head) or skip:  # MP3 may pad its tag before the first frame; the demuxer skips that
        return "mp3"
    raise AudioDecodeError(f"the file is not in a supported audio format ({ALLOWED})")


def _refuse_nested(url: str, flags: int, options: dict[str, Any]) -> NoReturn:
    raise PermissionError(f"the upload tried to open {url!r}; uploads are read from their own bytes only")


def _open(data: bytes, demuxer: str, timeout_s: float) -> av.container.InputContainer:
    try:
        return av.open(
            io.BytesIO(data),
            mode="r",
            format=demuxer,
            options=_OPTIONS,
            timeout=timeout_s,
            io_open=_refuse_nested,
            **_OPEN_EXTRA,
        )
    except _FFMPEG_ERRORS as e:
        raise AudioDecodeError(f"could not read the audio file: {e}") from None


def _declared_seconds(container: av.container.InputContainer) -> float | None:
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def too_long(max_seconds: float) -> AudioTooLong:
    return AudioTooLong(f"the audio is longer than the limit of {max_seconds:g} s ({max_seconds / 60:g} min)")


def probe(data: bytes, max_seconds: float | None = None, timeout_s: float = 5.0) -> Probe:
    """The file's container and declared duration, from its header; raises AudioDecodeError, or AudioTooLong
    when the header already says it is over ``max_seconds``."""
    demuxer = sniff(data)
    with _open(data, demuxer, timeout_s) as container:
        if not container.streams.audio:
            raise AudioDecodeError("the file has no audio stream")
        seconds = _declared_seconds(container)
    if max_seconds is not None and seconds is not None and seconds > max_seconds:
        raise too_long(max_seconds)
    return Probe(demuxer, seconds)


def decode_audio(data: bytes, max_seconds: float | None = None, timeout_s: float | None = None) -> np.ndarray:
    """Samples in [-1, 1] at 16 kHz, mono: ``[n]`` float32.

    Raises AudioDecodeError for anything unreadable, AudioTooLong past ``max_seconds`` of audio, and
    AudioDecodeError when decoding takes longer than ``timeout_s`` (checked between frames: no single frame of
    these formats takes long).
    """
    demuxer = sniff(data)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    with _open(data, demuxer, timeout_s or 5.0) as container:
        if not container.streams.audio:
            raise AudioDecodeError("the file has no audio stream")
        stream = container.streams.audio[0]
        # Sized from the header, so that a long file is decoded into one buffer rather than into pieces that are
        # then copied together (twice the memory at the end).
        expected = min(_declared_seconds(container) or 30.0, max_seconds or 1800.0)
        samples = _Samples(int(expected * SAMPLE_RATE) + SAMPLE_RATE)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    samples.add(out.to_ndarray().reshape(-1))
                if limit is not None and samples.size > limit:
                    assert max_seconds is not None
                    raise too_long(max_seconds)
                if deadline is not None and time.monotonic() > deadline:
                    raise AudioDecodeError(f"decoding the file took longer than the limit of {timeout_s:g} s")
            for out in resampler.resample(None):  # flush the resampler's tail
                samples.add(out.to_ndarray().reshape(-1))
        except AudioDecodeError:
            raise
        except _FFMPEG_ERRORS as e:
            raise AudioDecodeError(f"could not decode the audio file: {e}") from None
    if samples.size == 0:
        raise AudioDecodeError("the file holds no audio samples")
    result = samples.array()
    if not np.isfinite(result).all():
        raise AudioDecodeError("the audio holds NaN or infinite samples")
    return np.clip(result, -1.0, 1.0, out=result)


class _Samples:
    """A growing float32 buffer: the decoded samples so far."""

    def __init__(self, capacity: int) -> None:
        self._buf = np.empty(max(capacity, SAMPLE_RATE), np.float32)
        self.size = 0

    def add(self, chunk: np.ndarray) -> None:
        end = self.size + chunk.size
        if end > self._buf.size:  # the header said less than there is
            grown = np.empty(max(end, self._buf.size * 3 // 2), np.float32)
            grown[: self.size] = self._buf[: self.size]
            self._buf = grown
        self._buf[self.size : end] = chunk
        self.size = end

    def array(self) -> np.ndarray:
        """The samples; a copy only when the buffer is much bigger than they are."""
        if self.size < self._buf.size * 3 // 4:
            return self._buf[: self.size].copy()
        return self._buf[: self.size]
