"""ember._C's CPU ops against their pure-torch references, on random inputs with odd shapes.

The extension is part of the install (scripts/setup.sh builds it); only EMBER_NATIVE=0 leaves it out on purpose,
and then these tests check that the references take over.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import Tensor

from ember.runtimes.text import kernels
from ember.runtimes.text.attention import paged_decode, paged_decode_native
from tests.helpers.kernel_inputs import cache_inputs, norm_inputs, paged_inputs, qk_views, rotary_inputs

BUILT = os.environ.get("EMBER_NATIVE") != "0"


def test_the_extension_is_built_unless_left_out_on_purpose() -> None:
    assert kernels.available() == BUILT
    if BUILT:
        assert torch.ops.ember.cpu_isa() in ("avx512+vnni+bf16", "avx512+vnni", "avx512", "avx2", "baseline")
        # bfloat16 x takes the 8-bit x kernel exactly where the CPU has AVX512-VNNI, unless EMBER_QUANT_KERNEL
        # names another it can run.
        isa = torch.ops.ember.cpu_isa()
        asked = os.environ.get("EMBER_QUANT_KERNEL", "auto")
        expected = "int8" if "vnni" in isa else "int"
        if "vnni" in isa and (asked == "int" or (asked == "bf16" and isa.endswith("+bf16"))):
            expected = asked
        assert kernels.quant_kernel() == expected


SHAPES = [
    # batch, heads, kv_heads, head_dim, block_size, longest
    (16, 9, 3, 64, 16, 300),  # SmolLM2-135M
    (3, 12, 2, 128, 16, 100),  # Qwen2.5-1.5B
    (4, 14, 2, 64, 32, 90),  # Qwen2.5-0.5B's groups of 7 heads, blocks of 32 tokens
    (5, 4, 4, 16, 4, 33),  # no grouping, a head_dim below one vector
    (2, 6, 2, 24, 3, 7),  # a head_dim that is no multiple of a vector, odd block size
    (1, 2, 1, 8, 16, 1),  # one token of context
]


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_paged_decode_equals_the_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    q, k, v, table, lens = paged_inputs(*shape, dtype=dtype, seed=sum(shape))
    expected = paged_decode_native(q, k, v, table, lens, int(lens.max()))
    got = kernels.paged_decode(q, k, v, table, lens)
    assert got.dtype == dtype and got.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol)


PREFILL_SHAPES = [
    # heads, kv_heads, head_dim, block_size, start, rows
    (9, 3, 64, 16, 0, 37),  # SmolLM2-135M, a first chunk that ends inside a tile of 16 rows
    (12, 2, 128, 16, 45, 20),  # Qwen2.5-1.5B, a later chunk: its context starts mid-block
    (4, 4, 24, 3, 7, 16),  # no grouping, head_dim no multiple of a vector, odd block size, one whole tile
    (2, 1, 8, 16, 0, 1),  # one token
    (6, 2, 16, 4, 100, 3),  # a short chunk after a long context
]


def prefill_inputs(
    heads: int, kv_heads: int, head_dim: int, block_size: int, start: int, rows: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    nb = -(-(start + rows) // block_size)
    num_blocks = nb + 5
    # NaN everywhere the chunk's context does not reach: the kernel must never read it.
    k = torch.full((num_blocks, block_size, kv_heads, head_dim), float("nan")).to(dtype)
    v = torch.full_like(k, float("nan"))
    blocks = torch.randperm(num_blocks, generator=gen)[:nb]
    flat_k = k[blocks].view(-1, kv_heads, head_dim)
    flat_v = v[blocks].view(-1, kv_heads, head_dim)
    flat_k[: start + rows] = torch.randn(start + rows, kv_heads, head_dim, generator=gen).to(dtype)
    flat_v[: start + rows] = torch.randn(start + rows, kv_heads, head_dim, generator=gen).to(dtype)
    k[blocks] = flat_k.view(nb, block_size, kv_heads, head_dim)
    v[blocks] = flat_v.view(nb, block_size, kv_heads, head_dim)
    # q as the model holds it: a view into a wider row (the fused qkv projection's output).
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
    q = qkv[:, : heads * head_dim].view(rows, heads, head_dim)
    return q, k, v, blocks


def prefill_reference(q: Tensor, k: Tensor, v: Tensor, blocks: Tensor, start: int) -> Tensor:
    rows, kv_heads, head_dim = q.shape[0], k.shape[2], k.shape[3]
    keys = k[blocks].view(-1, kv_heads, head_dim)[: start + rows].float()
    values = v[blocks].view(-1, kv_heads, head_dim)[: start + rows].float()
    mask = torch.arange(start + rows)[None, :] <= torch.arange(start, start + rows)[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), attn_mask=mask, enable_gqa=True
    )
    return out.transpose(0, 1)


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", PREFILL_SHAPES)
def test_paged_prefill_equals_the_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    start = shape[4]
    q, k, v, blocks = prefill_inputs(*shape, dtype=dtype, seed=sum(shape))
    got = kernels.paged_prefill(q, k, v, blocks, start)
    assert got.dtype == dtype and got.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), prefill_reference(q, k, v, blocks, start), atol=tol, rtol=tol)


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
@pytest.mark.parametrize("shape", [(9, 3, 64, 16, 0, 200), (12, 2, 128, 16, 64, 100)], ids=["smollm2", "qwen2.5"])
def test_bfloat16_prefill_is_the_exact_attention_rounded_once(shape: tuple[int, ...]) -> None:
    """The products of bfloat16 q, K, V are exact in float32 and every sum and the softmax stay in float32, so the
    bfloat16 output is the float32 attention rounded to bfloat16, bar values within a hair of a rounding tie. A
    kernel that rounds anything else to bfloat16 on the way (such as the softmax weights before they multiply V,
    as flash attention's half-precision P does: 73-74% of values here) fails this."""
    start = shape[4]
    q, k, v, blocks = prefill_inputs(*shape, dtype=torch.bfloat16, seed=11)
    q = (q.float() * 2).to(torch.bfloat16)  # peaked scores, as trained heads have
    got = kernels.paged_prefill(q, k, v, blocks, start)
    exact = prefill_reference(q, k, v, blocks, start).to(torch.bfloat16)
    assert (got == exact).float().mean() > 0.999


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
def test_paged_prefill_passes_opcheck_and_refuses_a_short_block_list() -> None:
    q, k, v, blocks = prefill_inputs(4, 2, 16, 4, 5, 6, torch.float32, seed=3)
    out = torch.empty(q.shape)
    torch.library.opcheck(torch.ops.ember.paged_prefill, (out, q, k, v, blocks, 5, 0.25))
    with pytest.raises(RuntimeError, match="do not fit"):
        torch.ops.ember.paged_prefill(out, q, k, v, blocks[:2], 5, 0.25)
    blocks[0] = k.shape[0]
    with pytest.raises(RuntimeError, match="outside the cache"):
        torch.ops.ember.paged_prefill(out, q, k, v, blocks, 5, 0.25)


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_paged_decode_does_not_depend_on_how_its_tasks_are_cut(head_dim: int, dtype: torch.dtype) -> None:
    # A task is one (row, KV head); a range that holds all of a row's KV heads reads the row's blocks whole instead.
    # One thread takes every row whole; two cut 5 rows x 3 KV heads (15 tasks) inside row 2. Same numbers either way.
    q, k, v, table, lens = paged_inputs(5, 6, 3, head_dim, 4, 23, dtype, seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        whole = kernels.paged_decode(q, k, v, table, lens)
        torch.set_num_threads(2)
        cut = kernels.paged_decode(q, k, v, table, lens)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(cut, whole, atol=0, rtol=0)
    expected = paged_decode_native(q, k, v, table, lens, int(lens.max()))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(whole.float(), expected.float(), atol=tol, rtol=tol)


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
def test_paged_decode_passes_opcheck() -> None:
    q, k, v, table, lens = paged_inputs(4, 6, 2, 32, 8, 40, torch.float32, seed=1)
    out = torch.empty_like(q)
    torch.library.opcheck(torch.ops.ember.paged_decode, (out, q, k, v, table, lens, 32**-0.5))


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
def test_paged_decode_refuses_a_block_outside_the_cache() -> None:
    q, k, v, table, lens = paged_inputs(2, 4, 2, 16, 4, 9, torch.float32, seed=2)
    table[0, 0] = k.shape[0]
    with pytest.raises(RuntimeError, match="outside the cache"):
        kernels.paged_decode(q, k, v, table, lens)


def test_the_dispatcher_takes_the_reference_for_what_the_kernel_does_not_cover() -> None:
    q, k, v, table, lens = paged_inputs(3, 4, 2, 16, 4, 10, torch.float16, seed=3)
    expected = paged_decode_native(q, k, v, table, lens, int(lens.max()))
    torch.testing.assert_close(paged_decode(q, k, v, table, lens, int(lens.max())), expected)


# --- the decoder layer's fused ops -----------------------------------------------------------------------------

LAYER_DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
@pytest.mark.parametrize(("dtype", "tolerance"), LAYER_DTYPES, ids=str)
@pytest.mark.parametrize(("rows", "dim"), [(1, 576), (7, 37), (33, 1536), (2, 16)])
def test_rms_norm_and_residual_add_match_the_reference(
    dtype: torch.dtype, tolerance: float, rows: int, dim: int
) -> None:
    norm, x, residual = norm_inputs(rows, dim, dtype)
    with torch.inference_mode():
        torch.testing.assert_close(norm(x), norm.forward_native(x), atol=tolerance, rtol=tolerance)
        expected_residual = x + residual
        expected = norm.forward_native(expected_residual)
        got, got_residual = norm.add(x.clone(), residual.clone())
    torch.testing.assert_close(got_residual, expected_residual, atol=0, rtol=0)
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
@pytest.mark.parametrize(("dtype", "tolerance"), LAYER_DTYPES, ids=str)
@pytest.mark.parametrize(("tokens", "heads", "kv_heads", "head_dim"), [(1, 9, 3, 64), (5, 4, 2, 6), (17, 12, 2, 128)])
def test_rotary_in_place_matches_the_reference(
    dtype: torch.dtype, tolerance: float, tokens: int, heads: int, kv_heads: int, head_dim: int
) -> None:
    from ember.runtimes.text.model import apply_rotary

    qkv, cos, sin, positions = rotary_inputs(tokens, heads, kv_heads, head_dim, dtype)
    q, k = qk_views(qkv, heads, kv_heads, head_dim)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    expected_q, expected_k = apply_rotary(q, c, s), apply_rotary(k, c, s)
    v_before = qkv[:, (heads + kv_heads) * head_dim :].clone()
    kernels.rotary(q, k, cos, sin, positions)
    torch.testing.assert_close(q, expected_q, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(k, expected_k, atol=tolerance, rtol=tolerance)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], v_before)  # v untouched


# tokens, written (the rest padding), heads, kv_heads, head_dim, block_size
ROTARY_CACHE_SHAPES = [(1, 1, 9, 3, 64, 16), (7, 5, 4, 2, 6, 4), (17, 17, 12, 2, 128, 16)]


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", ROTARY_CACHE_SHAPES, ids=str)
def test_rotary_cache_is_rotary_then_the_cache_write(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    tokens, written, heads, kv_heads, head_dim, block_size = shape
    qkv, cos, sin, positions = rotary_inputs(tokens, heads, kv_heads, head_dim, dtype)
    cache, slots = cache_inputs(tokens, written, kv_heads, head_dim, block_size, dtype)
    expected_qkv, expected_cache = qkv.clone(), copy.deepcopy(cache)
    q, k = qk_views(expected_qkv, heads, kv_heads, head_dim)
    v = expected_qkv[:, (heads + kv_heads) * head_dim :].view(tokens, kv_heads, head_dim)
    kernels.rotary(q, k, cos, sin, positions)
    expected_cache.write(1, slots, k[:written], v[:written])
    q, k = qk_views(qkv, heads, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim :].view(tokens, kv_heads, head_dim)
    kernels.rotary_cache(q, k, v, cos, sin, positions, cache.k[1], cache.v[1], slots)
    # The same rotation, and a copy: bit for bit.
    assert torch.equal(qkv, expected_qkv)
    assert torch.equal(cache.k, expected_cache.k) and torch.equal(cache.v, expected_cache.v)


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
def test_rotary_cache_refuses_a_slot_outside_the_cache_before_touching_anything() -> None:
    qkv, cos, sin, positions = rotary_inputs(3, 4, 2, 16, torch.float32)
    cache, slots = cache_inputs(3, 3, 2, 16, 4, torch.float32)
    slots[1] = 8 * 4
    before = (qkv.clone(), cache.k.clone())
    q, k = qk_views(qkv, 4, 2, 16)
    v = qkv[:, 96:].view(3, 2, 16)
    with pytest.raises(RuntimeError, match="outside the cache"):
        kernels.rotary_cache(q, k, v, cos, sin, positions, cache.k[0], cache.v[0], slots)
    assert torch.equal(qkv, before[0]) and torch.equal(cache.k, before[1])


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
@pytest.mark.parametrize(("dtype", "tolerance"), LAYER_DTYPES, ids=str)
@pytest.mark.parametrize(("rows", "inner"), [(1, 1536), (3, 37), (16, 8960)])
def test_silu_mul_matches_the_reference(dtype: torch.dtype, tolerance: float, rows: int, inner: int) -> None:
    gate_up = (4 * torch.randn(rows, 2 * inner, generator=torch.Generator().manual_seed(inner))).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    torch.testing.assert_close(kernels.silu_mul(gate_up), expected, atol=tolerance, rtol=tolerance)
