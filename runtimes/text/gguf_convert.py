"""GGUF -> a Hugging Face-format folder (config.json, tokenizer files, and on request model.safetensors), and the
GGUF's weights read for a model (``read_weights``): kept quantized as the file stores them, or dequantized.

Two things llama.cpp's converter changed are undone here:

- Q and K rows of `llama` models are permuted: llama.cpp's rotary pairs dims (2i, 2i+1), Hugging
  Face's rotate_half pairs (i, i + hd/2), so the converter interleaved each head's two halves.
- The tokenizer is stored as `tokenizer.ggml.*` metadata; it is rebuilt as a `tokenizer.json`,
  with the pre-tokenizer that `tokenizer.ggml.pre` names (the regexes llama.cpp uses for it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from ember.config.progress import Progress, track
from ember.runtimes.text.config import ModelLoadError
from ember.runtimes.text.quant import gguf_blocks
from ember.runtimes.text.quant.file_rows import FileRows, own_mapping
from ember.runtimes.text.quant.formats import QuantizedTensor
from ember.runtimes.text.quant.quantize import quantizable, quantize
from ember.runtimes.text.tokenizer import bytes_to_unicode

# ModelSpec.quantization: "auto" keeps a GGUF's own quantized formats (float tensors stay float), "none" runs on
# float weights, "int8" / "int4" quantize every weight matrix at load.
QUANTIZATIONS = ("auto", "none", "int8", "int4")

# GGUF architecture -> (HF model_type, HF architectures entry).
ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}

# Per-layer tensor names, llama.cpp -> Hugging Face.
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# llama.cpp's token types (tokenizer.ggml.token_type).
CONTROL, USER_DEFINED = 3, 4

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> the splits llama.cpp applies in order (llama-vocab.cpp), each a regex.
# "smollm" and its relatives first cut every digit apart, then apply GPT-2's regex to each piece;
# that is what SmolLM2's own tokenizer.json does with `Digits(individual_digits=True)` + `ByteLevel`.
PRE_TOKENIZER_SPLITS: dict[str, tuple[str, ...]] = {
    "gpt2": (_GPT2_SPLIT,),
    "smollm": (r"\p{N}", _GPT2_SPLIT),
    "starcoder": (r"\p{N}", _GPT2_SPLIT),
    "refact": (r"\p{N}", _GPT2_SPLIT),
    "llama3": (_LLAMA3_SPLIT,),
    "llama-v3": (_LLAMA3_SPLIT,),
    "llama-bpe": (_LLAMA3_SPLIT,),
    "smaug-bpe": (_LLAMA3_SPLIT,),
    "qwen2": (_QWEN2_SPLIT,),
    "deepseek-r1-qwen": (_QWEN2_SPLIT,),
}


def convert_gguf(gguf_file: Path, out_dir: Path, *, weights: bool = True, dtype: torch.dtype = torch.float32) -> None:
    """Write gguf_file as a Hugging Face folder into out_dir (which must exist).

    weights=False writes everything but model.safetensors: what the loader keeps in its cache, since it reads the
    weights from the GGUF itself (``read_weights``). With weights, every tensor is dequantized to dtype (a folder
    that other engines, and HF transformers, load).
    """
    with Progress(f"converting {gguf_file.name}", 3, "steps (metadata, tokenizer, files)") as progress:
        _convert(gguf_file, out_dir, weights, dtype, progress)


def _convert(gguf_file: Path, out_dir: Path, weights: bool, dtype: torch.dtype, progress: Progress) -> None:
    reader = open_gguf(gguf_file)  # parses every key: seconds for a 150k-token vocabulary
    progress.advance()
    meta = _Metadata(reader, gguf_file)
    config = build_config(meta)
    names = {t.name for t in reader.tensors}
    config["tie_word_embeddings"] = "output.weight" not in names
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            factors = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
            config["rope_scaling"] = llama3_scaling_from_factors(factors, config, gguf_file)
    tokenizer, tokenizer_config, generation_config = build_tokenizer(meta)
    progress.advance()
    config["bos_token_id"] = generation_config.get("bos_token_id")
    config["eos_token_id"] = generation_config.get("eos_token_id")

    index = tensor_index(reader)
    if weights:
        tensors = read_weights(reader.tensors, config, gguf_file, quantization="none", dtype=dtype)
        dense = {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor)}
        save_file(dense, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (out_dir / "generation_config.json").write_text(json.dumps(generation_config, indent=2), encoding="utf-8")
    if index is not None:
        (out_dir / TENSOR_INDEX).write_text(json.dumps(index), encoding="utf-8")
    progress.advance()


# Where each tensor lies in the GGUF, kept beside the converted config: reading it skips GGUFReader's parse of the
# metadata, which for a 150k-token vocabulary takes longer than reading the weights.
TENSOR_INDEX = "gguf_tensors.json"
# Tensor types the index can map straight from the file; a file with any other is read with GGUFReader.
_PLAIN = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}


@dataclass
class GGUFTensor:
    """What read_weights needs of a tensor (GGUFReader's ReaderTensor has the same attributes)."""

    name: str
    tensor_type: GGMLQuantizationType
    shape: list[int]  # GGUF order: innermost dimension first
    data: np.ndarray  # quantized: uint8 [rows, bytes per row]; F32/F16: the values, outermost dimension first


def tensor_index(reader: GGUFReader) -> list[dict[str, Any]] | None:
    """Each tensor's name, type, shape, byte offset and size in the file; None if a type needs GGUFReader."""
    entries = []
    for t in reader.tensors:
        if t.tensor_type not in _PLAIN and not gguf_blocks.supported(t.tensor_type):
            return None
        entries.append(
            {
                "name": t.name,
                "type": int(t.tensor_type),
                "shape": [int(d) for d in t.shape],
                "offset": int(t.data_offset),
                "bytes": int(t.n_bytes),
            }
        )
    return entries


def indexed_tensors(gguf_file: Path, index: list[dict[str, Any]]) -> list[GGUFTensor]:
    """The tensors of ``index`` as views of one read-only memory map of the file."""
    mapped = np.memmap(gguf_file, dtype=np.uint8, mode="r")
    out = []
    for entry in index:
        kind = GGMLQuantizationType(entry["type"])
        shape = entry["shape"]
        raw = mapped[entry["offset"] : entry["offset"] + entry["bytes"]]
        if kind in _PLAIN:
            data = raw.view(_PLAIN[kind]).reshape(tuple(reversed(shape)))
        else:
            data = raw.reshape(int(np.prod(shape[1:], dtype=np.int64)), -1)
        out.append(GGUFTensor(entry["name"], kind, shape, data))
    return out


def open_gguf(gguf_file: Path) -> GGUFReader:
    try:
        return GGUFReader(gguf_file)
    except Exception as exc:  # the reader raises ValueError / struct errors on a bad header
        raise ModelLoadError(f"{gguf_file} is not a readable GGUF file: {exc}") from exc


class _Metadata:
    """Typed access to a GGUF's key/value metadata, with errors that name the file and key."""

    def __init__(self, reader: GGUFReader, source: Path) -> None:
        self.fields = reader.fields
        self.source = source
        self.arch = str(self.get("general.architecture"))

    def get(self, key: str, default: Any = ...) -> Any:
        field = self.fields.get(key)
        if field is None:
            if default is ...:
                raise ModelLoadError(f"{self.source}: GGUF metadata lacks {key!r}")
            return default
        return field.contents()

    def arch_get(self, key: str, default: Any = ...) -> Any:
        """`<architecture>.<key>`, e.g. llama.block_count."""
        return self.get(f"{self.arch}.{key}", default)

    def string_array(self, key: str) -> list[str]:
        """A string array, read straight from the field's parts (49k tokens; contents() is slower)."""
        field = self.fields[key]
        assert field.types[:2] == [GGUFValueType.ARRAY, GGUFValueType.STRING]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def build_config(meta: _Metadata) -> dict[str, Any]:
    """config.json (as transformers writes it) from the `<arch>.*` metadata."""
    if meta.arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"{meta.source}: GGUF architecture {meta.arch!r} is not supported; supported: {sorted(ARCHITECTURES)}"
        )
    model_type, architecture = ARCHITECTURES[meta.arch]
    hidden = int(meta.arch_get("embedding_length"))
    heads = int(meta.arch_get("attention.head_count"))
    vocab_size = meta.arch_get("vocab_size", None)
    if vocab_size is None:
        vocab_size = len(meta.fields["tokenizer.ggml.tokens"].data)
    eps = meta.arch_get("attention.layer_norm_rms_epsilon")
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(meta.arch_get("feed_forward_length")),
        "num_hidden_layers": int(meta.arch_get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.arch_get("attention.head_count_kv", heads)),
        "head_dim": int(meta.arch_get("attention.key_length", hidden // heads)),
        "hidden_act": "silu",
        "max_position_embeddings": int(meta.arch_get("context_length")),
        # Stored as float32: its shortest float32 spelling gives back the original value (1e-05, not 9.99e-06).
        "rms_norm_eps": float(str(np.float32(eps))),
        "rope_theta": float(meta.arch_get("rope.freq_base", 10000.0)),
        "vocab_size": int(vocab_size),
        "torch_dtype": "float32",
    }
    scaling = meta.arch_get("rope.scaling.type", None)
    if scaling == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(meta.arch_get("rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise ModelLoadError(f"{meta.source}: {meta.arch}.rope.scaling.type={scaling!r} is not supported")
    return config


def read_weights(
    tensors: Iterable[Any], config: dict[str, Any], source: Path, *, quantization: str, dtype: torch.dtype
) -> dict[str, torch.Tensor | QuantizedTensor | FileRows]:
    """Every weight under its Hugging Face name, Q/K rows of `llama` models put back in HF's rotary order.

    quantization "auto": tensors of a format the kernels read (``gguf_blocks``) become QuantizedTensors holding the
    file's own integers and scales (an input embedding that is not tied to the output: ``FileRows``, left in the
    memory-mapped file); the rest (float tensors, other formats) are dequantized to dtype. "none":
    everything dequantized to dtype. "int8" / "int4": weight matrices quantized again to that, the rest in dtype.
    """
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"quantization={quantization!r}: one of {', '.join(QUANTIZATIONS)}")
    permute = config["model_type"] == "llama"
    out: dict[str, torch.Tensor | QuantizedTensor | FileRows] = {}
    tensors = list(tensors)  # GGUFReader's ReaderTensors, or GGUFTensors from the index
    for tensor in track(tensors, f"loading {source.name}", len(tensors), "tensors"):
        name = tensor.name
        if name == "rope_freqs.weight":
            continue  # read into config.json's rope_scaling by convert_gguf
        hf_name = hf_tensor_name(name, source)
        order = None
        if permute and (".attn_q." in name or ".attn_k." in name):
            heads = config["num_attention_heads"] if ".attn_q." in name else config["num_key_value_heads"]
            rows = int(tensor.shape[-1]) if len(tensor.shape) > 1 else int(tensor.shape[0])
            order = unpermute_rotary(np.arange(rows), heads)
        kind = tensor.tensor_type
        if quantization == "auto" and len(tensor.shape) == 2 and gguf_blocks.supported(kind):
            n, k = int(tensor.shape[1]), int(tensor.shape[0])  # GGUF lists dimensions innermost first
            if name == "token_embd.weight" and not config.get("tie_word_embeddings"):
                out[hf_name] = FileRows(kind, own_mapping(tensor.data), (n, k))  # a few rows a token, from the file
                continue
            qt = gguf_blocks.repack(kind, tensor.data, n, k)
            out[hf_name] = qt if order is None else qt.permute_rows(torch.from_numpy(order))
            continue
        array = np.asarray(dequantize(tensor.data, kind), dtype=np.float32)  # numpy shape: [out, in]
        if order is not None:
            array = array[order]
        # A copy: the reader hands out read-only memory maps, which torch must not wrap.
        dense = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
        if quantization in ("int8", "int4") and quantizable(dense):
            out[hf_name] = quantize(dense, 8 if quantization == "int8" else 4)
        else:
            out[hf_name] = dense.to(dtype)
    return out


def hf_tensor_name(gguf_name: str, source: Path) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[parts[0]]}.{parts[1]}"
    raise ModelLoadError(f"{source}: GGUF tensor {gguf_name!r} has no Hugging Face counterpart we know")


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's `permute`: within each head, rows (i, hd/2 + i) had been interleaved as (2i, 2i+1).

    llama.cpp does `w.reshape(n_heads, 2, hd/2, ...).swapaxes(1, 2)`; this reshapes the other way round.
    """
    # w: [n_heads * hd, ...] (a weight [out, in] or a bias [out])
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_scaling_from_factors(factors: torch.Tensor, config: dict[str, Any], source: Path) -> dict[str, Any]:
    """Llama 3.1+ GGUFs store llama3 rope scaling as per-frequency divisors (`rope_freqs`), not parameters.

    Recover the parameters: `factor` is the largest divisor, and the band edges are the standard
    ones (1, 4, 8192) every released Llama 3.x uses; refuse a file they do not reproduce.
    """
    factor, low, high, old_len = float(factors.max()), 1.0, 4.0, 8192
    dim, theta = config["head_dim"], config["rope_theta"]
    expected = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < old_len / high:
            expected.append(1.0)
        elif wavelen > old_len / low:
            expected.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            expected.append(1 / ((1 - smooth) / factor + smooth))
    if factors.shape != (dim // 2,) or not torch.allclose(factors, torch.tensor(expected), rtol=1e-4):
        raise ModelLoadError(f"{source}: rope_freqs does not match llama3 rope scaling; this GGUF is not supported")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": old_len,
    }


def build_tokenizer(meta: _Metadata) -> tuple[Tokenizer, dict[str, Any], dict[str, Any]]:
    """(tokenizer.json, tokenizer_config.json, generation_config.json) from `tokenizer.*` metadata."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelLoadError(
            f"{meta.source}: tokenizer.ggml.model={kind!r} is not supported; only byte-level BPE ('gpt2')"
        )
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre not in PRE_TOKENIZER_SPLITS:
        raise ModelLoadError(
            f"{meta.source}: tokenizer.ggml.pre={pre!r} is not supported; supported: {sorted(PRE_TOKENIZER_SPLITS)}"
        )
    tokens = meta.string_array("tokenizer.ggml.tokens")
    types = [int(t) for t in meta.get("tokenizer.ggml.token_type", [1] * len(tokens))]
    merges = meta.string_array("tokenizer.ggml.merges") if "tokenizer.ggml.merges" in meta.fields else []

    # A byte-level vocabulary is spelled in GPT-2's byte alphabet; respell any ordinary token that is
    # not (some converters store raw UTF-8), so BPE can reach it.
    alphabet = set(bytes_to_unicode().values())
    spelling = bytes_to_unicode()

    def respell(token: str) -> str:
        return token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))

    vocab: dict[str, int] = {}
    for index, (token, kind_id) in enumerate(zip(tokens, types, strict=True)):
        spelled = token if kind_id in (CONTROL, USER_DEFINED) else respell(token)
        vocab.setdefault(spelled, index)
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise ModelLoadError(f"{meta.source}: tokenizer.ggml.merges entry {merge!r} is not 'left right'")
        pairs.append((left, right))

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    splits = PRE_TOKENIZER_SPLITS[pre]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (<|im_end|>) are matched whole and skipped when decoding with skip_special_tokens;
    # user-defined ones (<think>) are matched whole but are text.
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types, strict=True) if k == CONTROL]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == USER_DEFINED
        ]
    )

    def token_of(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}", None)
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    bos_id = meta.get("tokenizer.ggml.bos_token_id", None)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    bos = token_of("bos_token_id")
    if add_bos and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, int(bos_id))]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    tokenizer_config: dict[str, Any] = {
        "add_bos_token": add_bos,
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "bos_token": bos,
        "eos_token": token_of("eos_token_id"),
        "unk_token": token_of("unknown_token_id"),
        "pad_token": token_of("padding_token_id"),
        "chat_template": meta.get("tokenizer.chat_template", None),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.arch_get("context_length")),
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    # End of generation: EOS, plus end-of-turn / end-of-message where the file names them (Llama 3).
    eos_ids = [
        int(meta.get(f"tokenizer.ggml.{key}"))
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if meta.get(f"tokenizer.ggml.{key}", None) is not None
    ]
    eos_ids = list(dict.fromkeys(eos_ids))
    generation_config: dict[str, Any] = {
        "bos_token_id": int(bos_id) if bos_id is not None else None,
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids or None,
    }
    pad_id = meta.get("tokenizer.ggml.padding_token_id", None)
    if pad_id is not None:
        generation_config["pad_token_id"] = int(pad_id)
    return tokenizer, tokenizer_config, generation_config
