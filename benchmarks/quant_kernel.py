"""Where a decode step's matmul time goes: the quantized-linear kernel on each kind of matrix of a GGUF model, by
rows of x, with the bytes each call reads and the read bandwidth that makes.

    python benchmarks/quant_kernel.py                                   # Qwen2.5-Coder-1.5B, 1-16 rows
    python benchmarks/quant_kernel.py --model smollm2-135m-instruct --rows 1,4
    python benchmarks/quant_kernel.py --kernels int8,bf16               # two kernels interleaved, and their ratio
    python benchmarks/quant_kernel.py --kernels product,dense,int8 --rows 32,128,512   # prompt chunks

Batch-1 decode reads every weight once per token, so a matrix whose kernel reads at the machine's DRAM bandwidth
(measured here in the same run, as text_serving.py does) is as fast as it can be; one well under it is bound by
its arithmetic or by how it walks memory. Speculative decoding verifies a few drafted tokens in one step: 2-8
rows of x against the same weights, where the same bytes serve more products, so the columns past the first say
what each extra row costs. Each kind of matrix (projection name and format) is timed over all the layers that hold
one, called in turn as a forward calls them: timed on one layer over and over, a matrix the last-level cache
holds (Qwen2.5-Coder-1.5B's whole MLP fits a 32 MB one) reads from there, not from memory. Kinds are interleaved
round by round and each cell is the best of ``--repeats`` rounds. ``--kernels`` names the streaming kernels that
bfloat16 x takes (int8, bf16, int: ``kernels.quant_kernel``), or ``product`` (the 8-bit x kernel's matrix product,
what prompt chunks take: ``kernels.quant_matmul``) and ``dense`` (the weight dequantized for a dense matmul), timed
in turn within each round: a table each, then the step's matmul time (every matrix once) by kernel and row count,
and each kernel's speed-up over the first. ``--cached`` adds a table per kernel of each kind's first layer called
over and over (from the last-level cache where it fits): what the kernel reads at when memory is not the limit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers.bandwidth import dram_buffer_bytes, read_bandwidth
from ember.config import load_settings
from ember.config.weights import resolve_weights
from ember.runtimes.text import kernels
from ember.runtimes.text.loader import load_model
from ember.runtimes.text.quant.layers import QuantLinear


def matrix_kinds(model: torch.nn.Module) -> dict[str, list[QuantLinear]]:
    """The layers by projection name (the last part of the module path: qkv_proj, down_proj, lm_head, ...) and
    format: where the file mixes formats for one projection (Q4_K and Q6_K v_proj), each is its own kind."""
    kinds: dict[str, list[QuantLinear]] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            kinds.setdefault(f"{name.rsplit('.', 1)[-1]} {module.kind}", []).append(module)
    return kinds


# How each name of --kernels runs a layer on x: the streaming kernels as kernels.quant_kernel sets them.
PATHS: dict[str, Callable[[QuantLinear, torch.Tensor], object]] = {
    "product": lambda layer, x: kernels.quant_matmul(x, layer.quantized(), layer.bias),
    "dense": lambda layer, x: F.linear(x, layer.dense(x.dtype)),
}


def streaming(layer: QuantLinear, x: torch.Tensor) -> object:
    return kernels.quant_linear(x, layer.quantized(), layer.bias)


def time_rows(
    layers: list[QuantLinear], rows: int, dtype: torch.dtype, call: Callable[[QuantLinear, torch.Tensor], object]
) -> float:
    """Seconds per call, calling each layer in turn as a forward does: the next layer's weights are not in the cache
    (a 32 MB last-level cache holds one layer's MLP: timing one layer over and over reads it from there)."""
    x = torch.randn(rows, layers[0].in_features).to(dtype)
    for layer in layers:
        call(layer, x)
    t0 = time.perf_counter()
    calls = 0
    while calls < 2 * len(layers) or time.perf_counter() - t0 < 0.05:
        for layer in layers:
            call(layer, x)
        calls += len(layers)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--rows", default="1,2,3,4,5,8,16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated matrix names to time (default: all)")
    parser.add_argument("--kernels", default="", help="comma-separated kernels for bfloat16 x (default: the default)")
    parser.add_argument(
        "--cached",
        action="store_true",
        help="also time each kind's first layer over and over (its weights then come from the caches): a kernel as "
        "slow from the caches as from DRAM is bound by its own work, not by memory",
    )
    args = parser.parse_args()
    if not kernels.has_quant_linear():
        raise SystemExit("ember._C is not built: nothing to time (EMBER_NATIVE=1 python setup.py build_ext --inplace)")
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16
    settings = load_settings()
    loaded = load_model(resolve_weights(settings.model(args.model), settings.cache_dir), dtype=dtype)
    kinds = matrix_kinds(loaded.model)
    if args.only:
        wanted = args.only.split(",")
        kinds = {kind: group for kind, group in kinds.items() if kind.split()[0] in wanted}
    row_counts = [int(r) for r in args.rows.split(",")]
    names = args.kernels.split(",") if args.kernels else [kernels.quant_kernel()]
    best: dict[tuple[str, str, int], float] = {}
    bandwidths = []
    with torch.inference_mode():
        for _ in range(args.repeats):
            bandwidths.append(read_bandwidth(args.threads, dram_buffer_bytes(), repeats=3, min_seconds=0.2).best)
            for kind, group in kinds.items():
                for rows in row_counts:
                    for name in names:
                        kernels.quant_kernel("int8" if name == "product" else "auto" if name == "dense" else name)
                        t = time_rows(group, rows, dtype, PATHS.get(name, streaming))
                        best[name, kind, rows] = min(best.get((name, kind, rows), float("inf")), t)
                        if args.cached:
                            t = time_rows(group[:1] * 4, rows, dtype, PATHS.get(name, streaming))
                            cached = f"{name}, one layer from the caches"
                            best[cached, kind, rows] = min(best.get((cached, kind, rows), float("inf")), t)
    dram = max(bandwidths)
    print(f"# {loaded.name}, {args.threads} threads, bfloat16 x, ISA {torch.ops.ember.cpu_isa()}")
    print(f"# DRAM read bandwidth (best of {args.repeats}): {dram / 1e9:.1f} GB/s")
    for name in names:
        for table in [name, f"{name}, one layer from the caches"] if args.cached else [name]:
            print(f"\n## kernel {table}\n")
            print_table(table, kinds, row_counts, best, dram)
    print("\n| step's matmuls (each matrix once), ms | " + " | ".join(f"{r} rows" for r in row_counts) + " |")
    print("|---|" + "---|" * len(row_counts))
    totals = {
        name: [sum(best[name, kind, rows] * len(group) for kind, group in kinds.items()) for rows in row_counts]
        for name in names
    }
    for name in names:
        cells = [f"{t * 1e3:.1f}" for t in totals[name]]
        if name != names[0]:
            cells = [
                f"{c} ({first / t:.2f}x)" for c, first, t in zip(cells, totals[names[0]], totals[name], strict=True)
            ]
        print(f"| {name} | " + " | ".join(cells) + " |")


def print_table(
    name: str,
    kinds: dict[str, list[QuantLinear]],
    row_counts: list[int],
    best: dict[tuple[str, str, int], float],
    dram: float,
) -> None:
    """One kernel's table: per kind of matrix, per row count, the time per call (1 row: its read bandwidth and
    share of DRAM's; more rows: the time over 1 row's)."""
    print("| matrix | layers | N x K | MB | " + " | ".join(f"{r} row{'s' if r > 1 else ''}" for r in row_counts) + " |")
    print("|---|---|---|---|" + "---|" * len(row_counts))
    for kind, group in kinds.items():
        layer = group[0]
        w = layer.quantized()
        mb = w.nbytes / 1e6
        cells = []
        for rows in row_counts:
            t = best[name, kind, rows]
            cell = f"{t * 1e6:.0f} us"
            if rows == 1:
                cell += f" ({w.nbytes / t / 1e9:.1f} GB/s, {w.nbytes / t / dram:.0%})"
            else:
                cell += f" ({t / best[name, kind, row_counts[0]]:.2f}x)"
            cells.append(cell)
        shape = f"{layer.out_features}x{layer.in_features}"
        print(f"| {kind} | {len(group)} | {shape} | {mb:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
