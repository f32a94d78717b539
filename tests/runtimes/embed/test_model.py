"""Ember's sentence encoder against sentence-transformers on the same folders: tiny random BERT and MPNet encoders
in every pooling the loader reads, and the shipped all-MiniLM-L6-v2 (the default model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from sentence_transformers import SentenceTransformer

from ember.runtimes.embed.loader import LoadedEncoder, load_encoder
from tests.helpers.tiny_embedder import write_tiny_embedder

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello",
    "  Paris is the capital of France, and Berlin is the capital of Germany.  ",
    "Cafés, naïve résumés and jalapeños: unicode text",
]


def encode(loaded: LoadedEncoder, texts: list[str]) -> torch.Tensor:
    """A padded batch through Ember's model, as the engine builds one."""
    rows = loaded.tokenizer.encode(texts)
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    with torch.inference_mode():
        out: torch.Tensor = loaded.model(ids, mask)
    return out


def reference(folder: Path, texts: list[str]) -> torch.Tensor:
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    out: torch.Tensor = model.encode(texts, convert_to_tensor=True, batch_size=len(texts))
    return out


@pytest.mark.parametrize(
    "family, options",
    [
        ("bert", {}),
        ("mpnet", {}),
        ("bert", {"pooling": "cls", "dense": 16}),
        ("mpnet", {"pooling": "max", "normalize": False}),
    ],
)
def test_tiny_encoders_match_sentence_transformers(tmp_path: Path, family: str, options: dict[str, Any]) -> None:
    folder = write_tiny_embedder(tmp_path / "m", family, **options)  # type: ignore[arg-type]
    loaded = load_encoder(folder, torch.device("cpu"))
    ours, theirs = encode(loaded, TEXTS), reference(folder, TEXTS)
    assert ours.shape == theirs.shape == (len(TEXTS), options.get("dense", 32))
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-5)
    norms = ours.norm(dim=1)
    if options.get("normalize", True):
        torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm_dir: Path) -> None:
    long = " ".join(["the museum has a famous painting of the ocean"] * 28)  # 254 tokens with [CLS] and [SEP]
    texts = [*TEXTS, long, "東京 is a city 🙂", "a"]
    loaded = load_encoder(minilm_dir, torch.device("cpu"))
    assert loaded.dimensions == 384 and loaded.max_tokens == 256
    assert len(loaded.tokenizer.encode([long])[0]) <= 256
    cosine = torch.nn.functional.cosine_similarity(encode(loaded, texts), reference(minilm_dir, texts), dim=1)
    assert cosine.min().item() >= 0.9999, cosine.tolist()


def test_token_ids_are_framed_like_text(tiny_bert: LoadedEncoder) -> None:
    tok = tiny_bert.tokenizer
    (framed,) = tok.encode(["the quick brown fox"])
    bare = tok.tokenizer.encode("the quick brown fox", add_special_tokens=False).ids
    assert tok.frame(bare) == framed
    assert tok.special_tokens == 2 and framed[0] == tok.prefix[0] and framed[-1] == tok.suffix[-1]


def test_tokenizer_json_truncation_is_ignored(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """A tokenizer.json that truncates (MiniLM's cuts at 128) must not cut inputs: over-long ones are refused
    by the worker instead, so the loader turns truncation and padding off."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["truncation"] = {"max_length": 4, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    loaded = load_encoder(folder, torch.device("cpu"))
    assert len(loaded.tokenizer.encode(["the quick brown fox jumps over the lazy dog"])[0]) > 4


def _module(kind: str, path: str) -> dict[str, str]:
    return {"type": f"sentence_transformers.models.{kind}", "path": path}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: (f / "config.json").write_text(json.dumps({"model_type": "llama"})), "model_type='llama'"),
        (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda f: (f / "tokenizer.json").unlink(), "no tokenizer.json"),
        (
            lambda f: (f / "modules.json").write_text(json.dumps([_module("Transformer", ""), _module("CNN", "1")])),
            "'CNN'",
        ),
        (lambda f: (f / "modules.json").write_text(json.dumps([_module("Pooling", "1_Pooling")])), "no Transformer"),
    ],
)
def test_unsupported_folders_are_refused_clearly(
    tiny_bert_dir: Path, tmp_path: Path, change: Any, message: str
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    change(folder)
    with pytest.raises(ValueError, match=message):
        load_encoder(folder, torch.device("cpu"))
