"""CTranslate2 Whisper checkpoints (``model.bin`` + ``config.json``) as the ``whisper`` package's state dict.

``model.bin`` is a flat list of named arrays (CTranslate2's ``ModelSpec._serialize``)::

    u32 binary_version (6)   str spec_name ("WhisperSpec")   u32 revision   u32 n_variables
    n_variables x { str name   u8 rank   u32 shape[rank]   u8 dtype   u32 n_bytes   bytes data }
    u32 n_aliases            n_aliases x { str alias   str target }

    str   = u16 length (with the trailing NUL) + utf-8 bytes + NUL
    dtype = 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16

int8-quantized weights come with a ``<name>_scale`` array per output row: weight = int8 / scale.
CTranslate2 fuses attention projections: self-attention ``linear_0`` is [q; k; v] (k has a zero bias),
cross-attention ``linear_0`` is q and ``linear_1`` is [k; v]; ``linear_1`` / ``linear_2`` is the output.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from whisper.model import ModelDimensions

from ember.config.progress import track

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BFLOAT16 = 5
SUPPORTED_VERSIONS = (5, 6)


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this converter understands."""


def _read(f: BinaryIO, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise CT2FormatError("model.bin ends early")
    return struct.unpack("<" + fmt, raw)


def _read_string(f: BinaryIO) -> str:
    (n,) = _read(f, "H")
    raw = f.read(n)
    if len(raw) != n:
        raise CT2FormatError("model.bin ends early")
    return raw[:-1].decode("utf-8")


def read_model_bin(parts: Iterable[Path]) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, arrays by name) from a model.bin, given as one file or as the parts it was split into."""
    paths = list(parts)
    if len(paths) == 1:
        data = paths[0].read_bytes()
    else:
        data = b"".join(p.read_bytes() for p in paths)
    import io

    f = io.BytesIO(data)
    (version,) = _read(f, "I")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"model.bin binary version {version} is not one of {SUPPORTED_VERSIONS}")
    spec = _read_string(f)
    _read(f, "I")  # the spec's revision
    (count,) = _read(f, "I")
    arrays: dict[str, np.ndarray] = {}
    for _ in track(range(count), f"converting {paths[0].parent.name} (CTranslate2)", count, "arrays"):
        name = _read_string(f)
        (rank,) = _read(f, "B")
        shape = _read(f, "I" * rank) if rank else ()
        (dtype,) = _read(f, "B")
        (n_bytes,) = _read(f, "I")
        if dtype not in _DTYPES:
            raise CT2FormatError(f"variable {name!r} has unknown dtype id {dtype}")
        raw = f.read(n_bytes)
        if len(raw) != n_bytes:
            raise CT2FormatError(f"model.bin ends inside variable {name!r}")
        arr = np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(shape)
        if dtype == _BFLOAT16:  # numpy has no bfloat16: widen the upper half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        arrays[name] = arr
    (n_aliases,) = _read(f, "I")
    for _ in range(n_aliases):
        alias, target = _read_string(f), _read_string(f)
        arrays[alias] = arrays[target]
    return spec, arrays


def _weight(arrays: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """A float32 tensor, dequantized when CTranslate2 stored it as int8 with per-row scales."""
    arr = arrays[name]
    scale = arrays.get(name + "_scale")
    if arr.dtype == np.int8 and scale is not None:
        out = arr.astype(np.float32) / scale.astype(np.float32).reshape(-1, *([1] * (arr.ndim - 1)))
        return torch.from_numpy(out)
    return torch.from_numpy(arr.astype(np.float32))


def _count_layers(arrays: dict[str, np.ndarray], prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in arrays:
        n += 1
    return n


def dimensions(arrays: dict[str, np.ndarray]) -> ModelDimensions:
    """whisper's ModelDimensions, read off the arrays' shapes and the stored head counts."""
    conv1 = arrays["encoder/conv1/weight"]
    tokens = arrays["decoder/embeddings/weight"]
    return ModelDimensions(
        n_mels=int(conv1.shape[1]),
        n_audio_ctx=int(arrays["encoder/position_encodings/encodings"].shape[0]),
        n_audio_state=int(conv1.shape[0]),
        n_audio_head=int(arrays["encoder/num_heads"]),
        n_audio_layer=_count_layers(arrays, "encoder"),
        n_vocab=int(tokens.shape[0]),
        n_text_ctx=int(arrays["decoder/position_encodings/encodings"].shape[0]),
        n_text_state=int(tokens.shape[1]),
        n_text_head=int(arrays["decoder/num_heads"]),
        n_text_layer=_count_layers(arrays, "decoder"),
    )


def _linear(arrays: dict[str, np.ndarray], src: str, dst: str, sd: dict[str, torch.Tensor]) -> None:
    sd[f"{dst}.weight"] = _weight(arrays, f"{src}/weight")
    if f"{src}/bias" in arrays:
        sd[f"{dst}.bias"] = _weight(arrays, f"{src}/bias")


def _norm(arrays: dict[str, np.ndarray], src: str, dst: str, sd: dict[str, torch.Tensor]) -> None:
    sd[f"{dst}.weight"] = _weight(arrays, f"{src}/gamma")
    sd[f"{dst}.bias"] = _weight(arrays, f"{src}/beta")


def _split(arrays: dict[str, np.ndarray], src: str, names: list[str], dst: str, sd: dict[str, torch.Tensor]) -> None:
    """A fused projection [a; b; ...] as whisper's separate ones (whisper's key has no bias)."""
    weights = _weight(arrays, f"{src}/weight").chunk(len(names))
    biases = _weight(arrays, f"{src}/bias").chunk(len(names))
    for name, w, b in zip(names, weights, biases, strict=True):
        sd[f"{dst}.{name}.weight"] = w.contiguous()
        if name != "key":
            sd[f"{dst}.{name}.bias"] = b.contiguous()


def _block(arrays: dict[str, np.ndarray], src: str, dst: str, sd: dict[str, torch.Tensor], cross: bool) -> None:
    _split(arrays, f"{src}/self_attention/linear_0", ["query", "key", "value"], f"{dst}.attn", sd)
    _linear(arrays, f"{src}/self_attention/linear_1", f"{dst}.attn.out", sd)
    _norm(arrays, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", sd)
    if cross:
        _linear(arrays, f"{src}/attention/linear_0", f"{dst}.cross_attn.query", sd)
        _split(arrays, f"{src}/attention/linear_1", ["key", "value"], f"{dst}.cross_attn", sd)
        _linear(arrays, f"{src}/attention/linear_2", f"{dst}.cross_attn.out", sd)
        _norm(arrays, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln", sd)
    _linear(arrays, f"{src}/ffn/linear_0", f"{dst}.mlp.0", sd)
    _linear(arrays, f"{src}/ffn/linear_1", f"{dst}.mlp.2", sd)
    _norm(arrays, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln", sd)


def to_state_dict(arrays: dict[str, np.ndarray]) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    """whisper's (dims, state_dict) from CTranslate2's arrays; raises CT2FormatError on a missing one."""
    try:
        dims = dimensions(arrays)
        sd: dict[str, torch.Tensor] = {}
        _linear(arrays, "encoder/conv1", "encoder.conv1", sd)
        _linear(arrays, "encoder/conv2", "encoder.conv2", sd)
        sd["encoder.positional_embedding"] = _weight(arrays, "encoder/position_encodings/encodings")
        for i in range(dims.n_audio_layer):
            _block(arrays, f"encoder/layer_{i}", f"encoder.blocks.{i}", sd, cross=False)
        _norm(arrays, "encoder/layer_norm", "encoder.ln_post", sd)
        sd["decoder.token_embedding.weight"] = _weight(arrays, "decoder/embeddings/weight")
        sd["decoder.positional_embedding"] = _weight(arrays, "decoder/position_encodings/encodings")
        for i in range(dims.n_text_layer):
            _block(arrays, f"decoder/layer_{i}", f"decoder.blocks.{i}", sd, cross=True)
        _norm(arrays, "decoder/layer_norm", "decoder.ln", sd)
    except KeyError as e:
        raise CT2FormatError(f"model.bin has no variable {e.args[0]!r}; not a CTranslate2 Whisper model") from None
    return dims, sd


def alignment_heads(config: dict[str, object], dims: ModelDimensions) -> torch.Tensor | None:
    """The [layers, heads] mask of cross-attention heads that follow the audio (for word timestamps)."""
    pairs = config.get("alignment_heads")
    if not isinstance(pairs, list) or not pairs:
        return None
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in pairs:
        mask[int(layer), int(head)] = True
    return mask


def convert(parts: Iterable[Path], config: dict[str, object]) -> dict[str, object]:
    """A checkpoint in whisper's own format (``{"dims", "model_state_dict"}``, plus ``alignment_heads``)."""
    spec, arrays = read_model_bin(parts)
    if spec != "WhisperSpec":
        raise CT2FormatError(f"model.bin holds a {spec!r}, not a WhisperSpec")
    dims, sd = to_state_dict(arrays)
    checkpoint: dict[str, object] = {"dims": asdict(dims), "model_state_dict": sd}
    heads = alignment_heads(config, dims)
    if heads is not None:
        checkpoint["alignment_heads"] = heads
    return checkpoint
