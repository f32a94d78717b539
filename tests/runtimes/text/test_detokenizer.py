"""Incremental detokenization and stop strings, on real tokenizers trained here: byte-level BPE, SentencePiece-style."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ember.runtimes.text.detokenizer import IncrementalDetokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world! Stop here ### done, <tag> end </tag>.",
    "Mixed scripts: café naïve façade, 你好世界 and こんにちは, emoji 😀 🎉 👍🏽 🚀 and a family 👨‍👩‍👧.",
    "def main():\n    return 42  # the answer\n\nprint(main())",
] * 10
SPECIALS = ["<|endoftext|>", "<|im_end|>"]
# Text the property tests draw from: ASCII, accents, CJK, emoji (4-byte, with modifiers and joiners), newlines.
ALPHABET = st.sampled_from(
    [*"ab cdefo .,!#\n\t", *"éïç你好世界こん", "😀", "🎉", "👍🏽", "👨\u200d👩\u200d👧", "\u200d", "🦀"]
)
TEXT = st.lists(ALPHABET, max_size=40).map("".join)
SETTINGS = settings(max_examples=150, deadline=None, database=None)
# On a failure, hypothesis imports libcst to print a patch, and libcst trips a DeprecationWarning in mypy_extensions;
# with filterwarnings=error that would turn the failure report into an INTERNALERROR that ends the whole run.
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


@functools.cache
def byte_level() -> Tokenizer:
    """GPT-2 / Qwen-style byte-level BPE: a multi-byte character often spans several tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIALS,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@functools.cache
def sentencepiece() -> Tokenizer:
    """Llama-style: "▁" for spaces, byte fallback for characters outside the vocabulary, first space stripped."""
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Trained on ASCII only, so that accents, CJK and emoji all go through the <0xXX> byte tokens.
    ascii_corpus = [line.encode("ascii", "ignore").decode() for line in CORPUS]
    base.train_from_iterator(
        ascii_corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    )
    model = json.loads(base.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = base.normalizer
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


@functools.cache
def metaspace() -> Tokenizer:
    """T5-style Metaspace pre-tokenizer and decoder: a token's leading space is dropped at the start of a decode."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False))
    return tok


TOKENIZERS = {"byte_level": byte_level, "sentencepiece": sentencepiece, "metaspace": metaspace}


def stream(
    tok: Tokenizer, ids: list[int], prompt: Sequence[int] = (), skip_special_tokens: bool = True
) -> tuple[list[str], str]:
    """Feed ids one by one; return the pieces add() returned and what flush() returned."""
    detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip_special_tokens)
    pieces = [detok.add(i) for i in ids]
    tail = detok.flush()
    assert detok.text == "".join(pieces) + tail
    return pieces, tail


def emitted(tok: Tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[str, IncrementalDetokenizer]:
    """Encode text, stream it through a detokenizer with these stop strings; return the final text."""
    detok = IncrementalDetokenizer(tok, [], stop=stop)
    for token in tok.encode(text).ids:
        detok.add(token)
    detok.flush()
    return detok.text, detok


@pytest.mark.parametrize("name", TOKENIZERS)
@SETTINGS
@given(text=TEXT)
def test_streamed_text_is_the_decoded_text(name: str, text: str) -> None:
    tok = TOKENIZERS[name]()
    ids = tok.encode(text).ids
    pieces, tail = stream(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids)
    # Valid text never shows a replacement character, not even for a moment.
    assert all("\ufffd" not in piece for piece in pieces)


@pytest.mark.parametrize("name", TOKENIZERS)
@SETTINGS
@given(prompt=TEXT, text=TEXT)
def test_a_prompt_gives_the_first_tokens_their_context(name: str, prompt: str, text: str) -> None:
    tok = TOKENIZERS[name]()
    prompt_ids, ids = tok.encode(prompt).ids, tok.encode(text).ids
    before, everything = tok.decode(prompt_ids), tok.decode(prompt_ids + ids)
    assert everything.startswith(before)
    pieces, tail = stream(tok, ids, prompt_ids)
    assert "".join(pieces) + tail == everything[len(before) :]


@SETTINGS
@given(ids=st.lists(st.integers(0, 399), max_size=60), skip=st.booleans())
def test_any_byte_level_token_stream_decodes_as_a_whole(ids: list[int], skip: bool) -> None:
    # Arbitrary ids: lone continuation bytes, truncated characters, special tokens anywhere.
    tok = byte_level()
    pieces, tail = stream(tok, ids, skip_special_tokens=skip)
    assert "".join(pieces) + tail == tok.decode(ids, skip_special_tokens=skip)


@SETTINGS
@given(data=st.data())
def test_any_metaspace_token_stream_decodes_as_a_whole(data: st.DataObject) -> None:
    tok = metaspace()
    ids = data.draw(st.lists(st.integers(0, tok.get_vocab_size() - 1), max_size=60))
    pieces, tail = stream(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids)


@pytest.mark.parametrize("name", ["byte_level", "sentencepiece"])
def test_a_character_split_over_tokens_appears_only_when_complete(name: str) -> None:
    tok = TOKENIZERS[name]()
    ids = tok.encode("ok 🦀").ids  # the crab is not in the training corpus: it stays in pieces
    crab = len(tok.encode("ok").ids)
    assert len(ids) - crab > 1, "the emoji must span several tokens for this test to mean anything"
    pieces, tail = stream(tok, ids)
    assert "".join(pieces[:crab]) == "ok"
    assert pieces[-1].endswith("🦀") and "🦀" not in "".join(pieces[:-1])
    assert tail == ""


def test_text_before_a_partial_character_is_not_held() -> None:
    tok = byte_level()
    ids = tok.encode("a 🦀").ids
    pieces, _ = stream(tok, ids)
    # The space travels in the same byte-level token as the emoji's first bytes; it is emitted right away.
    assert "".join(pieces[:-1]) == "a "


def test_an_unfinished_character_is_flushed_as_the_tokenizer_decodes_it() -> None:
    tok = byte_level()
    ids = tok.encode("ok 🦀").ids[:-1]
    pieces, tail = stream(tok, ids)
    assert "".join(pieces) == "ok "
    assert tail == tok.decode(ids)[len("ok ") :] and tail.endswith("\ufffd")


def test_special_tokens_are_skipped_or_kept() -> None:
    tok = byte_level()
    eos = tok.token_to_id("<|endoftext|>")
    ids = [*tok.encode("hi").ids, eos, *tok.encode(" there").ids]
    assert "".join(stream(tok, ids)[0]) == "hi there"
    assert "".join(stream(tok, ids, skip_special_tokens=False)[0]) == "hi<|endoftext|> there"


class RecordingTokenizer:
    """A real tokenizer that remembers how many ids each decode call was given."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.sizes: list[int] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.sizes.append(len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_each_step_decodes_a_short_window(name: str) -> None:
    tok = TOKENIZERS[name]()
    rng = random.Random(0)
    text = " ".join(rng.choice(["fox", "你好", "😀", "café", "done."]) for _ in range(600))
    ids = tok.encode(text).ids
    special = tok.token_to_id(SPECIALS[0] if name == "byte_level" else "<unk>")
    ids[100:100] = [special] * 300  # a run of skipped special tokens (an ignore_eos benchmark) must not pile up
    prompt = tok.encode("prompt " * 50).ids
    recording = RecordingTokenizer(tok)
    detok = IncrementalDetokenizer(recording, prompt)
    for token in ids:
        detok.add(token)
    detok.flush()
    assert detok.text == tok.decode(prompt + ids)[len(tok.decode(prompt)) :]
    assert max(recording.sizes) <= 16


# Stop strings.


def test_a_stop_string_across_tokens_cuts_the_text() -> None:
    tok = byte_level()
    ids = tok.encode("The quick brown fox jumps").ids
    detok = IncrementalDetokenizer(tok, [], stop=["ck br"])
    pieces = []
    for token in ids:
        pieces.append(detok.add(token))
        if detok.stopped:
            break
    assert "".join(pieces) == detok.text == "The qui"
    assert detok.stop_str == "ck br"
    assert len(pieces) < len(ids)  # the engine can stop generating right there
    assert detok.add(ids[-1]) == "" and detok.flush() == "" and detok.text == "The qui"


@pytest.mark.parametrize("name", TOKENIZERS)
def test_a_stop_at_the_very_beginning_emits_nothing(name: str) -> None:
    text, detok = emitted(TOKENIZERS[name](), "Hello world", stop=("Hel",))
    assert text == "" and detok.stopped


def test_a_stop_that_never_completes_is_released() -> None:
    tok = byte_level()
    detok = IncrementalDetokenizer(tok, [], stop=["brown cow"])
    out = "".join(detok.add(t) for t in tok.encode("The quick brown").ids)
    assert out == "The quick "  # "brown" could still become "brown cow"
    assert detok.flush() == "brown" and not detok.stopped
    assert detok.text == "The quick brown"


def test_held_text_is_released_as_soon_as_it_cannot_be_a_stop() -> None:
    tok = byte_level()
    detok = IncrementalDetokenizer(tok, [], stop=["###"])
    assert detok.add(tok.token_to_id("a")) == "a"
    assert detok.add(tok.token_to_id("#")) == ""
    assert detok.add(tok.token_to_id("#")) == ""
    assert detok.add(tok.token_to_id("b")) == "##b"
    assert detok.add(tok.token_to_id("#")) == ""
    assert detok.add(tok.token_to_id("#")) == ""
    assert detok.add(tok.token_to_id("#")) == ""
    assert detok.stopped and detok.text == "a##b"


@pytest.mark.parametrize(
    ("stops", "expected"),
    [
        (("fox jumps", "quick brown fox", "brown"), "the quick "),  # "brown" completes first
        (("abc", "bcd"), "the quick brown fox jumps"),
        (("own f", "n fox"), "the quick br"),
        (("s", "jumps"), "the quick brown fox "),  # both complete with the token " jumps": the earlier start wins
        (("x j", "fox"), "the quick brown "),
    ],
)
def test_overlapping_stop_strings(stops: tuple[str, ...], expected: str) -> None:
    text, _ = emitted(byte_level(), "the quick brown fox jumps", stop=stops)
    assert text == expected


def test_the_first_stop_to_complete_wins_over_a_longer_one_that_started_earlier() -> None:
    tok = byte_level()
    detok = IncrementalDetokenizer(tok, [], stop=["abcd", "bc"])
    for char in "abce":
        detok.add(tok.token_to_id(char))
    # When "c" arrives, "bc" is complete: generation stops there; "abcd" could only complete later.
    assert detok.stopped and detok.text == "a" and detok.stop_str == "bc"


def test_repeated_prefixes_hold_back_only_what_can_still_match() -> None:
    tok = byte_level()
    detok = IncrementalDetokenizer(tok, [], stop=["aab"])
    assert [detok.add(tok.token_to_id(c)) for c in "aaaab"] == ["", "", "a", "a", ""]
    assert detok.stopped and detok.text == "aa"


@pytest.mark.parametrize("name", ["byte_level", "sentencepiece"])
def test_a_stop_string_of_multi_byte_characters(name: str) -> None:
    text, detok = emitted(TOKENIZERS[name](), "you 你好 😀 there", stop=("😀",))
    assert text == "you 你好 " and detok.stop_str == "😀"


@pytest.mark.parametrize("name", ["byte_level", "sentencepiece"])
def test_a_stop_inside_the_last_token_is_found_at_flush(name: str) -> None:
    tok = TOKENIZERS[name]()
    ids = tok.encode("ok 🦀").ids[:-1]  # ends in the middle of the emoji: held until flush
    detok = IncrementalDetokenizer(tok, [], stop=["\ufffd"])
    for token in ids:
        detok.add(token)
    detok.flush()
    assert detok.text == "ok " and detok.stopped


def test_empty_stop_strings_are_ignored() -> None:
    text, detok = emitted(byte_level(), "hello", stop=("",))
    assert text == "hello" and not detok.stopped


@pytest.mark.parametrize("name", TOKENIZERS)
@SETTINGS
@given(text=TEXT, stops=st.lists(TEXT.filter(bool).map(lambda s: s[:4]), min_size=1, max_size=4))
def test_stop_strings_cut_at_a_real_occurrence_and_miss_none(name: str, text: str, stops: list[str]) -> None:
    tok = TOKENIZERS[name]()
    full = tok.decode(tok.encode(text).ids)
    out, detok = emitted(tok, text, stop=tuple(stops))
    assert not any(stop in out for stop in stops)  # no stop string got through
    if detok.stopped:
        assert detok.stop_str in stops and full.startswith(out + detok.stop_str)
    else:
        assert out == full


@pytest.mark.parametrize("name", TOKENIZERS)
@SETTINGS
@given(text=TEXT, start=st.integers(0, 40), length=st.integers(1, 6))
def test_one_stop_string_cuts_at_its_first_occurrence(name: str, text: str, start: int, length: int) -> None:
    tok = TOKENIZERS[name]()
    full = tok.decode(tok.encode(text).ids)
    stop = full[start : start + length] or "#"
    out, _ = emitted(tok, text, stop=(stop,))
    cut = full.find(stop)
    assert out == (full if cut < 0 else full[:cut])
