"""Ember's CUDA kernels (csrc/cuda/) against the pure-torch code they replace, on one GPU, at the shapes of the
shipped models; one table. ``scripts/gpu_check.sh`` runs it after building ember._C with CUDA.

    python benchmarks/gpu_kernels.py
    python benchmarks/gpu_kernels.py --dtype float16 --rounds 5

Each op is timed with CUDA events over ``--iters`` back-to-back calls, Ember's kernel and the torch reference
alternated round by round; cells are medians over ``--rounds``. Decode attention also gets the bandwidth its
K/V reads make (the bytes of every row's context, once; the smallest cases fit the L2), and the quantized linear
its weights' (each weight read once, from HBM: copies of the matrix taken in turn), beside the device's own copy
bandwidth measured in the same run: at long contexts and at a few rows the kernels should read at a large share
of it. The quantized linear's torch column is dequantize + cuBLAS, the path QuantLinear takes from
``GPU_GEMV_ROWS`` rows on: where the GEMV's speed-up falls under 1 is the crossover.
The small layer ops at batch 1 cost their launches, which is what fusing them saves (torch's RMSNorm is 7
kernels, its rotary 8 per tensor).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from gguf import GGMLQuantizationType as GT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ember.runtimes.text import kernels
from ember.runtimes.text.attention import paged_decode_native
from ember.runtimes.text.model import RMSNorm, apply_rotary
from ember.runtimes.text.quant.formats import QuantizedTensor
from ember.runtimes.text.quant.gguf_blocks import repack
from tests.helpers.quant_blocks import random_blocks


def cuda_ms(fn: Callable[[], object], iters: int) -> float:
    """Milliseconds a call, over `iters` calls between two events (after a warm-up)."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def copy_bandwidth() -> float:
    """The device's copy bandwidth, bytes read plus written a second, on 1 GiB."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = min(cuda_ms(lambda: dst.copy_(src), 10) for _ in range(3))
    return 2 * src.numel() * 4 / (ms / 1e3)


def decode_case(batch: int, context: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> tuple:
    block_size = 16
    blocks_per_row = -(-context // block_size)
    num_blocks = batch * blocks_per_row + 1
    k = torch.randn(num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device="cuda")
    v = torch.randn_like(k)
    # Each row's blocks scattered over the cache, as a pool that has been in use leaves them.
    table = (torch.randperm(num_blocks - 1, device="cuda")[: batch * blocks_per_row] + 1).view(batch, -1).int()
    lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, heads, head_dim, dtype=dtype, device="cuda")
    kv_bytes = 2 * batch * context * kv_heads * head_dim * k.element_size()
    return (q, k, v, table, lens), kv_bytes


def quantized_on_gpu(kind: GT, n: int, k: int) -> list[QuantizedTensor]:
    """Copies of one random n x k matrix of `kind` on the GPU, at least 256 MB of them: timed in turn, the weights
    come from HBM, where one matrix called over and over would stay in the 50 MB L2."""
    w = repack(kind, random_blocks(kind, n, k), n, k)
    return [w.to("cuda") for _ in range(-(-(256 << 20) // w.nbytes))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    if not kernels.has_cuda_kernel("paged_decode"):
        raise SystemExit("ember._C has no CUDA kernels: build it with EMBER_CUDA=1 (scripts/gpu_check.sh)")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cases: dict[str, tuple[Callable[[], object], Callable[[], object], int]] = {}
    # Qwen2.5-Coder-1.5B's attention shapes: 12 heads, 2 KV heads, head_dim 128.
    for batch, context in [(1, 512), (1, 8192), (16, 2048), (64, 1024), (64, 4096)]:
        (q, k, v, table, lens), kv_bytes = decode_case(batch, context, 12, 2, 128, dtype)
        cases[f"paged_decode {batch} x {context}"] = (
            lambda a=(q, k, v, table, lens): kernels.paged_decode(*a),
            lambda a=(q, k, v, table, lens), c=context: paged_decode_native(*a, c),
            kv_bytes,
        )
    norm = RMSNorm(1536, 1e-6).to("cuda", dtype)
    angles = torch.rand(4096, 64, device="cuda")
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(dtype)
    sin = torch.cat((angles.sin(), angles.sin()), -1).to(dtype)
    for rows in (1, 64):
        x = torch.randn(rows, 1536, dtype=dtype, device="cuda")
        residual = torch.randn_like(x)
        cases[f"rms_norm {rows} x 1536"] = (
            lambda x=x: kernels.rms_norm(x, norm.weight, norm.eps),
            lambda x=x: norm.forward_native(x),
            0,
        )
        cases[f"add_rms_norm {rows} x 1536"] = (
            lambda x=x, r=residual: kernels.add_rms_norm(x.clone(), r.clone(), norm.weight, norm.eps),
            lambda x=x, r=residual: norm.forward_native(x + r),
            0,
        )
        gate_up = torch.randn(rows, 2 * 8960, dtype=dtype, device="cuda")
        cases[f"silu_mul {rows} x 8960"] = (
            lambda g=gate_up: kernels.silu_mul(g),
            lambda g=gate_up: torch.nn.functional.silu(g[:, :8960]) * g[:, 8960:],
            0,
        )
        qkv = torch.randn(rows, (12 + 4) * 128, dtype=dtype, device="cuda")
        q_, k_ = qkv[:, : 12 * 128].view(rows, 12, 128), qkv[:, 12 * 128 : 14 * 128].view(rows, 2, 128)
        positions = torch.randint(0, 4096, (rows,), device="cuda")
        cases[f"rotary {rows} x (12 + 2) x 128"] = (
            lambda q=q_, k=k_, p=positions: kernels.rotary(q, k, cos, sin, p),
            lambda q=q_, k=k_, p=positions: (
                apply_rotary(q, cos[p].unsqueeze(1), sin[p].unsqueeze(1)),
                apply_rotary(k, cos[p].unsqueeze(1), sin[p].unsqueeze(1)),
            ),
            0,
        )
    # rotary and the cache write, one kernel against torch's rotation and two index_copy_ (a layer's 12 + 2 heads).
    k_cache = torch.zeros(512, 16, 2, 128, dtype=dtype, device="cuda")
    v_cache = torch.zeros_like(k_cache)
    for rows in (1, 64):
        qkv = torch.randn(rows, 16 * 128, dtype=dtype, device="cuda")
        q_, k_ = qkv[:, : 12 * 128].view(rows, 12, 128), qkv[:, 12 * 128 : 14 * 128].view(rows, 2, 128)
        v_ = qkv[:, 14 * 128 :].view(rows, 2, 128)
        positions = torch.randint(0, 4096, (rows,), device="cuda")
        slots = torch.randperm(512 * 16, device="cuda")[:rows]

        def torch_path(q=q_, k=k_, v=v_, p=positions, s=slots) -> None:
            c, n = cos[p].unsqueeze(1), sin[p].unsqueeze(1)
            apply_rotary(q, c, n)
            k_cache.view(-1, 2, 128).index_copy_(0, s, apply_rotary(k, c, n))
            v_cache.view(-1, 2, 128).index_copy_(0, s, v)

        cases[f"rotary_cache {rows} x (12 + 2) x 128"] = (
            lambda q=q_, k=k_, v=v_, p=positions, s=slots: kernels.rotary_cache(
                q, k, v, cos, sin, p, k_cache, v_cache, s
            ),
            torch_path,
            0,
        )
    # Qwen2.5-Coder-1.5B's Q4_K_M matrices: the decode GEMV against dequantize + cuBLAS (what QuantLinear takes
    # from GPU_GEMV_ROWS rows on), with the bandwidth the GEMV's weight reads make.
    for name, kind, n, k in [
        ("qkv", GT.Q4_K, 2048, 1536),
        ("gate_up", GT.Q4_K, 17920, 1536),
        ("down", GT.Q6_K, 1536, 8960),
    ]:
        copies = quantized_on_gpu(kind, n, k)
        for rows in (1, 4, 8, 16, 32):
            x = torch.randn(rows, k, dtype=dtype, device="cuda")
            ws = itertools.cycle(copies)
            cases[f"quant_linear {name} {kind.name} {rows} x {n} x {k}"] = (
                lambda x=x, ws=ws: kernels.quant_linear(x, next(ws), None),
                lambda x=x, ws=ws: torch.nn.functional.linear(x, kernels.dequantize(next(ws), x.dtype)),
                copies[0].nbytes,
            )
    times: dict[tuple[str, str], list[float]] = {}
    bandwidth = []
    with torch.inference_mode():
        for _ in range(args.rounds):
            bandwidth.append(copy_bandwidth())
            for name, (ours, reference, _) in cases.items():
                times.setdefault((name, "ember"), []).append(cuda_ms(ours, args.iters))
                times.setdefault((name, "torch"), []).append(cuda_ms(reference, args.iters))
    copy_bw = statistics.median(bandwidth)
    print(
        f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dtype}; copy bandwidth (read + write)"
        f" {copy_bw / 1e12:.2f} TB/s; medians of {args.rounds} rounds x {args.iters} calls"
    )
    print("\n| op | Ember (us) | torch (us) | speed-up | Ember's reads (TB/s, % of copy) |\n|---|---|---|---|---|")
    for name, (_, _, kv_bytes) in cases.items():
        ours, ref = statistics.median(times[name, "ember"]), statistics.median(times[name, "torch"])
        read = (
            f"{kv_bytes / (ours / 1e3) / 1e12:.2f} ({100 * kv_bytes / (ours / 1e3) / copy_bw:.0f} %)"
            if kv_bytes
            else ""
        )
        print(f"| {name} | {ours * 1e3:.1f} | {ref * 1e3:.1f} | {ref / ours:.2f}x | {read} |")


if __name__ == "__main__":
    main()
