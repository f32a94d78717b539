"""Tiny random-weight sentence encoders written in sentence-transformers' folder format (BERT and MPNet).

The folder is what sentence-transformers saves: the transformer's ``config.json``, ``model.safetensors`` under
transformers' tensor names, a WordPiece ``tokenizer.json`` (trained in-process), ``modules.json``,
``sentence_bert_config.json``, ``1_Pooling/config.json`` and, optionally, ``2_Dense`` and ``Normalize``. So both
Ember's loader and the references (transformers, sentence-transformers) read the very same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tests.helpers.tiny_checkpoint import CORPUS

HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 32, 2, 4, 64, 64


def _tokenizer(family: str) -> Tokenizer:
    """A WordPiece tokenizer shaped like BERT's ([CLS] text [SEP]) or MPNet's (<s> text </s>), lower-casing."""
    if family == "mpnet":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        cls, sep, unk = "<s>", "</s>", "<unk>"
    else:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        cls, sep, unk = "[CLS]", "[SEP]", "[UNK]"
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    return tok


def _weights(family: str, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + rand(HIDDEN) * 0.5, f"{prefix}.bias": rand(HIDDEN)}

    w = {
        "embeddings.word_embeddings.weight": rand(vocab, HIDDEN),
        "embeddings.position_embeddings.weight": rand(POSITIONS, HIDDEN),
        **norm("embeddings.LayerNorm"),
    }
    if family == "mpnet":
        w["encoder.relative_attention_bias.weight"] = rand(32, HEADS) * 5
    else:
        w["embeddings.token_type_embeddings.weight"] = rand(2, HIDDEN)
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        if family == "mpnet":
            names = {n: f"{p}attention.attn.{n}" for n in "qkvo"}
            att_norm = f"{p}attention.LayerNorm"
        else:
            names = {
                "q": f"{p}attention.self.query",
                "k": f"{p}attention.self.key",
                "v": f"{p}attention.self.value",
                "o": f"{p}attention.output.dense",
            }
            att_norm = f"{p}attention.output.LayerNorm"
        for name in names.values():
            w[f"{name}.weight"], w[f"{name}.bias"] = rand(HIDDEN, HIDDEN), rand(HIDDEN)
        w |= norm(att_norm)
        w[f"{p}intermediate.dense.weight"], w[f"{p}intermediate.dense.bias"] = rand(FFN, HIDDEN), rand(FFN)
        w[f"{p}output.dense.weight"], w[f"{p}output.dense.bias"] = rand(HIDDEN, FFN), rand(HIDDEN)
        w |= norm(f"{p}output.LayerNorm")
    return w


def write_tiny_embedder(
    folder: Path,
    family: Literal["bert", "mpnet"] = "bert",
    *,
    pooling: Literal["mean", "cls", "max"] = "mean",
    normalize: bool = True,
    dense: int | None = None,
    max_seq_length: int = 48,
    seed: int = 0,
) -> Path:
    """Write a random sentence encoder into ``folder`` (created) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(family)
    tok.save(str(folder / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    pad = tok.token_to_id("<pad>" if family == "mpnet" else "[PAD]")
    config = {
        "architectures": ["MPNetModel" if family == "mpnet" else "BertModel"],
        "model_type": family,
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "hidden_act": "gelu",
        "max_position_embeddings": POSITIONS,
        "layer_norm_eps": 1e-12 if family == "bert" else 1e-5,
        "pad_token_id": pad,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    if family == "mpnet":
        config |= {"relative_attention_num_buckets": 32, "bos_token_id": 0, "eos_token_id": 2}
    else:
        config |= {"type_vocab_size": 2, "position_embedding_type": "absolute"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_weights(family, vocab, seed), str(folder / "model.safetensors"))
    tokenizer_class = "MPNetTokenizerFast" if family == "mpnet" else "BertTokenizerFast"
    specials = (
        {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>", "unk_token": "<unk>"}
        | {"pad_token": "<pad>", "mask_token": "<mask>"}
        if family == "mpnet"
        else {"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "pad_token": "[PAD]"}
        | {"mask_token": "[MASK]"}
    )
    tokenizer_config = {"tokenizer_class": tokenizer_class, "do_lower_case": True, "model_max_length": POSITIONS}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config | specials))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    pool_dir = folder / "1_Pooling"
    pool_dir.mkdir(exist_ok=True)
    (pool_dir / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": HIDDEN,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": pooling == "max",
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if dense is not None:
        dense_dir = folder / "2_Dense"
        dense_dir.mkdir(exist_ok=True)
        dense_config = {
            "in_features": HIDDEN,
            "out_features": dense,
            "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        }
        (dense_dir / "config.json").write_text(json.dumps(dense_config))
        g = torch.Generator().manual_seed(seed + 1)
        linear = {"linear.weight": torch.randn(dense, HIDDEN, generator=g) * 0.3, "linear.bias": torch.zeros(dense)}
        save_file(linear, str(dense_dir / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    if normalize:
        idx = len(modules)
        modules.append(
            {"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    return folder
