"""`TextTokenizer`: a `tokenizers.Tokenizer` from `tokenizer.json` plus the model's special tokens and
chat template, rendered the way transformers renders it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ember.runtimes.text.config import ModelLoadError


class ChatTemplateError(ValueError):
    """The chat template rejected the messages (its `raise_exception`) or failed to render."""


class NoChatTemplateError(ChatTemplateError):
    """The model ships no chat template, so only plain completions work."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class TextTokenizer:
    """Text <-> token ids for one model, with its special tokens and chat template."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
        eos_token_ids: Iterable[int] = (),
    ) -> None:
        self._tok = tokenizer
        self.chat_template = chat_template
        # bos_token, eos_token, unk_token, pad_token as strings (what templates see), when set.
        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        ids = set(eos_token_ids)
        if self.eos_token is not None and (eos_id := tokenizer.token_to_id(self.eos_token)) is not None:
            ids.add(eos_id)
        self.eos_token_ids: frozenset[int] = frozenset(ids)
        self._byte_level = _is_byte_level(tokenizer)
        self._token_bytes: dict[int, bytes] = {}

    @classmethod
    def from_dir(cls, path: Path) -> TextTokenizer:
        """Load `tokenizer.json`, `tokenizer_config.json` and, when present, `generation_config.json`,
        `config.json` (for EOS ids) and `chat_template.jinja`."""
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelLoadError(f"{tokenizer_file} does not exist")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise ModelLoadError(f"{tokenizer_file} cannot be read: {exc}") from exc
        tok_config = _read_json(path / "tokenizer_config.json", required=True)
        special = {
            name: _token_content(tok_config[name])
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
            if tok_config.get(name) is not None
        }
        eos_ids: set[int] = set()
        for extra in ("generation_config.json", "config.json"):
            eos_ids.update(_ids(_read_json(path / extra, required=False).get("eos_token_id")))
        template_file = path / "chat_template.jinja"
        template = (
            template_file.read_text(encoding="utf-8")
            if template_file.is_file()
            else _pick_template(tok_config.get("chat_template"))
        )
        return cls(tokenizer, chat_template=template, special_tokens=special, eos_token_ids=eos_ids)

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of text; add_special_tokens adds what the post-processor adds (e.g. BOS)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ids; a trailing incomplete UTF-8 sequence decodes to U+FFFD."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary spelling of token_id (byte-level tokens show `Ġ` for a space)."""
        return self._tok.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def added_token_ids(self) -> frozenset[int]:
        """The ids of the tokens added to the vocabulary (control tokens such as ``<|im_end|>``, and tags such as
        Qwen's ``<tool_call>``): the model writes them whole, never spelled out of other tokens."""
        return frozenset(self._tok.get_added_tokens_decoder())

    def to_json(self) -> str:
        """The whole tokenizer as tokenizer.json text (what grammar libraries build their vocabulary from)."""
        return self._tok.to_str()

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token_id stands for (for logprobs: a token may be part of a UTF-8 character)."""
        cached = self._token_bytes.get(token_id)
        if cached is None:
            cached = self._spell_bytes(token_id)
            self._token_bytes[token_id] = cached
        return cached

    def _spell_bytes(self, token_id: int) -> bytes:
        """Undo the vocabulary's spelling of one token."""
        token = self._tok.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary of {self.vocab_size}")
        if self._byte_level:
            table = self._unicode_to_byte
            # Added tokens such as <|im_end|> are stored as plain text; any character outside the
            # byte alphabet can only come from such a token and stands for its own UTF-8.
            return b"".join(bytes([table[c]]) if c in table else c.encode("utf-8") for c in token)
        # SentencePiece-style: byte-fallback tokens are spelled <0xAB>, spaces as U+2581.
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return bytes([int(token[3:5], 16)])
        return token.replace("\u2581", " ").encode("utf-8")

    @cached_property
    def _unicode_to_byte(self) -> dict[str, int]:
        return {c: b for b, c in bytes_to_unicode().items()}

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: list[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render messages (OpenAI-style dicts) into the prompt text the model was trained on.

        Raises NoChatTemplateError when the model has no template, and ChatTemplateError carrying the
        template's own message when it rejects the conversation (e.g. roles out of order).
        """
        template = self._compiled_template
        try:
            return template.render(
                messages=messages,
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
                **template_kwargs,
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(str(exc) or type(exc).__name__) from exc

    @cached_property
    def _compiled_template(self) -> jinja2.Template:
        if not self.chat_template:
            raise NoChatTemplateError(
                "this model has no chat template (tokenizer_config.json has no chat_template and there is no "
                "chat_template.jinja); use the completions endpoint with a raw prompt"
            )
        try:
            return _template_environment().from_string(self.chat_template)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks assistant spans with it; we just render the body."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's Extension API declares this as a class attribute

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
    """transformers' `tojson`: keeps non-ASCII as is, unlike jinja2's HTML-safe default."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _template_environment() -> ImmutableSandboxedEnvironment:
    """The sandbox transformers renders chat templates in, with the same globals and filters."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _is_byte_level(tokenizer: Tokenizer) -> bool:
    """Whether the vocabulary is spelled in GPT-2's byte alphabet (a ByteLevel decoder says so)."""
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    if decoder.get("type") == "ByteLevel":
        return True
    return any(d.get("type") == "ByteLevel" for d in decoder.get("decoders", []))


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    """A JSON object file; {} when optional and absent."""
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path} does not exist")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc


def _token_content(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value["content"] if isinstance(value, dict) else str(value)


def _pick_template(value: Any) -> str | None:
    """tokenizer_config's chat_template: a string, or a list of named templates where 'default' wins."""
    if value is None or isinstance(value, str):
        return value
    named = {t["name"]: t["template"] for t in value}
    return named.get("default")


def _ids(value: Any) -> list[int]:
    """An `eos_token_id` field: absent, one int, or a list."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]
