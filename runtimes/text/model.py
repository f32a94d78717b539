"""Our torch decoder for the Llama / Qwen2 / Mistral family.

Parameter names equal Hugging Face's (`model.layers.N.self_attn.q_proj.weight`, `lm_head.weight`, ...)
so a checkpoint's state dict loads with `load_state_dict(strict=True)`. The numerics follow
transformers' reference (`modeling_llama.py`): RMSNorm in float32, rotary with the rotate_half layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ember.runtimes.text.attention import AttentionBatch, attend, causal
from ember.runtimes.text.config import ModelConfig


def _onednn_linear_works() -> bool:
    """Whether oneDNN's fp32 linear (an internal op Inductor uses) exists and runs in this torch build."""
    try:
        x, w = torch.ones(5, 8), torch.ones(3, 8)
        return bool(torch.equal(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), x @ w.t()))
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and _onednn_linear_works()
# Row counts up to this take the (W @ x^T)^T path; more rows go to oneDNN.
_FEW_ROWS = 4


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) that picks the fastest CPU kernel for the row count.

    F.linear goes to MKL's sgemm, which is slow for the shapes an LLM engine runs on the 2-core AMD
    EPYC we develop on (MKL does not use its best kernels on AMD). Measured on SmolLM2's weights:
    - 1-4 rows (decode): computing (W @ x^T)^T makes MKL pick a kernel 2-2.5x faster than F.linear;
      with one row it falls back to a slow gemv, so a single row is computed twice.
    - 5+ rows (batched decode, prefill): oneDNN's fp32 linear is 1.5-2.5x faster than either.
    Same math; only the summation order differs from F.linear (~1e-6 relative).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            # Measured for float32 only; bfloat16 F.linear already goes to oneDNN.
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])  # [M, K]
        m = rows.shape[0]
        if m > _FEW_ROWS and _ONEDNN_LINEAR:
            out = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")  # [M, N]
        else:
            if m == 1:
                rows = torch.cat((rows, rows))  # [2, K]
            out = torch.mm(self.weight, rows.t()).t()[:m].contiguous()  # [M, N]
            if self.bias is not None:
                out += self.bias
        return out.view(*x.shape[:-1], out.shape[-1])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # The variance is taken in float32 whatever the model dtype, as transformers does.
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_inv_freq(config: ModelConfig) -> Tensor:
    """Rotary inverse frequencies [head_dim / 2] in float32, with the config's scaling applied."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim (HF's rotary layout, not interleaved)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x: [N, H, hd] by cos/sin: [N, 1, hd]."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = Linear(hidden, self.n_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = Linear(hidden, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = Linear(hidden, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = Linear(self.n_heads * self.head_dim, hidden, bias=config.o_proj_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, batch: AttentionBatch | None) -> Tensor:
        # x: [N, D], the step's tokens of every sequence, flattened
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.n_heads, self.head_dim)  # [N, H, hd]
        k = self.k_proj(x).view(n, self.n_kv_heads, self.head_dim)  # [N, KV, hd]
        v = self.v_proj(x).view(n, self.n_kv_heads, self.head_dim)  # [N, KV, hd]
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        # No batch: the N tokens are one whole sequence from position 0, and nothing is cached.
        out = causal(q, k, v) if batch is None else attend(self.layer_idx, q, k, v, batch)  # [N, H, hd]
        return self.o_proj(out.reshape(n, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear(hidden, inner, bias=config.mlp_bias)
        self.up_proj = Linear(hidden, inner, bias=config.mlp_bias)
        self.down_proj = Linear(inner, hidden, bias=config.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        # SwiGLU: x: [N, D] -> [N, I] -> [N, D]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, batch: AttentionBatch | None) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, batch)
        return h + self.mlp(self.post_attention_layernorm(h))


class DecoderStack(nn.Module):
    """HF's `model.*`: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # NOTE: built with its weight given, so nn.Embedding skips its random init: the model is built on the meta
        # device (the loader assigns the checkpoint's tensors), and a normal_() there imports torch's Python
        # decompositions, 73 MiB of a worker's resident memory for nothing.
        weight = torch.empty(config.vocab_size, config.hidden_size)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """The equivalent of transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM` / `MistralForCausalLM`.

    Built to receive a checkpoint (``loader.build_model`` makes it on the meta device and assigns the tensors): its
    embedding starts uninitialized.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderStack(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.tie_weights()
        # Rotary tables, filled by setup_rope; not part of the state dict (HF keeps none either).
        self.rope_cos: Tensor
        self.rope_sin: Tensor
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)

    def tie_weights(self) -> None:
        """Make lm_head share the embedding matrix (tied checkpoints store only the embedding)."""
        self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def rope_positions(self) -> int:
        """How many positions the rotary tables cover."""
        return self.rope_cos.shape[0]

    def setup_rope(self, max_positions: int) -> None:
        """Precompute cos/sin [max_positions, hd] once, in the model dtype, on the model device."""
        weight = self.model.embed_tokens.weight
        inv_freq = rope_inv_freq(self.config)  # [hd/2], float32 on CPU
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # [P, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, hd]
        self.rope_cos = emb.cos().to(device=weight.device, dtype=weight.dtype)
        self.rope_sin = emb.sin().to(device=weight.device, dtype=weight.dtype)

    def forward(self, input_ids: Tensor, positions: Tensor, batch: AttentionBatch | None = None) -> Tensor:
        """Final-normed hidden states [N, D] for the flattened tokens input_ids: [N] at positions: [N].

        With batch=None the tokens are one whole causal sequence (no cache); call `logits` on the rows whose
        next-token distribution is needed.
        """
        assert self.rope_cos.numel(), "call setup_rope() before the first forward"
        x = self.model.embed_tokens(input_ids)  # [N, D]
        cos = self.rope_cos[positions].unsqueeze(1)  # [N, 1, hd]
        sin = self.rope_sin[positions].unsqueeze(1)
        for layer in self.model.layers:
            x = layer(x, cos, sin, batch)
        return self.model.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits [..., V] in float32 for hidden: [..., D]."""
        return self.lm_head(hidden).float()
