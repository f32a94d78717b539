"""One request's transcription as a sequence of 30 s windows, so the engine can batch windows of many requests.

This is whisper's own sliding window (``whisper.transcribe``, with faster-whisper's defaults) turned inside out:
instead of a loop that calls the model, a ``Transcription`` says how it wants its next window decoded
(``task``) and takes the decoded result (``feed``). Per window::

    task       the window's prompt (the user's ``prompt``, then the text of the windows before it) and the
               temperature of this attempt: 0 first (a beam search), hotter after each failed attempt
    feed       a result that repeats itself (compression ratio > 2.4) or is unsure (mean log-prob < -1) is
               decoded again at the next temperature (best-of-n samples), unless the model says no one speaks;
               when every temperature failed, the likeliest attempt stands (faster-whisper's choice)
    segments   the window's tokens split at its timestamp pairs; the next window starts at the last timestamp
               the model closed, so a word cut by the window's edge is decoded again, whole, in the next one

Segments carry the times of the uploaded audio: when voice activity detection cut long silences out before
windowing (vad.py), their times are mapped back through its timeline.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from whisper import timing
from whisper.audio import HOP_LENGTH, N_FFT, N_FRAMES, SAMPLE_RATE, mel_filters
from whisper.model import Whisper
from whisper.timing import add_word_timestamps
from whisper.tokenizer import Tokenizer

from ember.runtimes.audio.decoding import SearchOptions, WindowResult, WindowTask
from ember.runtimes.audio.vad import Timeline

# whisper.transcribe's and faster-whisper's thresholds: a window whose text compresses too well repeats itself,
# one whose tokens average a log-probability under -1 is unsure; both are decoded again hotter. A window whose
# no-speech probability is over 0.6 and that is unsure is silence: skipped.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# The temperature ladder's step: 0, 0.2, ... 1.0 (or from the request's own temperature up).
TEMPERATURE_STEP = 0.2
# A window decoded hotter than this does not prompt the next one (its text is likely wrong; both peers do this).
PROMPT_RESET_TEMPERATURE = 0.5
# Tokens of context kept between windows; a window's prompt takes the latest of them (at most n_text_ctx // 2 - 1).
MAX_CONTEXT = 448
TIME_PRECISION = 0.02  # seconds per timestamp token

if importlib.util.find_spec("triton") is None:
    # whisper's word alignment runs DTW and a median filter as triton kernels on CUDA tensors, and only falls back
    # to its CPU versions when triton fails at run time, not when it is missing (we install whisper without it).
    _median_filter = timing.median_filter
    timing.dtw = lambda x: timing.dtw_cpu(x.double().cpu().numpy())
    timing.median_filter = lambda x, filter_width: _median_filter(x.cpu(), filter_width)


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


def temperatures(start: float) -> list[float]:
    """The fallback ladder from the request's temperature: 0.0, 0.2, ... 1.0 for 0; 0.3, 0.5, 0.7, 0.9 for 0.3."""
    ladder = [start]
    while ladder[-1] + TEMPERATURE_STEP <= 1.0 + 1e-6:
        ladder.append(round(ladder[-1] + TEMPERATURE_STEP, 2))
    return ladder


@dataclass
class Transcription:
    """The state of one request between windows."""

    mel: torch.Tensor  # [n_mels, content_frames + N_FRAMES]: the audio's log-mel, padded by 30 s of silence
    tokenizer: Tokenizer
    task: str
    language: str | None  # None: detected on the first window (a multilingual model only)
    temperature: float  # the request's: the first rung of the fallback ladder
    prompt: tuple[int, ...] | None  # the user's prompt, tokenized: it prompts the first window
    word_timestamps: bool
    input_stride: int = 2  # mel frames per audio token: N_FRAMES // n_audio_ctx
    search: SearchOptions = field(default_factory=SearchOptions)
    # Prompt each window with the text before it (whisper's and faster-whisper's default).
    condition_on_previous_text: bool = True
    # Where the mel's audio lies in the upload, when silences were cut out of it (vad.py); None: nothing was cut.
    timeline: Timeline | None = None
    # The upload's length in seconds, when it differs from the mel's (silences cut).
    original_duration: float | None = None
    seek: int = 0  # the next window's first mel frame
    segments: list[Segment] = field(default_factory=list)
    # The current window's attempts so far, one per rung of the ladder.
    attempts: list[WindowResult] = field(default_factory=list)
    # The tokens the next window is prompted with: the user's prompt, then the text of the windows since.
    context: list[int] = field(default_factory=list)
    # End of the last segment in the mel's time (word alignment clamps the next words to it).
    last_end: float = 0.0
    ladder: list[float] = field(init=False)  # the temperatures an attempt at a window may take, in order

    def __post_init__(self) -> None:
        self.ladder = temperatures(self.temperature)
        self.context = list(self.prompt or ())

    @property
    def content_frames(self) -> int:
        return self.mel.shape[-1] - N_FRAMES

    @property
    def done(self) -> bool:
        return self.seek >= self.content_frames

    @property
    def content_duration(self) -> float:
        """Seconds of audio in the mel."""
        return self.content_frames * HOP_LENGTH / SAMPLE_RATE

    @property
    def duration(self) -> float:
        """Seconds of audio in the upload."""
        return self.content_duration if self.original_duration is None else self.original_duration

    def set_language(self, language: str) -> None:
        """The language detected on the first window: later windows, and word alignment, use it."""
        self.language = language
        self.tokenizer = dataclasses.replace(self.tokenizer, language=language)

    def next_task(self, features: int, max_prompt: int) -> WindowTask:
        """How to decode the current window now: its prompt, and the temperature of this attempt."""
        sot = tuple(self.tokenizer.sot_sequence)
        prompt = self.context[-max_prompt:] if max_prompt > 0 else []
        prefix = (self.tokenizer.sot_prev, *prompt, *sot) if prompt else sot
        return WindowTask(
            features=features,
            prefix=prefix,
            sot_index=len(prefix) - len(sot),
            temperature=self.ladder[len(self.attempts)],
            search=self.search,
        )

    def window(self) -> tuple[torch.Tensor, int]:
        """The next window's mel, ``[n_mels, N_FRAMES]``, and how many of its frames are audio."""
        size = min(N_FRAMES, self.content_frames - self.seek)
        # Zero-padded like whisper.transcribe's pad_or_trim, so a short window decodes as whisper decodes it.
        mel = torch.nn.functional.pad(self.mel[:, self.seek : self.seek + size], (0, N_FRAMES - size))
        return mel, size

    def _choose(self, result: WindowResult) -> WindowResult | None:
        """The attempt that stands for this window, or None to decode it again at the next temperature."""
        self.attempts.append(result)
        ratio = self._ratio(result)
        silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD
        failed = (ratio > COMPRESSION_RATIO_THRESHOLD or result.avg_logprob < LOGPROB_THRESHOLD) and not silent
        if not failed:
            return result
        if len(self.attempts) < len(self.ladder):
            return None
        # Every rung failed: the likeliest attempt that does not repeat itself, if any (faster-whisper's rule).
        plain = [a for a in self.attempts if self._ratio(a) <= COMPRESSION_RATIO_THRESHOLD]
        return max(plain or self.attempts, key=lambda a: a.avg_logprob)

    def _ratio(self, result: WindowResult) -> float:
        return compression_ratio(self.tokenizer.decode(result.tokens).strip())  # decode() drops timestamps

    def feed(self, result: WindowResult, model: Whisper) -> list[Segment] | None:
        """Take one decoded attempt at the current window: its new segments (``seek`` moves on), or None when the
        window must be decoded again, hotter."""
        chosen = self._choose(result)
        if chosen is None:
            return None
        hottest = result.temperature  # the window needed this many rungs, whichever attempt stands
        self.attempts = []
        mel, size = self.window()
        if chosen.no_speech_prob > NO_SPEECH_THRESHOLD and chosen.avg_logprob < LOGPROB_THRESHOLD:
            self.seek += size  # silence
            return []
        seek, new = self.seek, self._segments(chosen, size)
        if self.word_timestamps and new:
            self._add_words(new, model, mel, size, seek)
        if new:
            self.last_end = new[-1].end
        if self.condition_on_previous_text and hottest <= PROMPT_RESET_TEMPERATURE:
            self.context = (self.context + [t for s in new for t in s.tokens])[-MAX_CONTEXT:]
        else:
            self.context = []
        if self.timeline is not None:
            for s in new:
                self._to_original(s)
        self.segments.extend(new)
        return new

    def _to_original(self, s: Segment) -> None:
        """A segment's times (and its words') from the mel's time to the upload's."""
        assert self.timeline is not None
        s.start, s.end = self.timeline.original(s.start), self.timeline.original(s.end, end=True)
        for w in s.words or []:
            w.start, w.end = self.timeline.original(w.start), self.timeline.original(w.end, end=True)

    def _segments(self, result: WindowResult, size: int) -> list[Segment]:
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
        ratio = self._ratio(result)
        for start, end, part in spans:
            text = self.tokenizer.decode([t for t in part if t < self.tokenizer.eot])
            if not text.strip() or end <= start:  # whisper drops empty and instantaneous segments too
                continue
            out.append(
                Segment(
                    id=len(self.segments) + len(out),
                    seek=seek,
                    # A model may stamp past the audio's end (into the padding); clients get times inside it.
                    start=round(min(start, self.content_duration), 3),
                    end=round(min(end, self.content_duration), 3),
                    text=text,
                    tokens=list(part),
                    temperature=result.temperature,
                    avg_logprob=result.avg_logprob,
                    compression_ratio=ratio,
                    no_speech_prob=result.no_speech_prob,
                )
            )
        return out

    def _add_words(self, new: list[Segment], model: Whisper, mel: torch.Tensor, size: int, seek: int) -> None:
        """Word timings from the cross-attention of the model's alignment heads (whisper.timing)."""
        dicts: list[dict[str, Any]] = [
            {"seek": seek, "start": s.start, "end": s.end, "tokens": s.tokens, "text": s.text} for s in new
        ]
        add_word_timestamps(
            segments=dicts,
            model=model,
            tokenizer=self.tokenizer,
            mel=mel,
            num_frames=size,
            last_speech_timestamp=self.last_end,
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
