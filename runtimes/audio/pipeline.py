"""One request's transcription as a sequence of 30 s windows, so the engine can batch windows of many requests.

This is whisper's own sliding window (``whisper.transcribe``) turned inside out: instead of a loop that calls
the model, a ``Transcription`` says which window it needs next (``window``) and takes the decoded result
(``feed``). The next window starts at the last timestamp the model closed, so a word cut by the window edge is
decoded again, whole, at the start of the next one: no word is lost at a window boundary.
"""

from __future__ import annotations

import importlib.util
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from whisper import timing
from whisper.audio import HOP_LENGTH, N_FFT, N_FRAMES, SAMPLE_RATE, mel_filters
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper
from whisper.timing import add_word_timestamps
from whisper.tokenizer import Tokenizer

# whisper.transcribe's defaults: re-decode a window hotter when its text repeats or the model is unsure,
# and skip a window the model thinks is silence.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
TEMPERATURE_STEP = 0.2
TIME_PRECISION = 0.02  # seconds per timestamp token

if importlib.util.find_spec("triton") is None:
    # whisper's word alignment runs DTW and a median filter as triton kernels on CUDA tensors, and only falls back
    # to its CPU versions when triton fails at run time, not when it is missing (we install whisper without it).
    _median_filter = timing.median_filter
    timing.dtw = lambda x: timing.dtw_cpu(x.double().cpu().numpy())
    timing.median_filter = lambda x, filter_width: _median_filter(x.cpu(), filter_width)


@dataclass(frozen=True)
class WindowKey:
    """Windows with equal keys decode in one batch (whisper's DecodingTask takes one set of options)."""

    task: str
    language: str | None
    temperature: float
    prompt: tuple[int, ...] | None


@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None = None


def compression_ratio(text: str) -> float:
    raw = text.encode()
    return len(raw) / max(1, len(zlib.compress(raw)))


@dataclass
class Transcription:
    """The state of one request between windows."""

    mel: torch.Tensor  # [n_mels, content_frames + N_FRAMES]: the audio's log-mel, padded by 30 s of silence
    tokenizer: Tokenizer
    task: str
    language: str | None
    temperature: float
    prompt: tuple[int, ...] | None
    word_timestamps: bool
    input_stride: int = 2  # mel frames per audio token: N_FRAMES // n_audio_ctx
    seek: int = 0  # the next window's first mel frame
    segments: list[Segment] = field(default_factory=list)
    current_temperature: float = 0.0

    def __post_init__(self) -> None:
        self.current_temperature = self.temperature

    @property
    def content_frames(self) -> int:
        return self.mel.shape[-1] - N_FRAMES

    @property
    def done(self) -> bool:
        return self.seek >= self.content_frames

    @property
    def duration(self) -> float:
        return self.content_frames * HOP_LENGTH / SAMPLE_RATE

    def key(self) -> WindowKey:
        # The user's prompt conditions the first window only, as in whisper.transcribe without
        # condition_on_previous_text: later windows share one key and batch with any request's.
        prompt = self.prompt if self.seek == 0 else None
        return WindowKey(self.task, self.language, self.current_temperature, prompt)

    def options(self, fp16: bool) -> DecodingOptions:
        k = self.key()
        return DecodingOptions(
            task=k.task,
            language=k.language,
            temperature=k.temperature,
            prompt=list(k.prompt) if k.prompt else None,
            fp16=fp16,
        )

    def window(self) -> tuple[torch.Tensor, int]:
        """The next window's mel, ``[n_mels, N_FRAMES]``, and how many of its frames are audio."""
        size = min(N_FRAMES, self.content_frames - self.seek)
        # Zero-padded like whisper.transcribe's pad_or_trim, so a short window decodes as whisper decodes it.
        mel = torch.nn.functional.pad(self.mel[:, self.seek : self.seek + size], (0, N_FRAMES - size))
        return mel, size

    def needs_retry(self, result: DecodingResult) -> bool:
        """whisper's temperature fallback: the window is re-decoded hotter when it repeats or is unsure."""
        if self.current_temperature + 1e-6 >= 1.0:
            return False
        silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD
        repeats = result.compression_ratio > COMPRESSION_RATIO_THRESHOLD
        unsure = result.avg_logprob < LOGPROB_THRESHOLD
        return (repeats or unsure) and not silent

    def feed(self, result: DecodingResult, model: Whisper) -> list[Segment]:
        """Take one decoded window; returns its new segments and moves ``seek`` on (or retries hotter)."""
        if self.needs_retry(result):
            self.current_temperature = round(self.current_temperature + TEMPERATURE_STEP, 2)
            return []
        temperature = self.current_temperature
        self.current_temperature = self.temperature
        if self.language is None:
            self.language = result.language  # detected on the first window; later windows keep it
        mel, size = self.window()
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD:
            self.seek += size  # silence
            return []
        seek, new = self.seek, self._segments(result, size, temperature)
        if self.word_timestamps and new:
            self._add_words(new, model, mel, size, seek)
        self.segments.extend(new)
        return new

    def _segments(self, result: DecodingResult, size: int, temperature: float) -> list[Segment]:
        """Split a window's tokens at its timestamp pairs; advance ``seek`` to where the model stopped."""
        tb = self.tokenizer.timestamp_begin
        seek = self.seek
        offset = self.seek * HOP_LENGTH / SAMPLE_RATE
        tokens = result.tokens
        is_ts = [t >= tb for t in tokens]
        single_ending = is_ts[-2:] == [False, True]
        # Boundaries between segments: two timestamps in a row (the end of one, the start of the next).
        cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
        spans: list[tuple[float, float, list[int]]] = []
        if cuts:
            if single_ending:
                cuts.append(len(tokens))
            last = 0
            for cut in cuts:
                part = tokens[last:cut]
                spans.append(
                    (offset + (part[0] - tb) * TIME_PRECISION, offset + (part[-1] - tb) * TIME_PRECISION, part)
                )
                last = cut
            if single_ending:
                self.seek += size
            else:
                # The last segment is unfinished (cut by the window's end): decode it again in the next window.
                self.seek += (tokens[last - 1] - tb) * self.input_stride
        else:
            duration = size * HOP_LENGTH / SAMPLE_RATE
            stamps = [t for t in tokens if t >= tb]
            if stamps and stamps[-1] != tb:
                duration = (stamps[-1] - tb) * TIME_PRECISION
            spans.append((offset, offset + duration, tokens))
            self.seek += size
        out: list[Segment] = []
        for start, end, part in spans:
            text = self.tokenizer.decode([t for t in part if t < self.tokenizer.eot])
            if not text.strip() or end <= start:  # whisper drops empty and instantaneous segments too
                continue
            out.append(
                Segment(
                    id=len(self.segments) + len(out),
                    seek=seek,
                    # A model may stamp past the audio's end (into the padding); clients get times inside it.
                    start=round(min(start, self.duration), 3),
                    end=round(min(end, self.duration), 3),
                    text=text,
                    tokens=list(part),
                    temperature=temperature,
                    avg_logprob=result.avg_logprob,
                    compression_ratio=result.compression_ratio,
                    no_speech_prob=result.no_speech_prob,
                )
            )
        return out

    def _add_words(self, new: list[Segment], model: Whisper, mel: torch.Tensor, size: int, seek: int) -> None:
        """Word timings from the cross-attention of the model's alignment heads (whisper.timing)."""
        dicts: list[dict[str, Any]] = [
            {"seek": seek, "start": s.start, "end": s.end, "tokens": s.tokens, "text": s.text} for s in new
        ]
        last = self.segments[-1].end if self.segments else 0.0
        add_word_timestamps(
            segments=dicts, model=model, tokenizer=self.tokenizer, mel=mel, num_frames=size, last_speech_timestamp=last
        )
        for seg, d in zip(new, dicts, strict=True):
            seg.words = [Word(w["word"], float(w["start"]), float(w["end"])) for w in d.get("words", [])]

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()


def mel_of(samples: np.ndarray, n_mels: int) -> torch.Tensor:
    """The log-mel of 16 kHz mono samples with 30 s of trailing silence, ``[n_mels, frames + N_FRAMES]``.

    Whisper's ``log_mel_spectrogram(samples, n_mels, padding=N_FRAMES * HOP_LENGTH)``, computed a window of
    frames at a time: the whole STFT of a 30-minute file at once would hold about a gigabyte of buffers, for a
    result of 58 MB. Each frame sees the same samples as in whisper's one pass, so the numbers are the same.
    """
    audio = torch.from_numpy(samples)
    frames = (audio.numel() + N_FRAMES * HOP_LENGTH) // HOP_LENGTH  # whisper drops the STFT's last frame
    window = torch.hann_window(N_FFT)
    filters = mel_filters(audio.device, n_mels)
    out = torch.empty(n_mels, frames)
    for first in range(0, frames, N_FRAMES):
        last = min(frames, first + N_FRAMES)
        piece = _stft_input(audio, first * HOP_LENGTH, (last - 1) * HOP_LENGTH + N_FFT)
        stft = torch.stft(piece, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
        out[:, first:last] = (filters @ stft.abs().square_()).clamp_(min=1e-10).log10_()
    torch.maximum(out, out.max() - 8.0, out=out)
    return out.add_(4.0).div_(4.0)


def _stft_input(audio: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Samples ``[start, stop)`` of what whisper's centred STFT reads: the audio followed by 30 s of zeros,
    reflected by N_FFT / 2 samples at either end. (The reflection at the right end lies in the zeros.)"""
    half, n = N_FFT // 2, audio.numel()
    out = torch.zeros(stop - start)
    if start < half:  # the mirrored head: position i reads padded[half - i]
        index = torch.arange(half - start, half - min(stop, half), -1)
        inside = index < n
        out[: index.numel()][inside] = audio[index[inside]]
    lo, hi = max(start, half) - half, min(stop - half, n)  # the audio itself: position i reads audio[i - half]
    if hi > lo:
        at = lo + half - start
        out[at : at + hi - lo] = audio[lo:hi]
    return out
