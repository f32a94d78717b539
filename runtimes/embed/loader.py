"""A sentence-transformers folder from disk: the encoder's weights, its tokenizer, and the modules after it.

The folder's ``modules.json`` lists the pipeline (``sentence_transformers.models.Transformer``, ``Pooling``,
``Dense``, ``Normalize``), each in a subfolder of its own; a plain transformers folder without it is read as
sentence-transformers reads one: mean pooling, no normalisation. Weights come from ``model.safetensors`` (or
``pytorch_model.bin``) under transformers' names, mapped onto ``model.Encoder``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from ember.runtimes.embed.model import Encoder, EncoderConfig, Pooling, SentenceEncoder

_MODULE = "sentence_transformers.models."
_TANH = "torch.nn.modules.activation.Tanh"
_IDENTITY = "torch.nn.modules.linear.Identity"


class EmbedTokenizer:
    """The folder's fast tokenizer, without the truncation and padding its tokenizer.json may carry: the worker
    refuses an over-long input instead of silently cutting it, and the engine pads its own batches."""

    def __init__(self, tokenizer: Tokenizer, lower_case: bool) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.lower_case = lower_case
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        # The special tokens the template puts around a sentence ([CLS] ... [SEP], <s> ... </s>), found by
        # encoding one word with and without them: token-id inputs get the same frame.
        bare = tokenizer.encode("a", add_special_tokens=False).ids
        framed = tokenizer.encode("a").ids
        at = next(i for i in range(len(framed)) if framed[i : i + len(bare)] == bare)
        self.prefix: list[int] = framed[:at]
        self.suffix: list[int] = framed[at + len(bare) :]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids with the template's special tokens; texts are stripped first, as sentence-transformers
        does (and lower-cased where its config says so)."""
        texts = [t.strip().lower() if self.lower_case else t.strip() for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def frame(self, ids: list[int]) -> list[int]:
        """Token ids given by the client, framed by the special tokens."""
        return [*self.prefix, *ids, *self.suffix]

    @property
    def special_tokens(self) -> int:
        return len(self.prefix) + len(self.suffix)


@dataclass
class LoadedEncoder:
    path: Path
    model: SentenceEncoder
    tokenizer: EmbedTokenizer
    # Tokens one input may hold, special tokens included: sentence-transformers' max_seq_length (which it
    # truncates to), never more than the position table.
    max_tokens: int
    device: torch.device
    dtype: torch.dtype

    @property
    def dimensions(self) -> int:
        return self.model.dimensions


def load_encoder(path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> LoadedEncoder:
    """Load a sentence-transformers (or plain transformers BERT/MPNet) folder; ValueError if it is not one."""
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder: an embedding model is a sentence-transformers folder")
    modules = _modules(path)
    transformer = path / next((m["path"] for m in modules if m["type"] == "Transformer"), "")
    config = EncoderConfig.from_hf(_json(transformer / "config.json"))
    st_config = _json(transformer / "sentence_bert_config.json", {})
    encoder = Encoder(config)
    encoder.load_state_dict(encoder_state(_weights(transformer), config))
    pooling: Pooling = "mean"
    dense: nn.Linear | None = None
    tanh = normalize = False
    for m in modules:
        folder = path / m["path"]
        if m["type"] == "Pooling":
            pooling = _pooling(_json(folder / "config.json"))
        elif m["type"] == "Dense":
            dense, tanh = _dense(folder)
        elif m["type"] == "Normalize":
            normalize = True
        elif m["type"] != "Transformer":
            raise ValueError(f"{path}: module {m['type']!r} in modules.json is not supported")
    model = SentenceEncoder(encoder, pooling, normalize, dense, tanh).to(device=device, dtype=dtype).eval()
    tokenizer_file = transformer / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(f"{transformer} has no tokenizer.json (a fast tokenizer is needed)")
    tokenizer = EmbedTokenizer(Tokenizer.from_file(str(tokenizer_file)), bool(st_config.get("do_lower_case", False)))
    max_tokens = min(int(st_config.get("max_seq_length", config.max_tokens)), config.max_tokens)
    return LoadedEncoder(path, model, tokenizer, max_tokens, device, dtype)


def encoder_state(weights: dict[str, torch.Tensor], c: EncoderConfig) -> dict[str, torch.Tensor]:
    """transformers' tensor names (BertModel / MPNetModel, with or without their prefix) as ``Encoder``'s, with
    each layer's query, key and value stacked into one matrix."""
    for prefix in ("bert.", "mpnet.", "model."):
        if any(k.startswith(prefix) for k in weights):
            weights = {k.removeprefix(prefix): v for k, v in weights.items()}
    out = {
        "word.weight": weights["embeddings.word_embeddings.weight"],
        "position.weight": weights["embeddings.position_embeddings.weight"],
        "embed_norm.weight": weights["embeddings.LayerNorm.weight"],
        "embed_norm.bias": weights["embeddings.LayerNorm.bias"],
    }
    if c.type_vocab_size:
        out["token_type.weight"] = weights["embeddings.token_type_embeddings.weight"]
    if c.relative_buckets:
        out["relative_bias.weight"] = weights["encoder.relative_attention_bias.weight"]
    for i in range(c.num_layers):
        src = f"encoder.layer.{i}."
        if c.family == "mpnet":
            qkv = [f"{src}attention.attn.{n}" for n in "qkv"]
            att_out, att_norm = f"{src}attention.attn.o", f"{src}attention.LayerNorm"
        else:
            qkv = [f"{src}attention.self.{n}" for n in ("query", "key", "value")]
            att_out, att_norm = f"{src}attention.output.dense", f"{src}attention.output.LayerNorm"
        dst = f"layers.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}qkv.{part}"] = torch.cat([weights[f"{n}.{part}"] for n in qkv])
            out[f"{dst}out.{part}"] = weights[f"{att_out}.{part}"]
            out[f"{dst}attn_norm.{part}"] = weights[f"{att_norm}.{part}"]
            out[f"{dst}up.{part}"] = weights[f"{src}intermediate.dense.{part}"]
            out[f"{dst}down.{part}"] = weights[f"{src}output.dense.{part}"]
            out[f"{dst}ffn_norm.{part}"] = weights[f"{src}output.LayerNorm.{part}"]
    return {k: v.float() for k, v in out.items()}


def _modules(path: Path) -> list[dict[str, str]]:
    """modules.json's entries as {"type": short name, "path": subfolder}; a transformers folder alone without it."""
    listed = _json(path / "modules.json", None)
    if listed is None:
        return [{"type": "Transformer", "path": ""}, {"type": "Pooling", "path": ""}]
    out = []
    for m in listed:
        kind = str(m.get("type", ""))
        if not kind.startswith(_MODULE):
            raise ValueError(f"{path}: module {kind!r} in modules.json is not a sentence-transformers module")
        out.append({"type": kind.removeprefix(_MODULE), "path": str(m.get("path", ""))})
    if not any(m["type"] == "Transformer" for m in out):
        raise ValueError(f"{path}: modules.json lists no Transformer module")
    return out


def _pooling(config: dict[str, Any]) -> Pooling:
    modes: list[Pooling] = [
        mode
        for mode, key in (
            ("cls", "pooling_mode_cls_token"),
            ("mean", "pooling_mode_mean_tokens"),
            ("max", "pooling_mode_max_tokens"),
            ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens"),
        )
        if config.get(key)
    ]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k[13:] not in _POOL_KEYS]
    if len(modes) != 1 or others:
        raise ValueError(f"pooling {config} is not one of cls, mean, max or mean_sqrt_len alone")
    return modes[0]


_POOL_KEYS = {"cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens"}


def _dense(folder: Path) -> tuple[nn.Linear, bool]:
    config = _json(folder / "config.json")
    activation = config.get("activation_function", _IDENTITY)
    if activation not in (_TANH, _IDENTITY):
        raise ValueError(f"{folder}: Dense activation {activation!r} is not supported (Tanh or Identity)")
    layer = nn.Linear(int(config["in_features"]), int(config["out_features"]), bias=bool(config.get("bias", True)))
    weights = _weights(folder)
    layer.load_state_dict({k.removeprefix("linear."): v.float() for k, v in weights.items()})
    return layer, activation == _TANH


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        weights: dict[str, torch.Tensor] = torch.load(
            folder / "pytorch_model.bin", map_location="cpu", weights_only=True
        )
        return weights
    raise ValueError(f"{folder} has no model.safetensors or pytorch_model.bin")


def _json(path: Path, default: Any = ...) -> Any:
    if not path.is_file():
        if default is ...:
            raise ValueError(f"{path} is missing")
        return default
    return json.loads(path.read_text())
