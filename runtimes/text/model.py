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

from ember.runtimes.text import kernels
from ember.runtimes.text.attention import AttentionBatch, attend, causal
from ember.runtimes.text.config import ModelConfig
from ember.runtimes.text.quant.formats import concat_rows
from ember.runtimes.text.quant.layers import QuantEmbedding, QuantLinear


def _onednn_linear_works() -> bool:
    """Whether oneDNN's fp32 linear (an internal op Inductor uses) exists and runs in this torch build."""
    try:
        x, w = torch.ones(5, 8), torch.ones(3, 8)
        return bool(torch.equal(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), x @ w.t()))
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and _onednn_linear_works()


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) with a choice of float32 CPU kernels by row count.

    Three ways compute the same product, with only the summation order differing (~1e-6 relative):
    - F.linear (MKL's sgemm);
    - (W @ x^T)^T for a few rows, which made MKL pick a kernel 2-2.5x faster than F.linear on the 2-core AMD EPYC
      this was first measured on (MKL does not use its best kernels on AMD; a single row is computed twice, since
      one row falls back to a slow gemv), and 2x slower than F.linear on an Intel Xeon;
    - oneDNN's fp32 linear for more rows, 1.5-2.5x faster than either on that AMD machine.
    Which is fastest depends on the CPU, so ``choose_linear_paths`` times them at load and sets ``few_rows`` and
    ``onednn_from`` on every layer; the defaults are F.linear everywhere.
    """

    # Rows up to which the (W @ x^T)^T path runs (0: never); rows from which oneDNN runs (0: never).
    few_rows = 0
    onednn_from = 0

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            # Measured for float32 only; bfloat16 F.linear already goes to oneDNN.
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])  # [M, K]
        m = rows.shape[0]
        if m <= self.few_rows:
            if m == 1:
                rows = torch.cat((rows, rows))  # [2, K]
            out = torch.mm(self.weight, rows.t()).t()[:m].contiguous()  # [M, N]
            if self.bias is not None:
                out += self.bias
        elif self.onednn_from and m >= self.onednn_from:
            out = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")  # [M, N]
        else:
            out = F.linear(rows, self.weight, self.bias)
        return out.view(*x.shape[:-1], out.shape[-1])


def choose_linear_paths(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Time the float32 Linear paths on the model's largest float32 Linear, set the fastest on every Linear, and
    say what was chosen (one line each); nothing to do for other dtypes or a model with no float32 Linear."""
    layers = [m for m in model.modules() if isinstance(m, Linear) and m.weight.device.type == "cpu"]
    if dtype != torch.float32 or not layers:
        return []
    probe = max(layers, key=lambda m: m.weight.numel())
    few = onednn = 0
    lines = []
    with torch.inference_mode():
        for rows in (1, 2, 4):
            x = torch.randn(rows, probe.in_features)
            probe.few_rows = 0
            plain = kernels.time_call(lambda x=x: probe(x))
            probe.few_rows = rows
            transposed = kernels.time_call(lambda x=x: probe(x))
            if transposed < 0.9 * plain:
                few = rows
            lines.append(
                f"float32 linear, {rows} row(s): F.linear {plain * 1e6:.0f} us, (W x^T)^T {transposed * 1e6:.0f} us"
            )
        if _ONEDNN_LINEAR:
            probe.few_rows = 0
            for rows in (8, 16, 64, 256):
                x = torch.randn(rows, probe.in_features)
                plain = kernels.time_call(lambda x=x: F.linear(x, probe.weight, probe.bias))
                fused = kernels.time_call(
                    lambda x=x: torch.ops.mkldnn._linear_pointwise(x, probe.weight, probe.bias, "none", [], "")
                )
                if fused < 0.9 * plain:
                    onednn = rows
                    break
    for layer in layers:
        layer.few_rows, layer.onednn_from = few, onednn
    lines.append(
        f"float32 linear: (W x^T)^T up to {few} row(s), oneDNN from {onednn or 'never'} rows, F.linear otherwise"
    )
    return lines


def _joined(parts: list[nn.Module]) -> nn.Module | None:
    """One layer computing ``parts`` side by side (outputs concatenated), or None when they cannot be joined."""
    if all(type(p) is Linear for p in parts):
        linears = [p for p in parts if isinstance(p, Linear)]
        if len({(p.weight.dtype, p.weight.device, p.bias is None) for p in linears}) != 1:
            return None
        weight = torch.cat([p.weight for p in linears])
        joined = Linear(weight.shape[1], weight.shape[0], bias=linears[0].bias is not None, device="meta")
        joined.weight = nn.Parameter(weight, requires_grad=False)
        if linears[0].bias is not None:
            joined.bias = nn.Parameter(torch.cat([p.bias for p in linears if p.bias is not None]), requires_grad=False)
        joined.few_rows, joined.onednn_from = linears[0].few_rows, linears[0].onednn_from
        return joined
    if all(isinstance(p, QuantLinear) for p in parts):
        quant = [p for p in parts if isinstance(p, QuantLinear)]
        weights = [p.quantized() for p in quant]
        if any(w.layout() != weights[0].layout() for w in weights):
            return None  # e.g. Q4_K_M's v projection in Q6_K beside q and k in Q4_K
        bias = None
        if any(p.bias is not None for p in quant):
            bias = torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features) for p in quant])
        return QuantLinear(concat_rows(weights), bias)
    return None


def fuse_projections(model: nn.Module) -> int:
    """Join each attention's q/k/v projections and each MLP's gate/up ones where their weights share a format:
    one call each instead of three and two, which at batch 1 is a fifth of the per-layer overhead. Returns how many
    layers were joined."""
    joined = 0
    for module in model.modules():
        if isinstance(module, Attention) and module.qkv_proj is None:
            fused = _joined([module.q_proj, module.k_proj, module.v_proj])
            if fused is not None:
                module.qkv_proj = fused
                del module.q_proj, module.k_proj, module.v_proj
                joined += 1
        elif isinstance(module, MLP) and module.gate_up_proj is None:
            fused = _joined([module.gate_proj, module.up_proj])
            if fused is not None:
                module.gate_up_proj = fused
                del module.gate_proj, module.up_proj
                joined += 1
    return joined


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if kernels.layer_ops_cover(x):
            return kernels.rms_norm(x, self.weight, self.eps)
        return self.forward_native(x)

    def forward_native(self, x: Tensor) -> Tensor:
        # The variance is taken in float32 whatever the model dtype, as transformers does.
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def add(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """(norm(x + residual), x + residual): the residual add and the next sublayer's norm in one; x and residual
        may be overwritten."""
        if kernels.layer_ops_cover(x) and x.is_contiguous() and residual.is_contiguous():
            kernels.add_rms_norm(x, residual, self.weight, self.eps)
            return x, residual
        residual = x + residual
        return self.forward_native(residual), residual


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


class Rope:
    """A forward's rotary inputs: the model's tables and the tokens' positions. The native op reads the tables at
    the positions itself; the torch reference gathers cos/sin rows [N, 1, hd] once per forward, on first use."""

    def __init__(self, cos_table: Tensor, sin_table: Tensor, positions: Tensor) -> None:
        self.cos_table, self.sin_table, self.positions = cos_table, sin_table, positions
        self._gathered: tuple[Tensor, Tensor] | None = None

    def apply(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q [N, H, hd] and k [N, KV, hd] rotated (in place where the native op runs)."""
        if kernels.layer_ops_cover(q) and q.stride(1) == q.shape[2] and k.stride(1) == k.shape[2]:
            kernels.rotary(q, k, self.cos_table, self.sin_table, self.positions)
            return q, k
        if self._gathered is None:
            self._gathered = (self.cos_table[self.positions].unsqueeze(1), self.sin_table[self.positions].unsqueeze(1))
        cos, sin = self._gathered
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def apply_and_store(self, q: Tensor, k: Tensor, v: Tensor, layer: int, batch: AttentionBatch) -> bool:
        """Rotate q and k in place and store the step's k and v in ``layer``'s cache at ``batch.slots``, in one
        native call (attention's cache write, which ``attend`` then skips); False, with nothing done, where that
        call does not run for these tensors."""
        views = (q.stride(1), k.stride(1), v.stride(1), v.stride(2)) == (q.shape[2], k.shape[2], v.shape[2], 1)
        if not (views and kernels.rotary_cache_covers(q)):
            return False
        cache = batch.cache
        kernels.rotary_cache(
            q, k, v, self.cos_table, self.sin_table, self.positions, cache.k[layer], cache.v[layer], batch.slots
        )
        return True


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
        # q, k and v in one projection, when fuse_projections could join them (one call instead of three).
        self.qkv_proj: nn.Module | None = None

    def forward(self, x: Tensor, rope: Rope, batch: AttentionBatch | None) -> Tensor:
        # x: [N, D], the step's tokens of every sequence, flattened
        n, hd = x.shape[0], self.head_dim
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split((self.n_heads * hd, self.n_kv_heads * hd, self.n_kv_heads * hd), -1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(n, self.n_heads, hd)  # [N, H, hd]
        k = k.view(n, self.n_kv_heads, hd)  # [N, KV, hd]
        v = v.view(n, self.n_kv_heads, hd)  # [N, KV, hd]
        if batch is not None and rope.apply_and_store(q, k, v, self.layer_idx, batch):
            out = attend(self.layer_idx, q, k, v, batch, stored=True)  # [N, H, hd]
        else:
            q, k = rope.apply(q, k)
            # No batch: the N tokens are one whole sequence from position 0, and nothing is cached.
            out = causal(q, k, v) if batch is None else attend(self.layer_idx, q, k, v, batch)
        return self.o_proj(out.reshape(n, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear(hidden, inner, bias=config.mlp_bias)
        self.up_proj = Linear(hidden, inner, bias=config.mlp_bias)
        self.down_proj = Linear(inner, hidden, bias=config.mlp_bias)
        # gate and up in one projection, when fuse_projections could join them.
        self.gate_up_proj: nn.Module | None = None

    def forward(self, x: Tensor) -> Tensor:
        # SwiGLU: x: [N, D] -> [N, I] -> [N, D]
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate_up = self.gate_up_proj(x)  # [N, 2I]
        if kernels.layer_ops_cover(gate_up) and gate_up.is_contiguous():
            return self.down_proj(kernels.silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: Tensor, residual: Tensor | None, rope: Rope, batch: AttentionBatch | None
    ) -> tuple[Tensor, Tensor]:
        """(this layer's MLP output, the residual stream before it): the caller adds the two, or the next layer
        does it fused with its first norm (x + attn(norm(x)), then + mlp(norm(.)), as transformers computes)."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add(x, residual)
        h = self.self_attn(h, rope, batch)
        h, residual = self.post_attention_layernorm.add(h, residual)
        return self.mlp(h), residual


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
        self.lm_head: Linear | QuantLinear = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.tie_weights()
        # Rotary tables, filled by setup_rope; not part of the state dict (HF keeps none either).
        self.rope_cos: Tensor
        self.rope_sin: Tensor
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)

    def tie_weights(self) -> None:
        """Make lm_head share the embedding matrix (tied checkpoints store only the embedding)."""
        embed = self.model.embed_tokens
        if isinstance(embed, QuantEmbedding):
            # The same quantized tensors, read as a linear layer.
            if not (isinstance(self.lm_head, QuantLinear) and self.lm_head.qweight is embed.qweight):
                self.lm_head = QuantLinear(embed.quantized())
        elif isinstance(self.lm_head, Linear):
            self.lm_head.weight = embed.weight

    @property
    def rope_positions(self) -> int:
        """How many positions the rotary tables cover."""
        return self.rope_cos.shape[0]

    def setup_rope(self, max_positions: int) -> None:
        """Precompute cos/sin [max_positions, hd] once, in the model dtype, on the model device."""
        weight = self.model.norm.weight  # float in the model dtype whether the matrices are quantized or not
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
        rope = Rope(self.rope_cos, self.rope_sin, positions)
        residual = None
        for layer in self.model.layers:
            x, residual = layer(x, residual, rope, batch)
        if residual is None:
            return self.model.norm(x)
        return self.model.norm.add(x, residual)[0]

    def logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits [..., V] in float32 for hidden: [..., D]."""
        return self.lm_head(hidden).float()
