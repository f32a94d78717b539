"""``NativeDecode``: decode steps through every decoder layer in one native call (``ember._C``'s DecodeStack).

A step whose rows are all decodes (one query token each: plain decodes and verified drafts) is where a CPU spends
most of a request's time, and at batch 1 a fifth to a third of that went to the ~20 torch ops per layer around the
matmuls, each a dispatch and an allocation. The native stack runs the same kernels in the same order over the
model's own tensors, so its hidden states and logits are bit-identical to ``CausalLM.forward``'s and ``logits``'
(tests/runtimes/text/test_decode_stack.py): each projection takes the streaming kernel or, from its
``product_from_rows``, the matrix product, as the layer does. A quantized vocabulary projection runs in the same
call; the embedding lookup before it stays in torch.

It covers models whose every decoder projection is quantized (``QuantLinear``, what a GGUF loads as), in float32
or bfloat16 on the CPU, with the extension built; anything else, and steps with prefill rows or with rows from
which the model's projections take their dense path, run the torch model as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ember.runtimes.text import kernels
from ember.runtimes.text.attention import AttentionBatch
from ember.runtimes.text.model import CausalLM, DecoderLayer, RMSNorm
from ember.runtimes.text.quant.layers import QuantLinear

# DecodeStack's parts, in its numbering: the attention's input and output projections, the MLP's.
_ATTN_IN, _ATTN_OUT, _MLP_IN, _MLP_OUT = 0, 1, 2, 3


def _projections(layer: DecoderLayer) -> dict[int, list[nn.Module]]:
    attn, mlp = layer.self_attn, layer.mlp
    attn_in = [attn.qkv_proj] if attn.qkv_proj is not None else [attn.q_proj, attn.k_proj, attn.v_proj]
    mlp_in = [mlp.gate_up_proj] if mlp.gate_up_proj is not None else [mlp.gate_proj, mlp.up_proj]
    return {_ATTN_IN: attn_in, _ATTN_OUT: [attn.o_proj], _MLP_IN: mlp_in, _MLP_OUT: [mlp.down_proj]}


class NativeDecode:
    """A model's decoder layers as one native DecodeStack, for the steps it covers (``covers``)."""

    def __init__(self, model: CausalLM, stack: Any, max_rows: int, *, has_head: bool) -> None:
        self.model = model
        self.stack = stack
        # Whether the vocabulary projection runs natively too (a quantized lm_head).
        self.has_head = has_head
        # Steps with this many rows or more take the torch model: there some projection takes its dense path.
        self.max_rows = max_rows

    @classmethod
    def build(cls, model: CausalLM, dtype: torch.dtype) -> NativeDecode | None:
        """The stack over ``model``'s tensors, or None where it does not apply (see the module's docstring)."""
        if not kernels.has_decode_stack() or dtype not in (torch.float32, torch.bfloat16):
            return None
        config = model.config
        layers = [layer for layer in model.model.layers if isinstance(layer, DecoderLayer)]
        norms: list[RMSNorm] = [model.model.norm]
        for layer in layers:
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
        if any(n.weight.dtype != dtype or n.weight.device.type != "cpu" or n.eps != norms[0].eps for n in norms):
            return None
        parts = [_projections(layer) for layer in layers]
        projections = [p for layer_parts in parts for group in layer_parts.values() for p in group]
        if not all(isinstance(p, QuantLinear) and p.qweight.device.type == "cpu" for p in projections):
            return None
        stack = torch.classes.ember.DecodeStack(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            config.intermediate_size,
            float(norms[0].eps),
        )
        for layer, layer_parts in zip(layers, parts, strict=True):
            stack.add_layer(layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach())
            for part, group in layer_parts.items():
                for p in group:
                    assert isinstance(p, QuantLinear)
                    w = p.quantized()
                    stack.add_projection(
                        part,
                        w.q,
                        w.scales,
                        w.mins,
                        w.super_scales,
                        w.super_mins,
                        p.bias,
                        w.bits,
                        w.group_size,
                        p.product_from_rows,
                    )
        head = model.lm_head
        if isinstance(head, QuantLinear) and head.qweight.device.type == "cpu":
            w = head.quantized()
            stack.set_head(
                w.q,
                w.scales,
                w.mins,
                w.super_scales,
                w.super_mins,
                head.bias,
                w.bits,
                w.group_size,
                head.product_from_rows,
            )
        stack.finish()
        max_rows = min(p.dense_from_rows for p in projections if isinstance(p, QuantLinear))
        return cls(model, stack, max_rows, has_head=isinstance(head, QuantLinear))

    def covers(self, batch: AttentionBatch, rows: int) -> bool:
        """Whether a step of ``rows`` rows (padding included) laid out as ``batch`` runs here."""
        return (
            batch.num_decodes == batch.num_tokens == rows
            and not batch.prefills
            and rows < self.max_rows
            and batch.block_table is not None
            and batch.context_lens is not None
        )

    def __call__(
        self, ids: Tensor, positions: Tensor, batch: AttentionBatch, *, logits: bool
    ) -> tuple[Tensor, Tensor | None]:
        """(final-normed hidden states [N, D], float32 logits [N, V] or None) for the decode rows ids [N] at positions
        [N], as ``CausalLM.forward`` and ``CausalLM.logits``; logits only when asked for and the head is native."""
        assert batch.block_table is not None and batch.context_lens is not None
        model = self.model
        with_logits = logits and self.has_head
        x = model.model.embed_tokens(ids)  # [N, D]
        hidden, out = self.stack.run(
            x.contiguous(),
            model.model.norm.weight.detach(),
            positions,
            batch.slots,
            batch.cache.k,
            batch.cache.v,
            batch.block_table,
            batch.context_lens,
            model.rope_cos,
            model.rope_sin,
            with_logits,
        )
        return hidden, out if with_logits else None
