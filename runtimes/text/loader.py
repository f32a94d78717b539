"""Weights from disk: a Hugging Face folder (safetensors) or a GGUF file, into a ready `CausalLM`.

A GGUF's config and tokenizer are converted once into a folder under the cache (see `gguf_convert`); its weights
are read from the GGUF itself at every start, kept in the file's own quantized formats by default (``quantization
= "auto"``), so a 4-bit file takes about as much memory in the worker as on disk, and no float32 copy is ever
written. A safetensors checkpoint can be quantized at load (``"int8"`` / ``"int4"``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ember.runtimes.process_memory import release_freed_memory
from ember.runtimes.text import kernels
from ember.runtimes.text.config import ModelConfig, ModelLoadError
from ember.runtimes.text.model import CausalLM, choose_linear_paths, fuse_projections
from ember.runtimes.text.quant.file_rows import FileEmbedding, FileRows
from ember.runtimes.text.quant.formats import QuantizedTensor
from ember.runtimes.text.quant.layers import (
    DenseChoice,
    QuantEmbedding,
    QuantLinear,
    choose_dense_rows,
    tile_for_kernel,
)
from ember.runtimes.text.quant.quantize import quantizable, quantize
from ember.runtimes.text.tokenizer import TextTokenizer

__all__ = ["LoadedModel", "ModelLoadError", "load_model"]

# Bump when the converter's output changes, so stale conversions in the cache are not reused.
# 3: the cached folder holds no weights (they are read from the GGUF) but an index of where they lie.
CONVERTER_VERSION = "3"

log = logging.getLogger(__name__)

Weights = dict[str, "torch.Tensor | QuantizedTensor | FileRows"]


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
    # How the weights are held: the quantized formats by how many weights use each ("Q4_K": 120, ...), and
    # "float32" / "bfloat16" for the ones held dense.
    weight_formats: dict[str, int] = field(default_factory=dict)
    # Bytes of weights a forward reads (each stored tensor once; a tied embedding counted once).
    weight_bytes: int = 0
    # What the kernel choices measured at load, one line each (logged by the worker).
    kernel_choices: list[str] = field(default_factory=list)


def _paths_said(c: DenseChoice) -> str:
    """One weight format's paths by row count, as the log says them."""
    if c.product_from_rows >= c.dense_from_rows:
        return (
            f"{c.kind} weights: the streaming kernel below {c.dense_from_rows} rows, dequantize + dense matmul "
            "from there"
        )
    return (
        f"{c.kind} weights: the streaming kernel below {c.product_from_rows} rows, its matrix product below "
        f"{c.dense_from_rows}, dequantize + dense matmul from there"
    )


def load_model(
    path: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    cache_dir: Path | None = None,
    quantization: str = "auto",
    activations: str = "auto",
) -> LoadedModel:
    """Load a model folder, a `.gguf` file, or a folder holding exactly one `.gguf`.

    Args:
        path: a folder with config.json, model.safetensors (or model.safetensors.index.json and its
            shards), tokenizer.json and tokenizer_config.json; or a GGUF file / a folder with one.
        dtype: the dtype to run in (float32 is exact; bfloat16 halves memory).
        device: where the weights go.
        cache_dir: where GGUF conversions are kept; default `~/.cache/ember/models`.
        quantization: "auto" (a GGUF's own formats; a safetensors checkpoint as it is), "none" (float weights),
            "int8" or "int4" (weight matrices quantized at load).
        activations: how bfloat16 activations enter the quantized streaming kernel, process-wide ("auto",
            "int8", "int16", "bfloat16": ModelSpec.activations); set before the load-time kernel timing, whose
            crossover to the dense path depends on it.

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
    if gguf_file is not None:
        state_dict = read_gguf(gguf_file, folder, quantization=quantization, dtype=dtype)
    else:
        state_dict = quantize_weights(read_safetensors(folder, dtype), quantization)
    model = build_model(config, state_dict, device=torch.device(device), source=folder, dtype=dtype)
    del state_dict
    fuse_projections(model)
    tile_for_kernel(model)
    choose_activation_kernel(activations)
    choices = [_paths_said(c) for c in choose_dense_rows(model, dtype)]
    choices += choose_linear_paths(model, dtype)
    streams = any(isinstance(m, QuantLinear) for m in model.modules())
    if streams and dtype == torch.bfloat16 and kernels.quant_kernel() in ACTIVATION_KERNELS:
        choices.append(f"quantized weights, bfloat16 activations: {ACTIVATION_KERNELS[kernels.quant_kernel()]}")
    formats, nbytes = weight_summary(model)
    release_freed_memory()
    return LoadedModel(
        model=model,
        config=config,
        tokenizer=tokenizer,
        name=name,
        path=folder,
        source=source,
        context_length=config.context_length,
        weight_formats=formats,
        weight_bytes=nbytes,
        kernel_choices=choices,
    )


# ModelSpec.activations -> the native kernel's name for it (kernels.quant_kernel), and what each one does.
KERNEL_FOR_ACTIVATIONS = {"int8": "int8", "int16": "int", "bfloat16": "bf16"}
ACTIVATION_KERNELS = {
    "int8": "rounded to 8 bits per group of 32, integer dot products (AVX512-VNNI)",
    "int": "rounded to 16 bits per group of 32, integer dot products (AVX512-VNNI)",
    "bf16": "bfloat16 dot products on the activations as they are (AVX512-BF16; 8-bit weights: as int)",
}


def choose_activation_kernel(activations: str) -> None:
    """Sets how bfloat16 activations enter the quantized streaming kernel (ModelSpec.activations), for the
    process; "auto" leaves the extension's default (int8 where the CPU has AVX512-VNNI) or EMBER_QUANT_KERNEL's.
    Raises ModelLoadError where this CPU or build cannot run the one asked for."""
    if activations == "auto":
        return
    if activations not in KERNEL_FOR_ACTIVATIONS:
        raise ModelLoadError(f"activations must be auto, int8, int16 or bfloat16, got {activations!r}")
    if not kernels.quant_kernel():
        raise ModelLoadError(f"activations = {activations!r} needs ember._C's quantized kernels, which are not built")
    try:
        kernels.quant_kernel(KERNEL_FOR_ACTIVATIONS[activations])
    except RuntimeError as e:  # the CPU lacks the instructions: the extension says which
        raise ModelLoadError(f"activations = {activations!r}: {str(e).splitlines()[0]}") from None


def read_gguf(gguf_file: Path, folder: Path, *, quantization: str, dtype: torch.dtype) -> Weights:
    """The GGUF's weights (see ``gguf_convert.read_weights``), found through the tensor index the conversion left in
    the folder (or by parsing the file where it could not); the file's memory map is released on return."""
    from ember.runtimes.text.gguf_convert import TENSOR_INDEX, indexed_tensors, open_gguf, read_weights

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    index_file = folder / TENSOR_INDEX
    if index_file.is_file():
        tensors: list[Any] = indexed_tensors(gguf_file, json.loads(index_file.read_text(encoding="utf-8")))
    else:
        tensors = list(open_gguf(gguf_file).tensors)
    return read_weights(tensors, config, gguf_file, quantization=quantization, dtype=dtype)


def quantize_weights(state_dict: dict[str, torch.Tensor], quantization: str) -> Weights:
    """A float checkpoint's weight matrices quantized as asked ("int8", "int4"); "auto" and "none" keep it float."""
    if quantization in ("auto", "none"):
        return dict(state_dict)
    if quantization not in ("int8", "int4"):
        raise ModelLoadError(f"quantization={quantization!r}: one of auto, none, int8, int4")
    bits = 8 if quantization == "int8" else 4
    out: Weights = {}
    for key, t in state_dict.items():
        out[key] = quantize(t, bits) if key.endswith(".weight") and quantizable(t) else t
    return out


def weight_summary(model: CausalLM) -> tuple[dict[str, int], int]:
    """(weights held per format, bytes of weights read per forward), each tensor once."""
    formats: dict[str, int] = {}
    seen: set[int] = set()
    nbytes = 0
    for module in model.modules():
        if isinstance(module, FileEmbedding):  # left in the file: resident only as far as it is read
            formats[module.kind] = formats.get(module.kind, 0) + module.num_embeddings * module.embedding_dim
        if isinstance(module, (QuantLinear, QuantEmbedding)):
            n, k = module.shape
            key = module.qweight.data_ptr()
            if key not in seen:
                seen.add(key)
                formats[module.kind] = formats.get(module.kind, 0) + n * k
                nbytes += module.quantized().nbytes
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            name = str(p.dtype).removeprefix("torch.")
            formats[name] = formats.get(name, 0) + p.numel()
            nbytes += p.numel() * p.element_size()
    return formats, nbytes


def build_model(
    config: ModelConfig,
    state_dict: Weights,
    *,
    device: torch.device,
    source: Path,
    dtype: torch.dtype = torch.float32,
) -> CausalLM:
    """A CausalLM holding exactly state_dict's tensors (no random init), rotary tables ready, in eval mode.

    A QuantizedTensor in state_dict replaces its nn.Linear / nn.Embedding with a QuantLinear / QuantEmbedding.
    """
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
    dense = install_quantized(model, state_dict, dtype)
    missing, unexpected = model.load_state_dict(dense, strict=False, assign=True)
    left = [k for k in missing if any(t.is_meta for t in _named_tensors(model, k))]
    if left or unexpected:  # _check_tensors accounted for every name: this is a bug here, not in the file
        raise ModelLoadError(f"{source}: tensors not assigned: {left[:5]}, unexpected: {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.requires_grad_(False)
    model.setup_rope(config.max_position_embeddings)
    return model.to(device).eval()


def install_quantized(model: CausalLM, state_dict: Weights, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Swap in quantized layers for state_dict's QuantizedTensors (their biases go with them); returns the rest."""
    dense = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    for key, value in state_dict.items():
        if not isinstance(value, QuantizedTensor | FileRows):
            continue
        path = key.removesuffix(".weight")
        parent_name, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, attr)
        layer: QuantLinear | QuantEmbedding | FileEmbedding
        if isinstance(value, FileRows):
            if not isinstance(old, torch.nn.Embedding):
                raise ModelLoadError(f"{key}: only an embedding is read from the file as it is")
            layer = FileEmbedding(value, dtype)
        elif isinstance(old, torch.nn.Embedding):
            layer = QuantEmbedding(value, dtype)
        else:
            layer = QuantLinear(value, dense.pop(f"{path}.bias", None))
        setattr(parent, attr, layer)
    return dense


def _named_tensors(model: CausalLM, key: str) -> list[torch.Tensor]:
    module_name, _, attr = key.rpartition(".")
    t = getattr(model.get_submodule(module_name), attr, None)
    return [t] if isinstance(t, torch.Tensor) else []


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
        convert_gguf(gguf_file, tmp, weights=False)
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
