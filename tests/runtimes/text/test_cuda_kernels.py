"""The CUDA kernels of csrc/cuda/: each op against its pure-torch reference and against the CPU kernel on the same
inputs (the two round in the same places), and the values the CUDA ops refuse by writing NaN where the CPU ops
raise. Each test runs on two backends: ``host``, the CUDA launchers and kernels compiled for the CPU and run by a
SIMT emulator (tests/helpers/simt_host.h: their logic, on every run of the suite), and ``cuda``, the real build on
a GPU (marked gpu; scripts/gpu_check.sh builds ember._C with its CUDA kernels there first). The tests at the end
need a GPU alone: the build's registrations, opcheck, the layers and a whole model on CUDA.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from gguf import GGMLQuantizationType as GT

from ember.runtimes.text import kernels
from ember.runtimes.text.attention import paged_decode_native
from ember.runtimes.text.loader import load_model
from ember.runtimes.text.model import apply_rotary
from ember.runtimes.text.quant.formats import QuantizedTensor, dequantize
from ember.runtimes.text.quant.gguf_blocks import REPACK, repack
from ember.runtimes.text.quant.layers import GPU_GEMV_ROWS, QuantLinear
from tests.helpers.cuda_on_host import CudaOnHost, build
from tests.helpers.kernel_inputs import (
    cache_inputs,
    norm_inputs,
    paged_inputs,
    qk_views,
    rotary_inputs,
    rounded_to_int8,
)
from tests.helpers.quant_blocks import random_blocks
from tests.helpers.text_runner import Driver, new_runner
from tests.helpers.tiny_checkpoint import write_tiny_gguf

BUILT = os.environ.get("EMBER_NATIVE") != "0"
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA_OPS = [
    "paged_decode", "rms_norm", "add_rms_norm", "rotary", "rotary_cache", "silu_mul", "quant_linear", "dequantize"
]  # fmt: skip
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)]


@dataclasses.dataclass
class Backend:
    """Where the CUDA code runs: ``ops`` has kernels' signatures (paged_decode, rms_norm, ..., quant_linear)."""

    name: str
    ops: Any
    move: Callable[[torch.Tensor], torch.Tensor]
    move_weight: Callable[[QuantizedTensor], QuantizedTensor]

    def to(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return [self.move(t) for t in tensors]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> CudaOnHost:
    return build(tmp_path_factory.mktemp("cuda_on_host"))


@pytest.fixture(params=["host", pytest.param("cuda", marks=GPU)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "host":
        # Copies, as a move to the GPU makes: the ops work in place on what they are given.
        return Backend("host", request.getfixturevalue("emulator"), lambda t: t.clone(), lambda w: w)
    return Backend("cuda", kernels, lambda t: t.cuda(), lambda w: w.to("cuda"))


def cpu_kernel_runs(dtype: torch.dtype) -> bool:
    """Whether the CPU kernel takes this dtype (float32 and bfloat16), to compare with."""
    return BUILT and dtype != torch.float16


# --- attention ----------------------------------------------------------------------------------------------------

DECODE_SHAPES = [
    # batch, heads, kv_heads, head_dim, block_size, longest
    (16, 9, 3, 64, 16, 300),  # SmolLM2-135M: one partition
    (3, 12, 2, 128, 16, 1300),  # Qwen2.5-1.5B: three partitions of 512, rows of one, two and three
    (4, 14, 2, 64, 32, 1024),  # Qwen2.5-0.5B's groups of 7 heads: exactly two partitions
    (2, 4, 4, 96, 16, 513),  # a head_dim that leaves threads idle; one position into a second partition
    (2, 8, 2, 256, 16, 700),  # two dimensions a thread
    (5, 4, 4, 16, 4, 33),  # eight groups of positions a block of threads, summed
    (1, 2, 1, 8, 16, 1),  # one token of context
]
# The emulator runs every GPU thread as a fiber: smaller cases of the same kinds.
HOST_DECODE_SHAPES = [
    (4, 6, 2, 64, 16, 40),
    (2, 4, 2, 128, 16, 1100),
    (2, 4, 4, 96, 16, 513),
    (2, 4, 2, 256, 16, 90),
    (3, 4, 4, 16, 4, 33),
    (1, 2, 1, 8, 16, 1),
]


@pytest.mark.parametrize(("dtype", "tolerance"), DTYPES, ids=str)
@pytest.mark.parametrize(
    ("backend", "shape"),
    [("host", shape) for shape in HOST_DECODE_SHAPES]
    + [pytest.param("cuda", shape, marks=GPU) for shape in DECODE_SHAPES],
    indirect=["backend"],
    ids=str,
)
def test_paged_decode_equals_the_reference(
    backend: Backend, shape: tuple[int, ...], dtype: torch.dtype, tolerance: float
) -> None:
    q, k, v, table, lens = paged_inputs(*shape, dtype=dtype, seed=sum(shape))
    # The reference in float32 on the same (rounded) inputs: the kernel's sums are float32 too.
    expected = paged_decode_native(q.float(), k.float(), v.float(), table, lens, int(lens.max()))
    got = backend.ops.paged_decode(*backend.to(q, k, v, table, lens)).cpu()
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)
    if cpu_kernel_runs(dtype):
        cpu = kernels.paged_decode(q, k, v, table, lens)
        torch.testing.assert_close(got.float(), cpu.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("longest", [40, 1100])  # one partition, and three
def test_paged_decode_writes_nan_for_a_row_outside_the_cache_and_leaves_the_others(
    backend: Backend, longest: int
) -> None:
    q, k, v, table, lens = paged_inputs(3, 4, 2, 64, 16, longest, torch.float32, seed=5)
    lens[1] = longest  # row 1's last block is the one spoiled below
    table[1, (longest - 1) // 16] = k.shape[0]
    lens[2] = table.shape[1] * 16 + 1  # longer than its table
    got = backend.ops.paged_decode(*backend.to(q, k, v, table, lens)).cpu()
    assert got[1:].isnan().all()
    expected = paged_decode_native(q[:1], k, v, table[:1], lens[:1], int(lens[0]))
    torch.testing.assert_close(got[:1], expected, atol=1e-5, rtol=1e-5)


def test_the_emulator_runs_threads_in_either_order_alike(emulator: CudaOnHost) -> None:
    """Every block's threads last to first: a read of shared memory that some barrier does not order would see
    other values than in thread order."""
    q, k, v, table, lens = paged_inputs(3, 4, 2, 64, 16, 700, torch.float32, seed=6)
    x = torch.randn(5, 1536)
    weight = torch.rand(1536)
    outputs = []
    for reverse in (False, True):
        emulator.reverse_threads(reverse)
        try:
            outputs.append((emulator.paged_decode(q, k, v, table, lens), emulator.rms_norm(x, weight, 1e-5)))
        finally:
            emulator.reverse_threads(False)
    for first, second in zip(*outputs, strict=True):
        torch.testing.assert_close(first, second, atol=0, rtol=0)


# --- the layer ops ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "tolerance"), DTYPES, ids=str)
@pytest.mark.parametrize(("rows", "dim"), [(1, 576), (7, 37), (33, 1536), (2, 16), (3, 8192)])
def test_rms_norm_and_residual_add_match_the_reference_and_the_cpu(
    backend: Backend, dtype: torch.dtype, tolerance: float, rows: int, dim: int
) -> None:
    norm, x, residual = norm_inputs(rows, dim, dtype)
    xb, rb, wb = backend.to(x, residual, norm.weight.data)
    with torch.inference_mode():
        got = backend.ops.rms_norm(xb, wb, 1e-5).cpu()
        torch.testing.assert_close(got, norm.forward_native(x), atol=tolerance, rtol=tolerance)
        backend.ops.add_rms_norm(xb, rb, wb, 1e-5)
        torch.testing.assert_close(rb.cpu(), x + residual, atol=0, rtol=0)  # one rounding of the sum, as torch's
        torch.testing.assert_close(xb.cpu(), norm.forward_native(x + residual), atol=tolerance, rtol=tolerance)
        if cpu_kernel_runs(dtype):
            torch.testing.assert_close(got, kernels.rms_norm(x, norm.weight.data, 1e-5), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize(("dtype", "tolerance"), DTYPES, ids=str)
@pytest.mark.parametrize(("tokens", "heads", "kv_heads", "head_dim"), [(1, 9, 3, 64), (5, 4, 2, 6), (17, 12, 2, 128)])
def test_rotary_in_place_matches_the_reference_and_the_cpu(
    backend: Backend, dtype: torch.dtype, tolerance: float, tokens: int, heads: int, kv_heads: int, head_dim: int
) -> None:
    qkv, cos, sin, positions = rotary_inputs(tokens, heads, kv_heads, head_dim, dtype)
    q, k = qk_views(qkv, heads, kv_heads, head_dim)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    expected_q, expected_k = apply_rotary(q, c, s), apply_rotary(k, c, s)
    qkv_b, cos_b, sin_b, positions_b = backend.to(qkv, cos, sin, positions)
    backend.ops.rotary(*qk_views(qkv_b, heads, kv_heads, head_dim), cos_b, sin_b, positions_b)
    got_q, got_k = qk_views(qkv_b.cpu(), heads, kv_heads, head_dim)
    torch.testing.assert_close(got_q, expected_q, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(got_k, expected_k, atol=tolerance, rtol=tolerance)
    v_at = (heads + kv_heads) * head_dim
    assert torch.equal(qkv_b.cpu()[:, v_at:], qkv[:, v_at:])  # v untouched
    if cpu_kernel_runs(dtype):
        kernels.rotary(q, k, cos, sin, positions)
        torch.testing.assert_close(qkv_b.cpu(), qkv, atol=tolerance, rtol=tolerance)


def test_rotary_writes_nan_for_a_position_outside_the_tables_and_leaves_the_others(backend: Backend) -> None:
    qkv, cos, sin, positions = rotary_inputs(3, 4, 2, 16, torch.float32)
    positions[1] = cos.shape[0]
    q, k = qk_views(qkv, 4, 2, 16)
    kept = [t[[0, 2]].clone() for t in (q, k)]
    qkv_b, cos_b, sin_b, positions_b = backend.to(qkv, cos, sin, positions)
    backend.ops.rotary(*qk_views(qkv_b, 4, 2, 16), cos_b, sin_b, positions_b)
    got_q, got_k = qk_views(qkv_b.cpu(), 4, 2, 16)
    assert got_q[1].isnan().all() and got_k[1].isnan().all()
    c, s = cos[positions[[0, 2]]].unsqueeze(1), sin[positions[[0, 2]]].unsqueeze(1)
    torch.testing.assert_close(got_q[[0, 2]], apply_rotary(kept[0], c, s), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k[[0, 2]], apply_rotary(kept[1], c, s), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("dtype", "tolerance"), DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 9, 3, 64, 16), (7, 5, 4, 2, 6, 4), (17, 17, 12, 2, 128, 16)], ids=str)
def test_rotary_cache_is_rotary_then_the_cache_write(
    backend: Backend, shape: tuple[int, ...], dtype: torch.dtype, tolerance: float
) -> None:
    tokens, written, heads, kv_heads, head_dim, block_size = shape
    qkv, cos, sin, positions = rotary_inputs(tokens, heads, kv_heads, head_dim, dtype)
    cache, slots = cache_inputs(tokens, written, kv_heads, head_dim, block_size, dtype)
    q, k = qk_views(qkv, heads, kv_heads, head_dim)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    expected_q, expected_k = apply_rotary(q, c, s), apply_rotary(k, c, s)
    expected_v = qkv[:, (heads + kv_heads) * head_dim :].view(tokens, kv_heads, head_dim)
    expected_k_cache, expected_v_cache = cache.k[1].clone(), cache.v[1].clone()
    expected_k_cache.view(-1, kv_heads, head_dim)[slots] = expected_k[:written]
    expected_v_cache.view(-1, kv_heads, head_dim)[slots] = expected_v[:written]
    qkv_b, cos_b, sin_b, positions_b, k_cache, v_cache, slots_b = backend.to(
        qkv, cos, sin, positions, cache.k[1], cache.v[1], slots
    )
    q_b, k_b = qk_views(qkv_b, heads, kv_heads, head_dim)
    v_b = qkv_b[:, (heads + kv_heads) * head_dim :].view(tokens, kv_heads, head_dim)
    backend.ops.rotary_cache(q_b, k_b, v_b, cos_b, sin_b, positions_b, k_cache, v_cache, slots_b)
    got_q, got_k = qk_views(qkv_b.cpu(), heads, kv_heads, head_dim)
    torch.testing.assert_close(got_q, expected_q, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(got_k, expected_k, atol=tolerance, rtol=tolerance)
    # The cache holds the rotated k as the kernel stored it in k, and v as it was.
    expected_k_cache.view(-1, kv_heads, head_dim)[slots] = got_k[:written]
    assert torch.equal(k_cache.cpu(), expected_k_cache) and torch.equal(v_cache.cpu(), expected_v_cache)


def test_rotary_cache_leaves_a_slot_outside_the_cache_unwritten(backend: Backend) -> None:
    qkv, cos, sin, positions = rotary_inputs(3, 4, 2, 16, torch.float32)
    cache, slots = cache_inputs(3, 3, 2, 16, 4, torch.float32)
    slots[1] = 8 * 4
    qkv_b, cos_b, sin_b, positions_b, k_cache, v_cache, slots_b = backend.to(
        qkv, cos, sin, positions, cache.k[0], cache.v[0], slots
    )
    q_b, k_b = qk_views(qkv_b, 4, 2, 16)
    v_b = qkv_b[:, 96:].view(3, 2, 16)
    backend.ops.rotary_cache(q_b, k_b, v_b, cos_b, sin_b, positions_b, k_cache, v_cache, slots_b)
    expected_v = cache.v[0].clone()
    expected_v.view(-1, 2, 16)[slots[[0, 2]]] = qkv[[0, 2], 96:].view(2, 2, 16)
    assert torch.equal(v_cache.cpu(), expected_v)  # tokens 0 and 2 stored, token 1 nowhere


@pytest.mark.parametrize(("dtype", "tolerance"), DTYPES, ids=str)
@pytest.mark.parametrize(("rows", "inner"), [(1, 1536), (3, 37), (16, 8960)])
def test_silu_mul_matches_the_reference_and_the_cpu(
    backend: Backend, dtype: torch.dtype, tolerance: float, rows: int, inner: int
) -> None:
    gate_up = (4 * torch.randn(rows, 2 * inner, generator=torch.Generator().manual_seed(inner))).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    (g,) = backend.to(gate_up)
    got = backend.ops.silu_mul(g).cpu()
    torch.testing.assert_close(got, torch.nn.functional.silu(gate) * up, atol=tolerance, rtol=tolerance)
    if cpu_kernel_runs(dtype):
        torch.testing.assert_close(got, kernels.silu_mul(gate_up), atol=tolerance, rtol=tolerance)


# --- quantized weights --------------------------------------------------------------------------------------------

K_QUANTS = (GT.Q4_K, GT.Q5_K, GT.Q6_K)
# rows (M), out features (N), in features (K): 9 and 13 rows are a chunk of 8 and another; K = 384 and 160 for the
# formats that take any K / 32 (160: Q5_0/Q5_1 kept at 8 bits), 768 one super-block past a pair.
QUANT_SHAPES = [(1, 37, 512), (3, 9, 768), (8, 64, 256), (13, 5, 512), (9, 40, 1024), (5, 11, 384), (2, 6, 160)]


def quant_cases(kind: GT) -> list[tuple[int, int, int]]:
    return [(m, n, k) for m, n, k in QUANT_SHAPES if kind not in K_QUANTS or k % 256 == 0]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 2e-4), (torch.bfloat16, 5e-3), (torch.float16, 2e-3)])
@pytest.mark.parametrize("kind", list(REPACK), ids=lambda k: k.name)
def test_quant_linear_matches_the_dequantized_reference(
    backend: Backend, kind: GT, dtype: torch.dtype, tolerance: float
) -> None:
    """float32 x as it is; 16-bit x rounded to 8 bits per group of 32 first, as the CPU's 8-bit x kernel rounds it
    (the same numbers but for the float32 sums' order: compared with that kernel too where this CPU has it)."""
    for m, n, k in quant_cases(kind):
        w = repack(kind, random_blocks(kind, n, k, seed=m), n, k)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(n)).to(dtype)
        bias = torch.randn(n, generator=torch.Generator().manual_seed(k))
        xr = x.double() if dtype == torch.float32 else rounded_to_int8(x)
        expected = xr @ dequantize(w).double().t() + bias.double()
        got = backend.ops.quant_linear(*backend.to(x), backend.move_weight(w), *backend.to(bias)).cpu()
        assert got.dtype == dtype and got.shape == (m, n)
        # Products exact, sums float32; the output rounded to dtype once.
        assert (got.double() - expected).abs().max() <= tolerance * expected.abs().max(), (kind, m, n, k)
        if dtype == torch.bfloat16 and BUILT and kernels.quant_kernel() == "int8" and (w.bits != 8 or kind == GT.Q8_0):
            cpu = kernels.quant_linear(x, w, bias)
            torch.testing.assert_close(got, cpu, atol=tolerance * float(expected.abs().max()), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", list(REPACK), ids=lambda k: k.name)
def test_dequantize_is_the_reference_bit_for_bit(backend: Backend, kind: GT, dtype: torch.dtype) -> None:
    for _, n, k in quant_cases(kind):
        w = repack(kind, random_blocks(kind, n, k, seed=n), n, k)
        got = backend.ops.dequantize(backend.move_weight(w), dtype).cpu()
        torch.testing.assert_close(got, dequantize(w, dtype), atol=0, rtol=0)


# --- on a GPU alone -----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestOnTheGpu:
    def test_a_cuda_build_registers_every_cuda_op(self) -> None:
        """On a GPU machine the build must carry the CUDA kernels (EMBER_CUDA=1 in gpu_check.sh): a build that
        quietly left them out would make the model tests below pass on the references alone."""
        if os.environ.get("EMBER_CUDA") == "0":
            pytest.skip("EMBER_CUDA=0: the CUDA kernels are left out on purpose")
        assert kernels.available()
        assert [op for op in CUDA_OPS if not kernels.has_cuda_kernel(op)] == []
        x = torch.empty(1, 8, device="cuda", dtype=torch.bfloat16)
        assert kernels.covers(x) and kernels.layer_ops_cover(x) and kernels.quant_covers(x)
        assert not kernels.prefill_covers(x)  # no CUDA prefill attention yet: torch's SDPA takes prompt chunks

    @pytest.mark.parametrize("longest", [40, 1100])
    def test_paged_decode_passes_opcheck(self, longest: int) -> None:
        q, k, v, table, lens = (t.cuda() for t in paged_inputs(4, 6, 2, 32, 8, longest, torch.float32, seed=1))
        torch.library.opcheck(torch.ops.ember.paged_decode, (torch.empty_like(q), q, k, v, table, lens, 32**-0.5))

    def test_layer_ops_pass_opcheck(self) -> None:
        gen = torch.Generator().manual_seed(0)
        x, residual = torch.randn(5, 64, generator=gen).cuda(), torch.randn(5, 64, generator=gen).cuda()
        weight = torch.rand(64).cuda()
        torch.library.opcheck(torch.ops.ember.rms_norm, (torch.empty_like(x), x, weight, 1e-5))
        torch.library.opcheck(torch.ops.ember.add_rms_norm, (x.clone(), residual.clone(), weight, 1e-5))
        qkv, cos, sin, positions = (t.cuda() for t in rotary_inputs(3, 4, 2, 16, torch.float32))
        q, k = (t.contiguous() for t in qk_views(qkv, 4, 2, 16))
        torch.library.opcheck(torch.ops.ember.rotary, (q, k, cos, sin, positions))
        cache, slots = cache_inputs(3, 2, 2, 16, 4, torch.float32)
        v = qkv[:, 96:].view(3, 2, 16).contiguous()
        caches = (cache.k[0].cuda(), cache.v[0].cuda())
        torch.library.opcheck(torch.ops.ember.rotary_cache, (q, k, v, cos, sin, positions, *caches, slots.cuda()))
        gate_up = torch.randn(4, 96, generator=gen).cuda()
        torch.library.opcheck(torch.ops.ember.silu_mul, (gate_up.new_empty(4, 48), gate_up))

    def test_quant_ops_refuse_the_tiled_layout_and_pass_opcheck(self) -> None:
        w = repack(GT.Q4_0, random_blocks(GT.Q4_0, 16, 512, seed=4), 16, 512)
        x = torch.randn(3, 512, device="cuda")
        with pytest.raises(RuntimeError, match="tiled layout"):
            kernels.quant_linear(x, w.tile().to("cuda"), None)
        g = w.to("cuda")
        args = (g.q, g.scales, g.mins, g.super_scales, g.super_mins)
        torch.library.opcheck(torch.ops.ember.quant_linear, (x.new_empty(3, 16), x, *args, None, g.bits, 32))
        out = torch.empty(16, 512, device="cuda")
        torch.library.opcheck(torch.ops.ember.dequantize, (out, *args, g.bits, g.group_size))

    def test_cuda_ops_refuse_tensors_on_two_devices(self) -> None:
        x = torch.randn(2, 16, device="cuda")
        with pytest.raises(RuntimeError, match="every tensor must be on"):
            torch.ops.ember.rms_norm(torch.empty_like(x), x, torch.ones(16), 1e-5)

    def test_quant_linear_layer_takes_the_gemv_then_the_dense_path_alike(self) -> None:
        w = repack(GT.Q4_K, random_blocks(GT.Q4_K, 96, 512, seed=3), 96, 512)
        layer = QuantLinear(w, torch.randn(96)).cuda()
        layer.dense_from_rows = GPU_GEMV_ROWS
        for rows in (1, 7, GPU_GEMV_ROWS - 1, GPU_GEMV_ROWS, 40):  # the GEMV below GPU_GEMV_ROWS, cuBLAS from there
            x = torch.randn(rows, 512, device="cuda")
            expected = x.double() @ dequantize(w).double().t().cuda() + layer.bias.double()
            torch.testing.assert_close(layer(x).double(), expected, atol=1e-3, rtol=1e-3)

    def test_a_quantized_gguf_model_steps_on_cuda_as_on_the_cpu(self, tmp_path: Path) -> None:
        """The tiny Q8_0 GGUF on both devices: decodes and a prefill chunk in one step, the GPU's through the CUDA
        kernels (the decode GEMV, paged decode, the layer ops) where the CPU's go through its own."""
        path = write_tiny_gguf(tmp_path / "tiny.gguf", quantize=True)
        cpu_model, gpu_model = load_model(path), load_model(path, device="cuda")
        prompts = [cpu_model.tokenizer.encode(p) for p in ("The quick brown fox", "def add(a, b):\n    return")]
        logits = []
        for driver in (Driver(new_runner(cpu_model)), Driver(new_runner(gpu_model, device="cuda"))):
            a, b = driver.sequence(prompts[0]), driver.sequence(prompts[1])
            driver.step((a, a.num_tokens), (b, 3))
            driver.append(a, 9)
            logits.append(driver.step((a, 1), (b, b.num_tokens - 3)).cpu())
        torch.testing.assert_close(logits[1], logits[0], atol=1e-3, rtol=1e-3)
