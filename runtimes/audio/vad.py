"""Long silences cut out before windowing, and the timeline that maps times in what is left back to the upload.

An energy detector, on purpose a cautious one: it cuts only what is clearly silence, and never inside speech.

    frames        20 ms of pre-emphasised samples (the difference filter drops hum and DC, which are no speech)
    silent        a frame below -70 dBFS (digital silence), or, when the clip has both quiet and loud parts
                  (their levels 20 dB apart or more), a frame near the quiet level
    cut           a silent run of at least ``min_silence_s``, less ``pad_s`` kept at each side of it

So a pause between words or sentences is never cut (they are far shorter than 2 s), a clip that is loud
throughout (music, noise, a tone) loses nothing, and speech keeps a cushion of silence around it. Whisper then
decodes fewer windows, and hallucinates less: long silences are where it makes text up.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
FRAME = 320  # 20 ms
# Frames quieter than this are silence whatever the rest of the clip is like (16-bit dither is near -100 dBFS).
DIGITAL_SILENCE_DB = -70.0


@dataclass(frozen=True)
class VadOptions:
    """What counts as a silence long enough to cut (faster-whisper's Silero defaults, in seconds)."""

    # Silences shorter than this stay whole.
    min_silence_s: float = 2.0
    # Silence kept next to speech on each side of a cut.
    pad_s: float = 0.4
    # The quiet and loud levels (10th and 95th percentile of frame energy) must be this far apart, in dB, for
    # frames near the quiet level to count as silence; closer, only digital silence does.
    min_contrast_db: float = 20.0
    # "Near the quiet level": within this many dB of it (and within a quarter of the contrast).
    floor_margin_db: float = 10.0


@dataclass(frozen=True)
class Timeline:
    """Where the kept pieces of a clip sit, in the kept audio and in the original."""

    # (first sample in the kept audio, first sample in the original, length in samples), in order.
    pieces: tuple[tuple[int, int, int], ...]
    # Samples of silence each piece keeps next to every cut (VadOptions.pad_s).
    pad: int = 0

    def original(self, seconds: float, end: bool = False) -> float:
        """A time in the kept audio as a time in the original.

        Whisper stamps the silence between two segments to either of them, and the silence kept next to a cut is
        known to be silence: an ``end`` in the silence that opens a piece is the end of the piece before, a start
        in the silence that closes a piece is the start of the next one. So a segment never claims the silence
        that was cut out next to it.
        """
        sample = seconds * SAMPLE_RATE
        starts = [p[0] for p in self.pieces]
        i = max(0, (bisect.bisect_left(starts, sample) if end else bisect.bisect_right(starts, sample)) - 1)
        kept, orig, length = self.pieces[i]
        offset = sample - kept
        if end and i > 0 and offset <= self.pad:
            _, before, before_length = self.pieces[i - 1]
            return round((before + before_length) / SAMPLE_RATE, 3)
        if not end and i + 1 < len(self.pieces) and offset >= length - self.pad:
            return round(self.pieces[i + 1][1] / SAMPLE_RATE, 3)
        return round((orig + offset) / SAMPLE_RATE, 3)


def frame_levels(samples: np.ndarray) -> np.ndarray:
    """Energy of each 20 ms frame, in dB relative to full scale (pre-emphasised): ``[n_frames]``."""
    n = samples.size // FRAME
    if n == 0:
        return np.zeros(0, np.float32)
    x = samples[: n * FRAME].astype(np.float32)
    emphasised = np.empty_like(x)
    emphasised[0] = x[0]
    np.subtract(x[1:], 0.97 * x[:-1], out=emphasised[1:])
    power = np.square(emphasised).reshape(n, FRAME).mean(axis=1)
    return (10.0 * np.log10(power + 1e-12)).astype(np.float32)


def silent_frames(levels: np.ndarray, options: VadOptions) -> np.ndarray:
    """Which frames are silence: ``[n_frames]`` bool."""
    silent = levels < DIGITAL_SILENCE_DB
    if levels.size:
        quiet, loud = np.percentile(levels, [10, 95])
        contrast = loud - quiet
        if contrast >= options.min_contrast_db:
            silent |= levels < quiet + min(options.floor_margin_db, contrast / 4)
    return silent


def kept_ranges(samples: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    """The sample ranges ``[start, stop)`` to keep, in order: everything but long silences less their padding."""
    silent = silent_frames(frame_levels(samples), options)
    min_frames = int(options.min_silence_s * SAMPLE_RATE / FRAME)
    pad = int(options.pad_s * SAMPLE_RATE)
    total = samples.size
    # Runs of silent frames: where the padded-with-False array changes value.
    edges = np.flatnonzero(np.diff(np.concatenate([[False], silent, [False]]).astype(np.int8)))
    cuts = []
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if stop - start < min_frames:
            continue
        cut_start = 0 if start == 0 else start * FRAME + pad
        cut_stop = total if stop * FRAME >= total - FRAME else stop * FRAME - pad
        if cut_stop > cut_start:
            cuts.append((cut_start, cut_stop))
    kept, at = [], 0
    for a, b in cuts:
        if a > at:
            kept.append((at, a))
        at = b
    if at < total:
        kept.append((at, total))
    return kept


def drop_silence(samples: np.ndarray, options: VadOptions | None = None) -> tuple[np.ndarray, Timeline | None]:
    """The samples without their long silences, and the timeline back to the original (None: nothing was cut).

    Audio that is silence throughout comes back empty (with a timeline of no pieces).
    """
    options = options or VadOptions()
    ranges = kept_ranges(samples, options)
    if ranges == [(0, samples.size)]:
        return samples, None
    pieces, at = [], 0
    for a, b in ranges:
        pieces.append((at, a, b - a))
        at += b - a
    if not pieces:
        return samples[:0], Timeline(((0, 0, 0),))
    pad = int(options.pad_s * SAMPLE_RATE)
    return np.concatenate([samples[a:b] for a, b in ranges]), Timeline(tuple(pieces), pad)
