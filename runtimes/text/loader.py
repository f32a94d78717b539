"""Weights from disk: a Hugging Face folder (safetensors) or a GGUF file, into a ready `CausalLM`.

A GGUF is converted once into a standard folder under the cache (see `gguf_convert`) and then
loaded like any other folder, so later starts skip the dequantization.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ember.runtimes.text.config import ModelConfig, ModelLoadError
from ember.runtimes.text.model import CausalLM
from ember.runtimes.text.tokenizer import TextTokenizer

__all__ = ["LoadedModel", "ModelLoadError", "load_model"]

# Bump when the converter's output changes, so stale conversions in the cache are not reused.
CONVERTER_VERSION = "1"


@dataclass
class LoadedModel:
    """A model ready to run: weights on the device, its config and tokenizer."""

    model: CausalLM
    config: ModelConfig
    tokenizer: TextTokenizer
    # Display name: the folder's name, or the GGUF file's stem.
    name: str
    # The folder the weights were read from (for a GGUF, its converted folder in the cache).
    path: Path
    # What the caller asked for: the folder, or the .gguf file.
    source: Path
    # Longest sequence (prompt + completion) the model handles.
    context_length: int


def load_model(
    path: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load a model folder, a `.gguf` file, or a folder holding exactly one `.gguf`.

    Args:
        path: a folder with config.json, model.safetensors (or model.safetensors.index.json and its
            shards), tokenizer.json and tokenizer_config.json; or a GGUF file / a folder with one.
        dtype: the dtype to run in (float32 is exact; bfloat16 halves memory).
        device: where the weights go.
        cache_dir: where GGUF conversions are kept; default `~/.cache/ember/models`.

    Returns:
        The LoadedModel.

    Raises:
        ModelLoadError: naming the missing file, unsupported value or mismatched tensor.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise ModelLoadError(f"model path {source} does not exist")
    gguf_file = _find_gguf(source)
    if gguf_file is not None:
        folder = convert_gguf_cached(gguf_file, cache_dir=cache_dir)
        name = gguf_file.stem
    else:
        folder, name = source, source.name
    config = ModelConfig.from_file(folder / "config.json")
    tokenizer = TextTokenizer.from_dir(folder)
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelLoadError(
            f"{folder / 'tokenizer.json'} has {tokenizer.vocab_size} tokens but config.json's "
            f"vocab_size={config.vocab_size} is smaller"
        )
    state_dict = read_safetensors(folder, dtype)
    model = build_model(config, state_dict, device=torch.device(device), source=folder)
    return LoadedModel(
        model=model,
        config=config,
        tokenizer=tokenizer,
        name=name,
        path=folder,
        source=source,
        context_length=config.context_length,
    )


def build_model(
    config: ModelConfig, state_dict: dict[str, torch.Tensor], *, device: torch.device, source: Path
) -> CausalLM:
    """A CausalLM holding exactly state_dict's tensors (no random init), rotary tables ready, in eval mode."""
    # Built on the meta device so no memory is spent on, and no time on initialising, weights that
    # the checkpoint replaces right away.
    with torch.device("meta"):
        model = CausalLM(config)
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        # Tied checkpoints usually omit lm_head.weight; when present it equals the embedding.
        state_dict.pop("lm_head.weight", None)
        if "model.embed_tokens.weight" in state_dict:
            state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
    _check_tensors(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.requires_grad_(False)
    model.setup_rope(config.max_position_embeddings)
    return model.to(device).eval()


def read_safetensors(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards model.safetensors.index.json lists, in dtype."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ModelLoadError(f"{index} has no valid weight_map: {exc}") from exc
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        raise ModelLoadError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise ModelLoadError(f"shard {file} listed in {index.name} does not exist")
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key).to(dtype)
        except ModelLoadError:
            raise
        except Exception as exc:  # safetensors raises its own SafetensorError for a corrupt header
            raise ModelLoadError(f"{file} cannot be read: {exc}") from exc
    return tensors


def _check_tensors(model: CausalLM, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Raise ModelLoadError naming any missing, unexpected or mis-shaped tensor."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        raise ModelLoadError(f"{source}: checkpoint lacks {len(missing)} tensor(s) the config implies: {missing[:5]}")
    if unexpected:
        raise ModelLoadError(f"{source}: checkpoint has {len(unexpected)} unexpected tensor(s): {unexpected[:5]}")
    for key, shape in expected.items():
        got = tuple(state_dict[key].shape)
        if got != shape:
            raise ModelLoadError(f"{source}: tensor {key} has shape {list(got)} but config.json implies {list(shape)}")


def _find_gguf(path: Path) -> Path | None:
    """The GGUF file path names (itself, or the only .gguf in a folder without config.json), else None."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; pass a model folder or a GGUF file")
        return path
    if (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise ModelLoadError(f"{path} holds {len(found)} .gguf files ({[f.name for f in found]}); pass one of them")
    if not found:
        raise ModelLoadError(f"{path} has no config.json and no .gguf file")
    return found[0]


def gguf_cache_folder(gguf_file: Path, cache_dir: Path | None) -> Path:
    """Where gguf_file's conversion lives: `<cache>/<stem>-<hash of path, size, mtime, converter>`."""
    stat = gguf_file.stat()
    key = f"{gguf_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERTER_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = cache_dir if cache_dir is not None else Path.home() / ".cache" / "ember" / "models"
    return root / f"{gguf_file.stem}-{digest}"


def convert_gguf_cached(gguf_file: Path, *, cache_dir: Path | None) -> Path:
    """The converted folder for gguf_file, converting it first if the cache has none."""
    # Imported here: the gguf package is only needed for GGUF files.
    from ember.runtimes.text.gguf_convert import convert_gguf

    target = gguf_cache_folder(gguf_file, cache_dir)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # NOTE: written to a temp folder beside the target and renamed, so a crash or a concurrent
    # start never leaves a half-written folder where a complete one is expected.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert_gguf(gguf_file, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process finished the same conversion first; theirs is as good as ours.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
