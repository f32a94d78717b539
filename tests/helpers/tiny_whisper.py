"""Tiny random-weight Whisper checkpoints in whisper's own format, and the same weights as a CTranslate2 model.bin.

``write_tiny_whisper`` is what ``whisper.load_model`` reads (``{"dims", "model_state_dict"}``); ``write_ct2``
writes CTranslate2's layout (see ember.runtimes.audio.ct2_convert) so the converter is tested on a file that our
own code did not produce by converting.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from whisper.model import ModelDimensions, Whisper

ENGLISH_VOCAB = 51864
MULTILINGUAL_VOCAB = 51865


def tiny_dims(multilingual: bool = False) -> ModelDimensions:
    # n_audio_ctx must stay 1500: whisper's 30 s window is 3000 mel frames, halved by the encoder's stride.
    return ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=32,
        n_audio_head=2,
        n_audio_layer=2,
        n_vocab=MULTILINGUAL_VOCAB if multilingual else ENGLISH_VOCAB,
        n_text_ctx=64,
        n_text_state=32,
        n_text_head=2,
        n_text_layer=2,
    )


def tiny_whisper(multilingual: bool = False, seed: int = 0) -> Whisper:
    torch.manual_seed(seed)
    model = Whisper(tiny_dims(multilingual))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name.split(".")[-2] and name.endswith("weight"):
                continue  # keep layer norms at 1
            p.normal_(0.0, 0.05)
    return model


def write_tiny_whisper(path: Path, multilingual: bool = False, seed: int = 0) -> Path:
    model = tiny_whisper(multilingual, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    return path


def _ct2_arrays(model: Whisper, dtype: str) -> dict[str, np.ndarray]:
    """CTranslate2's names and fused layouts for a whisper model's weights (its WhisperSpec)."""
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    d = model.dims
    out: dict[str, np.ndarray] = {}

    def lin(dst: str, src: str) -> None:
        out[f"{dst}/weight"] = sd[f"{src}.weight"]
        if f"{src}.bias" in sd:
            out[f"{dst}/bias"] = sd[f"{src}.bias"]

    def norm(dst: str, src: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst: str, src: str, names: list[str]) -> None:
        out[f"{dst}/weight"] = np.concatenate([sd[f"{src}.{n}.weight"] for n in names])
        zeros = np.zeros(sd[f"{src}.query.weight"].shape[0], np.float32)
        out[f"{dst}/bias"] = np.concatenate([sd.get(f"{src}.{n}.bias", zeros) for n in names])

    def block(dst: str, src: str, cross: bool) -> None:
        fused(f"{dst}/self_attention/linear_0", f"{src}.attn", ["query", "key", "value"])
        lin(f"{dst}/self_attention/linear_1", f"{src}.attn.out")
        norm(f"{dst}/self_attention/layer_norm", f"{src}.attn_ln")
        if cross:
            lin(f"{dst}/attention/linear_0", f"{src}.cross_attn.query")
            out[f"{dst}/attention/linear_1/weight"] = np.concatenate(
                [sd[f"{src}.cross_attn.key.weight"], sd[f"{src}.cross_attn.value.weight"]]
            )
            zeros = np.zeros_like(sd[f"{src}.cross_attn.value.bias"])
            out[f"{dst}/attention/linear_1/bias"] = np.concatenate([zeros, sd[f"{src}.cross_attn.value.bias"]])
            lin(f"{dst}/attention/linear_2", f"{src}.cross_attn.out")
            norm(f"{dst}/attention/layer_norm", f"{src}.cross_attn_ln")
        lin(f"{dst}/ffn/linear_0", f"{src}.mlp.0")
        lin(f"{dst}/ffn/linear_1", f"{src}.mlp.2")
        norm(f"{dst}/ffn/layer_norm", f"{src}.mlp_ln")

    lin("encoder/conv1", "encoder.conv1")
    lin("encoder/conv2", "encoder.conv2")
    out["encoder/position_encodings/encodings"] = sd["encoder.positional_embedding"]
    for i in range(d.n_audio_layer):
        block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    norm("encoder/layer_norm", "encoder.ln_post")
    out["decoder/embeddings/weight"] = sd["decoder.token_embedding.weight"]
    out["decoder/position_encodings/encodings"] = sd["decoder.positional_embedding"]
    for i in range(d.n_text_layer):
        block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    norm("decoder/layer_norm", "decoder.ln")
    if dtype == "float16":
        out = {k: v.astype(np.float16) if v.ndim >= 1 else v for k, v in out.items()}
    elif dtype == "int8":  # CTranslate2's per-row scales on 2-D weights: q = round(w * scale), scale = 127 / amax
        for k in [k for k in out if k.endswith("/weight") and out[k].ndim == 2 and "embeddings" not in k]:
            w = out[k]
            scale = 127.0 / np.maximum(np.abs(w).max(axis=1), 1e-8)
            out[k] = np.round(w * scale[:, None]).astype(np.int8)
            out[k + "_scale"] = scale.astype(np.float32)
    out["encoder/num_heads"] = np.array(d.n_audio_head, np.int16)
    out["decoder/num_heads"] = np.array(d.n_text_head, np.int16)
    out["decoder/scale_embeddings"] = np.array(0, np.int8)
    return out


_TYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def ct2_model_bin(model: Whisper, dtype: str = "float16") -> bytes:
    """CTranslate2's model.bin (binary version 6) of ``model``; the output projection is an alias."""
    arrays = _ct2_arrays(model, dtype)
    body = [struct.pack("<I", 6), _string("WhisperSpec"), struct.pack("<II", 3, len(arrays))]
    for name, arr in sorted(arrays.items()):
        body += [_string(name), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape)]
        raw = np.ascontiguousarray(arr).tobytes()
        body += [struct.pack("<BI", _TYPE_IDS[arr.dtype], len(raw)), raw]
    body += [struct.pack("<I", 1), _string("decoder/projection/weight"), _string("decoder/embeddings/weight")]
    return b"".join(body)


def write_ct2(folder: Path, model: Whisper, dtype: str = "float16", parts: int = 1) -> Path:
    """A CTranslate2 model folder (model.bin, or model.bin.part1..N split by bytes, plus config.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = ct2_model_bin(model, dtype)
    if parts == 1:
        (folder / "model.bin").write_bytes(data)
    else:
        size = -(-len(data) // parts)
        for i in range(parts):
            (folder / f"model.bin.part{i + 1}").write_bytes(data[i * size : (i + 1) * size])
    heads = [[model.dims.n_text_layer - 1, h] for h in range(model.dims.n_text_head)]
    (folder / "config.json").write_text(json.dumps({"alignment_heads": heads}))
    return folder
