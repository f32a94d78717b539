"""TextTokenizer against transformers' tokenizer and chat-template rendering, on the tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ember.runtimes.text.config import ModelLoadError
from ember.runtimes.text.tokenizer import ChatTemplateError, NoChatTemplateError, TextTokenizer
from tests.helpers.tiny_checkpoint import IM_END_ID, write_tiny_llama

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "def add(a, b):\n    return a + b  # sum\n",
    "Numbers: 3.14159, 2024-11-25, $1,000,000 and x   123",
    "Cafés, naïve résumés, 東京, emoji 🙂🎉",
    "I'm sure you're right; they'll say WE'VE won.",
    "<|im_start|>user\nhi there<|im_end|>\n",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye 👋"},
    ],
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> TextTokenizer:
    return TextTokenizer.from_dir(folder)


@pytest.fixture(scope="module")
def reference(folder: Path):
    return AutoTokenizer.from_pretrained(folder)


def test_encode_and_decode_equal_transformers(tokenizer: TextTokenizer, reference) -> None:
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=True)
        assert ids == reference(text)["input_ids"], text
        assert (
            tokenizer.encode(text, add_special_tokens=False) == reference(text, add_special_tokens=False)["input_ids"]
        )
        for skip in (True, False):
            assert tokenizer.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)


def test_decode_round_trips_text(tokenizer: TextTokenizer) -> None:
    for text in TEXTS:
        assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text


def test_token_bytes_concatenate_to_the_utf8_text(tokenizer: TextTokenizer) -> None:
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8"), text
    # An emoji is 4 bytes; with a 512-token vocabulary it is split into byte tokens that are not valid UTF-8 alone.
    pieces = [tokenizer.token_bytes(i) for i in tokenizer.encode("🙂")]
    assert b"".join(pieces) == "🙂".encode()
    assert tokenizer.token_bytes(IM_END_ID) == b"<|im_end|>"
    assert tokenizer.id_to_token(IM_END_ID) == "<|im_end|>"


def test_special_tokens(tokenizer: TextTokenizer) -> None:
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_ids == frozenset({IM_END_ID})
    assert tokenizer.vocab_size == 512


def test_eos_ids_are_the_union_of_all_files(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    config = json.loads((folder / "config.json").read_text())
    config["eos_token_id"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    assert TextTokenizer.from_dir(folder).eos_token_ids == frozenset({0, 2, 5})


def test_chat_template_equals_transformers(tokenizer: TextTokenizer, reference) -> None:
    for messages in CONVERSATIONS:
        for add in (True, False):
            ours = tokenizer.apply_chat_template(messages, add_generation_prompt=add)
            assert ours == reference.apply_chat_template(messages, add_generation_prompt=add, tokenize=False)


def test_template_raise_exception_is_a_value_error_with_its_message(tokenizer: TextTokenizer) -> None:
    with pytest.raises(ChatTemplateError, match="Unknown role: wizard") as info:
        tokenizer.apply_chat_template([{"role": "wizard", "content": "hi"}])
    assert isinstance(info.value, ValueError)


def test_template_globals_and_filters_match_transformers(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    template = (
        "{{ bos_token }}{% if tools %}{{ tools | tojson }}{% endif %}"
        "{% for m in messages %}{% generation %}{{ m['content'] | tojson }}{% endgeneration %}"
        "{% if loop.index > 1 %}{% break %}{% endif %}{% endfor %}"
        "{{ eos_token }}{{ strftime_now('%Y') | length }}"
    )
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": template}, {"name": "other", "template": "x"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tools = [{"type": "function", "function": {"name": "météo", "parameters": {}}}]
    messages = [{"role": "user", "content": "ünï"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}]
    ours = TextTokenizer.from_dir(folder).apply_chat_template(messages, tools=tools)
    theirs = AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, tools=tools, tokenize=False)
    assert ours == theirs
    assert ours.startswith('<|im_start|>[{"type": "function", "function": {"name": "météo"')


def test_chat_template_jinja_file_wins(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert TextTokenizer.from_dir(folder).apply_chat_template([{"role": "user", "content": "x"}]) == "[x]"


def test_missing_template_fails_only_chat(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = TextTokenizer.from_dir(folder)
    assert tokenizer.encode("hello")
    with pytest.raises(NoChatTemplateError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}])


def test_broken_template_is_a_chat_template_error(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="does not compile"):
        TextTokenizer.from_dir(folder).apply_chat_template([{"role": "user", "content": "x"}])


def test_special_tokens_written_as_added_token_dicts(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = {"__type": "AddedToken", "content": "<|endoftext|>", "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = TextTokenizer.from_dir(folder)
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.eos_token_ids == frozenset({0, IM_END_ID})


def test_missing_tokenizer_files_name_the_file(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json"):
        TextTokenizer.from_dir(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        TextTokenizer.from_dir(folder)
