"""The batched decoder (decoding.BatchDecoder) against whisper's own DecodingTask, and its windows kept apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from whisper.decoding import DecodingOptions

from ember.runtimes.audio.decode import decode_audio
from ember.runtimes.audio.decoding import BatchDecoder, SearchOptions, WindowTask
from ember.runtimes.audio.loader import LoadedWhisper, load_whisper
from ember.runtimes.audio.pipeline import mel_of
from ember.runtimes.audio.rules import MAX_INITIAL_TIMESTAMP_INDEX
from tests.helpers.speech import SENTENCES, SHORT, speak

# Piper clips on which tiny.en's greedy decode and its 5-beam search differ (found by decoding all of SENTENCES).
GREEDY_DIFFERS = (SENTENCES[4], SENTENCES[10], SENTENCES[11])
# A sentence of names tiny.en cannot spell unless the prompt shows it how.
NAMES = "Dr. Okonkwo prescribed azithromycin."


def window(text: str) -> torch.Tensor:
    """The first 30 s window of ``text`` spoken, as the engine builds it: ``[80, 3000]``."""
    mel = mel_of(decode_audio(speak(text).read_bytes()), 80)
    size = min(3000, mel.shape[1] - 3000)
    return torch.nn.functional.pad(mel[:, :size], (0, 3000 - size))


@pytest.fixture(scope="module")
def features(tiny_en: LoadedWhisper) -> torch.Tensor:
    """Encoder outputs of SHORT, the clips of GREEDY_DIFFERS and NAMES, in that order."""
    with torch.inference_mode():
        return tiny_en.model.embed_audio(torch.stack([window(t) for t in (SHORT, *GREEDY_DIFFERS, NAMES)]))


def task(loaded: LoadedWhisper, row: int, beam: int = 5, prompt: str = "", temperature: float = 0.0) -> WindowTask:
    tok = loaded.tokenizer()
    sot = tuple(tok.sot_sequence)
    words = tuple(tok.encode(" " + prompt)) if prompt else ()
    prefix = (tok.sot_prev, *words, *sot) if prompt else sot
    return WindowTask(row, prefix, len(prefix) - len(sot), temperature, SearchOptions(beam_size=beam))


def score(tokens: list[int], sum_logprob: float) -> float:
    return sum_logprob / len(tokens)  # the ranking of whisper and faster-whisper (length penalty 1)


@torch.inference_mode()
def test_one_window_decodes_as_whispers_decoding_task(tiny_en: LoadedWhisper, features: torch.Tensor) -> None:
    """Greedy and beam search, with and without a prompt, give whisper's tokens and its scores."""
    decoder = BatchDecoder(tiny_en.model, tiny_en.tokenizer())
    tok = tiny_en.tokenizer()
    for beam, prompt in ((1, ""), (5, ""), (5, "hello there, friend")):
        options = DecodingOptions(
            language="en",
            beam_size=None if beam == 1 else beam,
            prompt=tok.encode(" " + prompt) if prompt else None,
            fp16=False,
        )
        expected = tiny_en.model.decode(features[:1], options)[0]
        got = decoder.decode(features, [task(tiny_en, 0, beam, prompt)])[0]
        assert got.tokens == expected.tokens, (beam, prompt, tok.decode(got.tokens))
        assert got.avg_logprob == pytest.approx(expected.avg_logprob, abs=1e-4)
        assert got.no_speech_prob == pytest.approx(expected.no_speech_prob, abs=1e-4)


@torch.inference_mode()
def test_beam_search_finds_likelier_text_than_greedy(tiny_en: LoadedWhisper, features: torch.Tensor) -> None:
    decoder = BatchDecoder(tiny_en.model, tiny_en.tokenizer())
    rows = range(1, 1 + len(GREEDY_DIFFERS))
    greedy = decoder.decode(features, [task(tiny_en, i, beam=1) for i in rows])
    beams = decoder.decode(features, [task(tiny_en, i, beam=5) for i in rows])
    for g, b in zip(greedy, beams, strict=True):
        assert g.tokens != b.tokens
        assert score(b.tokens, b.sum_logprob) > score(g.tokens, g.sum_logprob)


@torch.inference_mode()
def test_windows_batched_together_decode_as_they_do_alone(tiny_en: LoadedWhisper, features: torch.Tensor) -> None:
    """Prompts of different lengths (left padding), beam widths and a sampled window in one batch: every window
    gets the tokens it gets alone, and windows leave the batch at different steps."""
    decoder = BatchDecoder(tiny_en.model, tiny_en.tokenizer())
    tasks = [
        task(tiny_en, 0, beam=5, prompt="Hello there, friend, and welcome to the show."),
        task(tiny_en, 1, beam=1),
        task(tiny_en, 2, beam=5, temperature=0.6),  # best-of-5 samples: its rows must not disturb the others
        task(tiny_en, 3, beam=3, prompt="Apple"),
        task(tiny_en, 4, beam=5),
    ]
    together = decoder.decode(features, tasks)
    for t, got in zip(tasks, together, strict=True):
        assert got.temperature == t.temperature
        if t.temperature > 0:
            continue
        alone = decoder.decode(features, [t])[0]
        assert got.tokens == alone.tokens
        assert got.sum_logprob == pytest.approx(alone.sum_logprob, abs=1e-3)


@torch.inference_mode()
def test_a_prompt_reaches_the_decoder(tiny_en: LoadedWhisper, features: torch.Tensor) -> None:
    decoder = BatchDecoder(tiny_en.model, tiny_en.tokenizer())
    tok = tiny_en.tokenizer()
    plain, prompted = decoder.decode(
        features, [task(tiny_en, 4), task(tiny_en, 4, prompt="Dr. Okonkwo, azithromycin.")]
    )
    assert "Okonkwo" not in tok.decode(plain.tokens) and "azithromycin" not in tok.decode(plain.tokens)
    assert tok.decode(prompted.tokens).strip() == NAMES


@torch.inference_mode()
def test_timestamps_follow_whispers_rules_and_prompts_are_capped(tiny_whisper_path: Path, tmp_path: Path) -> None:
    """A random model samples what the rules allow: the first token a timestamp of at most 1 s, timestamps in
    pairs and never decreasing; a prompt longer than half the context keeps its last tokens only."""
    loaded = load_whisper(tiny_whisper_path, tmp_path, torch.device("cpu"))
    tok = loaded.tokenizer()
    decoder = BatchDecoder(loaded.model, tok)
    n_ctx = loaded.model.dims.n_text_ctx
    torch.manual_seed(0)
    features = loaded.model.embed_audio(torch.randn(3, 80, 3000))
    sot = tuple(tok.sot_sequence)
    long_prompt = tuple(range(1000, 1000 + 3 * n_ctx))[-decoder.max_prompt() :]
    tasks = [
        WindowTask(0, sot, 0, 0.0, SearchOptions(beam_size=4)),
        WindowTask(1, (tok.sot_prev, *long_prompt, *sot), 1 + len(long_prompt), 0.0, SearchOptions()),
        WindowTask(2, sot, 0, 1.0, SearchOptions(best_of=3)),
    ]
    tb = tok.timestamp_begin
    for t, result in zip(tasks, decoder.decode(features, tasks), strict=True):
        tokens = result.tokens
        assert tokens and tb <= tokens[0] <= tb + MAX_INITIAL_TIMESTAMP_INDEX
        assert len(t.prefix) + len(tokens) <= n_ctx + 1 and len(tokens) <= n_ctx // 2
        stamps = [x for x in tokens if x >= tb]
        assert stamps == sorted(stamps)
        assert tok.eot not in tokens and all(x not in tokens for x in (tok.sot, tok.no_timestamps))
        for i in range(1, len(tokens) - 1):  # a lone timestamp between text tokens never happens
            assert not (tokens[i] >= tb and tokens[i - 1] < tb and tokens[i + 1] < tb), tokens
