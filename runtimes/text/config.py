"""The model's shape, read from a Hugging Face `config.json` (Llama / Qwen2 / Mistral family)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ModelLoadError(Exception):
    """A model folder or file cannot be loaded; the message names the file or value at fault."""


# model_type -> the architectures entries we accept for it. All share one decoder: pre-norm RMSNorm,
# rotary attention with grouped KV heads, SwiGLU MLP.
SUPPORTED_MODEL_TYPES: dict[str, frozenset[str]] = {
    "llama": frozenset({"LlamaForCausalLM"}),
    "mistral": frozenset({"MistralForCausalLM"}),
    "qwen2": frozenset({"Qwen2ForCausalLM"}),
}


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched for long context (`rope_scaling` / `rope_parameters`)."""

    # "linear" divides every frequency by `factor`; "llama3" divides only the low frequencies and
    # interpolates the band between `low_freq_factor` and `high_freq_factor` (Llama 3.1 / 3.2).
    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # The context length the model was pre-trained at, before scaling (llama3 only).
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one decoder-only checkpoint, named as in Hugging Face `config.json`."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    # Grouped-query attention: each KV head serves num_attention_heads // num_key_value_heads query heads.
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    # Tied checkpoints store no `lm_head.weight`: the output projection is the embedding matrix.
    tie_word_embeddings: bool = False
    # Bias on q/k/v (Qwen2 always; Llama when `attention_bias`), and on o_proj (Llama's `attention_bias` only).
    qkv_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    # Mistral-style local attention window; None means full attention.
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def context_length(self) -> int:
        """Longest sequence this model attends over exactly (a sliding window caps it)."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        """Read `config.json`."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(f"{path} does not exist") from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
        """Build from the parsed `config.json`; unsupported models raise ModelLoadError."""
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(
                f"{source}: model_type={model_type!r} is not supported; supported: {sorted(SUPPORTED_MODEL_TYPES)}"
            )
        architectures = raw.get("architectures") or []
        unknown = [a for a in architectures if a not in SUPPORTED_MODEL_TYPES[model_type]]
        if unknown:
            raise ModelLoadError(
                f"{source}: architectures={architectures!r} is not supported for model_type={model_type!r}; "
                f"expected {sorted(SUPPORTED_MODEL_TYPES[model_type])}"
            )
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ModelLoadError(f"{source}: hidden_act={act!r} is not supported; only 'silu' (SwiGLU)")
        if model_type == "qwen2" and raw.get("use_sliding_window"):
            raise ModelLoadError(f"{source}: use_sliding_window=true is not supported for qwen2")

        def need(key: str) -> Any:
            if key not in raw or raw[key] is None:
                raise ModelLoadError(f"{source}: missing required key {key!r}")
            return raw[key]

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ModelLoadError(
                f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        head_dim = raw.get("head_dim") or hidden // heads
        # transformers 5 writes `rope_parameters` (theta + scaling in one dict); older files use
        # top-level `rope_theta` and `rope_scaling`.
        rope_params = raw.get("rope_parameters") or {}
        rope_theta = float(rope_params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling_raw = raw.get("rope_scaling") or rope_params
        sliding = raw.get("sliding_window") if model_type == "mistral" else None
        attention_bias = bool(raw.get("attention_bias", False))
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=int(head_dim),
            vocab_size=int(need("vocab_size")),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=_parse_rope_scaling(scaling_raw, source),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_proj_bias=model_type != "qwen2" and attention_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            sliding_window=int(sliding) if sliding else None,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=_as_id_tuple(raw.get("eos_token_id")),
        )


def _parse_rope_scaling(raw: dict[str, Any] | None, source: str) -> RopeScaling | None:
    """Parse `rope_scaling` (or transformers 5 `rope_parameters`); None means plain rotary."""
    if not raw:
        return None
    rope_type = raw.get("rope_type", raw.get("type"))
    if rope_type in (None, "default"):
        return None
    if rope_type == "linear":
        return RopeScaling(rope_type="linear", factor=float(raw["factor"]))
    if rope_type == "llama3":
        try:
            return RopeScaling(
                rope_type="llama3",
                factor=float(raw["factor"]),
                low_freq_factor=float(raw["low_freq_factor"]),
                high_freq_factor=float(raw["high_freq_factor"]),
                original_max_position_embeddings=int(raw["original_max_position_embeddings"]),
            )
        except KeyError as exc:
            raise ModelLoadError(f"{source}: llama3 rope_scaling is missing {exc.args[0]!r}") from None
    raise ModelLoadError(
        f"{source}: rope_scaling type {rope_type!r} is not supported; supported: default, linear, llama3"
    )


def _as_id_tuple(value: Any) -> tuple[int, ...]:
    """An `eos_token_id` that may be absent, one int, or a list."""
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)
