"""Any audio file PyAV (bundled FFmpeg libraries, no system ffmpeg) can read, as 16 kHz mono float32 samples."""

from __future__ import annotations

import io

import av
import numpy as np

SAMPLE_RATE = 16_000


class AudioDecodeError(ValueError):
    """The upload is not audio we can read (not a media file, no audio stream, truncated, empty)."""


def decode_audio(data: bytes, max_seconds: float | None = None) -> np.ndarray:
    """Samples in [-1, 1] at 16 kHz, mono: ``[n]`` float32. Raises AudioDecodeError for anything unreadable."""
    if not data:
        raise AudioDecodeError("the file is empty")
    chunks: list[np.ndarray] = []
    total = 0
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += chunk.size
                if limit is not None and total > limit:
                    raise AudioDecodeError(f"the audio is longer than the limit of {max_seconds:.0f} s")
            for out in resampler.resample(None):  # flush the resampler's tail
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioDecodeError:
        raise
    except (av.FFmpegError, ValueError, IndexError, EOFError, OSError, UnicodeDecodeError) as e:
        raise AudioDecodeError(f"could not decode the audio file: {e}") from None
    if not chunks:
        raise AudioDecodeError("the file holds no audio samples")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    if samples.size == 0:
        raise AudioDecodeError("the file holds no audio samples")
    if not np.isfinite(samples).all():
        raise AudioDecodeError("the audio holds NaN or infinite samples")
    return np.clip(samples, -1.0, 1.0)
