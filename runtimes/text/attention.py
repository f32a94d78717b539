"""Attention over the paged KV cache, for one step's flattened batch of decodes and prefill chunks.

The cache holds, per layer, K and V as ``[num_blocks, block_size, kv_heads, head_dim]``: a token's K/V live at
flat slot ``block * block_size + offset``, so writing a step's new K/V is one ``index_copy_`` per tensor.

How each kind of row attends (measured on SmolLM2-135M shapes, 2 CPU cores; see the note in ``paged_decode``)::

    decode rows (one token)      one batched read of every row's blocks, then one SDPA over the padded batch,
                                 or the ``ember._C`` kernel that reads the blocks in place when it is built
    prefill, from position 0     SDPA with a causal mask over the chunk's own fresh K/V: the cache is not read
    prefill, after a prefix      the prefix's blocks are gathered once per layer, then SDPA with the chunk's
                                 queries placed at the end of the context (cached prefix hits, later chunks)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ember.runtimes.text import kernels


class PagedKVCache:
    """K and V for every layer: ``[layers, num_blocks, block_size, kv_heads, head_dim]`` each.

    Allocated empty: pages of memory are touched (and count toward the process's RSS) only as blocks are first
    written, so memory follows use up to the configured budget. Block 0, the null block, is zeroed: block tables
    are padded with it; the runner zeroes a block when a sequence enters it, since the batched decode read
    covers its unwritten slots (masked, but a masked 0 times a NaN left in fresh memory is still NaN).
    """

    def __init__(
        self,
        *,
        layers: int,
        num_blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (layers, num_blocks, block_size, kv_heads, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.k[:, 0].zero_()
        self.v[:, 0].zero_()
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Kept apart from the tensors: readers on other threads (metrics) still get it after `release`.
        self.nbytes = self.k.nbytes + self.v.nbytes

    @staticmethod
    def bytes_per_block(*, layers: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * layers * block_size * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def release(self) -> None:
        """Give up the tensors (before a cache of another size is made, so that a smaller one never needs both at
        once); the cache is unusable afterwards."""
        device = self.k.device
        del self.k, self.v
        if device.type == "cuda":
            # Back to the driver before the new cache is made: carved out of the old one's cached segment instead,
            # the rest of that segment would stay with this stream's pool, where another runtime could not have it
            # (torch frees only whole unused segments when an allocation elsewhere runs short).
            torch.cuda.empty_cache()

    def zero_blocks(self, blocks: Tensor) -> None:
        """Fill these blocks [n] int64 with zeros in every layer."""
        self.k.index_fill_(1, blocks, 0)
        self.v.index_fill_(1, blocks, 0)

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """Store k, v: [N, KV, hd] at the flat slots [N]."""
        kv_heads, head_dim = k.shape[1], k.shape[2]
        self.k[layer].view(-1, kv_heads, head_dim).index_copy_(0, slots, k)
        self.v[layer].view(-1, kv_heads, head_dim).index_copy_(0, slots, v)


@dataclass
class PrefillSpan:
    """One prefill chunk in the flattened batch: tokens ``rows`` at positions ``start..start + len - 1``."""

    rows: slice
    start: int
    # Whether the native kernel attends the chunk (kernels.paged_prefill: it reads the context's blocks in place);
    # else torch's SDPA does, on the chunk's own K/V (start 0) or on the context gathered from the blocks.
    native: bool = False
    # The blocks holding positions 0..start + len - 1 ([nb] int64): native, or start > 0.
    blocks: Tensor | None = None
    # Not native, start > 0: the mask that lets query i see positions 0..start + i ([len, start + len] bool).
    mask: Tensor | None = None


@dataclass
class AttentionBatch:
    """How one step's N tokens attend; built by the model runner, shared by every layer of the forward."""

    cache: PagedKVCache
    # [N] int64: where each token's K/V is written.
    slots: Tensor
    # N: the step's real tokens; rows past them are padding (runner.padded_rows), never written nor attended to.
    num_tokens: int
    # Rows 0..num_decodes-1 are single-token chunks (decodes), each attending over its whole context.
    num_decodes: int = 0
    # [num_decodes, max_blocks] int32, padded with the null block; [num_decodes] int32.
    block_table: Tensor | None = None
    context_lens: Tensor | None = None
    # The longest context among the decode rows (a host int: no device sync to size the read).
    max_context: int = 0
    # [num_decodes, 1, 1, max_context] bool when the decode rows' contexts differ in length, else None.
    decode_mask: Tensor | None = None
    prefills: list[PrefillSpan] = field(default_factory=list)


def attend(layer: int, q: Tensor, k: Tensor, v: Tensor, batch: AttentionBatch, *, stored: bool = False) -> Tensor:
    """Write this layer's new K/V into the cache (unless ``stored``: the rotation's native call did) and attend:
    q [N, H, hd], k/v [N, KV, hd] -> [N, H, hd]."""
    n = batch.num_tokens
    if not stored:
        batch.cache.write(layer, batch.slots, k[:n], v[:n])
    out = torch.empty_like(q)
    out[n:] = 0  # padding rows
    d = batch.num_decodes
    if d:
        assert batch.block_table is not None and batch.context_lens is not None
        out[:d] = paged_decode(
            q[:d],
            batch.cache.k[layer],
            batch.cache.v[layer],
            batch.block_table,
            batch.context_lens,
            batch.max_context,
            batch.decode_mask,
        )
    for span in batch.prefills:
        out[span.rows] = _prefill(q[span.rows], k[span.rows], v[span.rows], span, batch.cache, layer)
    return out


def causal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """One whole sequence with no cache: q [S, H, hd], k/v [S, KV, hd] -> [S, H, hd]."""
    # NOTE: 4-D inputs: torch's CPU SDPA takes its flash kernel only for [B, H, S, hd]; 3-D falls back to the
    # unfused math path, 3x (float32) to 10x (bfloat16) slower for a 512-token prompt.
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        is_causal=q.shape[0] > 1,
        enable_gqa=True,
    )  # [1, H, S, hd]
    return out[0].transpose(0, 1)


def _prefill(q: Tensor, k: Tensor, v: Tensor, span: PrefillSpan, cache: PagedKVCache, layer: int) -> Tensor:
    """q [S, H, hd], k/v [S, KV, hd] of one chunk -> [S, H, hd]."""
    if span.native:
        assert span.blocks is not None
        return kernels.paged_prefill(q, cache.k[layer], cache.v[layer], span.blocks, span.start)
    if span.start == 0:
        return causal(q, k, v)
    assert span.blocks is not None and span.mask is not None
    length = span.mask.shape[1]
    kv_heads, head_dim = k.shape[1], k.shape[2]
    # [nb, bs, KV, hd] -> [KV, T, hd]: the whole context, this chunk's own K/V included (written above).
    keys = cache.k[layer][span.blocks].view(-1, kv_heads, head_dim)[:length].transpose(0, 1)[None]
    values = cache.v[layer][span.blocks].view(-1, kv_heads, head_dim)[:length].transpose(0, 1)[None]
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys, values, attn_mask=span.mask, enable_gqa=True)
    return out[0].transpose(0, 1)  # 4-D for the fused kernel: see causal()


def paged_decode(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_table: Tensor,
    context_lens: Tensor,
    max_context: int,
    mask: Tensor | None = None,
) -> Tensor:
    """One query per row over its paged context: q [B, H, hd] -> [B, H, hd].

    k_cache/v_cache: [num_blocks, block_size, KV, hd]; block_table: [B, max_blocks] int32; context_lens: [B].
    """
    if kernels.covers(q):
        return kernels.paged_decode(q, k_cache, v_cache, block_table, context_lens)
    return paged_decode_native(q, k_cache, v_cache, block_table, context_lens, max_context, mask)


def paged_decode_native(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_table: Tensor,
    context_lens: Tensor,
    max_context: int,
    mask: Tensor | None = None,
) -> Tensor:
    """The pure-torch reference of ``paged_decode``: gather the rows' blocks into a padded batch, one SDPA.

    Padding reads the null block (zeros), and the mask hides it; ``mask`` may be passed in to share it between
    layers, else it is built here.
    """
    batch, max_blocks = block_table.shape
    _, block_size, kv_heads, head_dim = k_cache.shape
    length = min(max_context, max_blocks * block_size)
    index = block_table.long()
    keys = k_cache[index].view(batch, -1, kv_heads, head_dim)[:, :length].transpose(1, 2)  # [B, KV, T, hd]
    values = v_cache[index].view(batch, -1, kv_heads, head_dim)[:, :length].transpose(1, 2)
    if mask is None:
        mask = decode_mask(context_lens, length)
    out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask, enable_gqa=True)
    return out[:, :, 0]  # [B, H, hd]


def decode_mask(context_lens: Tensor, length: int) -> Tensor:
    """[B, 1, 1, length] bool: row b sees its first context_lens[b] positions."""
    columns = torch.arange(length, device=context_lens.device)
    return (columns[None, :] < context_lens[:, None])[:, None, None, :]
