"""Random inputs of the native ops' tests, the CPU kernels' and the CUDA kernels' alike: paged KV caches, the
normalisation's and the rotary embedding's."""

from __future__ import annotations

import torch

from ember.runtimes.text.attention import PagedKVCache
from ember.runtimes.text.model import RMSNorm


def paged_inputs(
    batch: int, heads: int, kv_heads: int, head_dim: int, block_size: int, longest: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, ...]:
    """(q [batch, heads, head_dim], k and v caches [num_blocks, block_size, kv_heads, head_dim], block table
    [batch, max_blocks] int32, context lengths [batch] int32), on the CPU: each row's blocks scattered over the cache
    in any order, block 0 the null block (zeros) that pads the table, the first row `longest` tokens long."""
    gen = torch.Generator().manual_seed(seed)
    max_blocks = -(-longest // block_size)
    num_blocks = batch * max_blocks + 3
    k = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    k[0] = 0
    v[0] = 0
    # Each row's blocks anywhere in the cache, in any order; rows padded with the null block 0.
    blocks = (torch.randperm(num_blocks - 1, generator=gen)[: batch * max_blocks] + 1).view(batch, max_blocks)
    lens = torch.randint(1, longest + 1, (batch,), generator=gen, dtype=torch.int32)
    lens[0] = longest
    table = torch.zeros(batch, max_blocks, dtype=torch.int32)
    for b in range(batch):
        used = -(-int(lens[b]) // block_size)
        table[b, :used] = blocks[b, :used].to(torch.int32)
    q = torch.randn(batch, heads, head_dim, generator=gen).to(dtype)
    return q, k, v, table, lens


def norm_inputs(rows: int, dim: int, dtype: torch.dtype) -> tuple[RMSNorm, torch.Tensor, torch.Tensor]:
    """An RMSNorm with a random weight in dtype, and x and a residual [rows, dim] (x three times the spread)."""
    gen = torch.Generator().manual_seed(rows * dim)
    norm = RMSNorm(dim, 1e-5)
    norm.weight.data = torch.randn(dim, generator=gen).to(dtype)
    x = (3 * torch.randn(rows, dim, generator=gen)).to(dtype)
    return norm, x, torch.randn(rows, dim, generator=gen).to(dtype)


def rotary_inputs(
    tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """(the joined projection's output [tokens, (heads + 2 kv_heads) head_dim], cos and sin tables [100, head_dim]
    in the rotate_half layout, positions [tokens] int64)."""
    gen = torch.Generator().manual_seed(tokens * head_dim)
    angles = torch.rand(100, head_dim // 2, generator=gen) * 6
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(dtype)
    sin = torch.cat((angles.sin(), angles.sin()), -1).to(dtype)
    positions = torch.randint(0, 100, (tokens,), generator=gen)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
    return qkv, cos, sin, positions


def qk_views(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k as the joined projection's views: rows strided, each row's heads contiguous."""
    tokens = qkv.shape[0]
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    return q, qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)


def rounded_to_int8(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] as the 8-bit x kernels (the CPU's, and the CUDA one of 16-bit x) multiply it, in float64: each group
    of 32 values d q with the kernels' own float32 steps, amax = max|x|, q = x * (127 / amax) rounded to the nearest
    integer (ties to even) and d = amax / 127. Rounded in float64 instead (q = x / d), a value at a tie can land one
    step apart, and with the random blocks' weights (|w| up to ~80) one step is ~2 of an output ~500 (seen failing a
    0.5 % bound once in ~10 runs)."""
    groups = x.float().reshape(x.shape[0], -1, 32)
    amax = groups.abs().amax(-1, keepdim=True)
    q = torch.round(groups * torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax)))
    return (q.double() * (amax / 127).double()).reshape(x.shape)


def cache_inputs(
    tokens: int, written: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> tuple[PagedKVCache, torch.Tensor]:
    """A random 2-layer paged cache of 8 blocks, and `written` distinct flat slots [written] int64 anywhere in it
    (the step's first `written` of `tokens` tokens; the rest are padding)."""
    gen = torch.Generator().manual_seed(tokens * head_dim + written)
    cache = PagedKVCache(
        layers=2, num_blocks=8, block_size=block_size, kv_heads=kv_heads, head_dim=head_dim,
        device=torch.device("cpu"), dtype=dtype,
    )  # fmt: skip
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    return cache, torch.randperm(8 * block_size, generator=gen)[:written]
