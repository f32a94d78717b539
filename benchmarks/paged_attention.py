"""Decode attention alone: ember._C's paged_decode over a decode step's rows and layers, by where the blocks lie.

    python benchmarks/paged_attention.py                                # both models' shapes, 16 rows x 600 tokens
    python benchmarks/paged_attention.py --shapes qwen2.5-coder-1.5b --rows 8 --context 2000
    EMBER_CPU_ISA=avx512+vnni python benchmarks/paged_attention.py     # the copy that converts blocks to float32

A decode step reads every row's K and V once per layer: 16 rows of 600 tokens on SmolLM2-135M are 221 MB of
bfloat16 a step, scattered over the cache in blocks of 16 tokens. Three layouts of the same rows say what bounds
the kernel: ``contiguous`` (each row's blocks in a run, as a fresh prompt's are), ``scattered`` (every block
anywhere in the cache, as they end up after the pool has been reused for a while) and ``cached`` (every row on
the same blocks, which then stay in the caches: the kernel's arithmetic without the memory). Layouts are
interleaved round by round; each cell is the median over ``--rounds`` of a whole step (every layer once).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ember.runtimes.text import kernels


@dataclass(frozen=True)
class Shapes:
    heads: int
    kv_heads: int
    head_dim: int
    layers: int


SHAPES = {
    "smollm2-135m": Shapes(heads=9, kv_heads=3, head_dim=64, layers=30),
    "qwen2.5-coder-1.5b": Shapes(heads=12, kv_heads=2, head_dim=128, layers=28),
    "qwen2.5-coder-0.5b": Shapes(heads=14, kv_heads=2, head_dim=64, layers=24),
}
LAYOUTS = ("contiguous", "scattered", "cached")
BLOCK_SIZE = 16


def block_tables(rows: int, blocks_per_row: int, pool: int, seed: int) -> dict[str, torch.Tensor]:
    """Each layout's [rows, blocks_per_row] int32 table over a pool of ``pool`` blocks (block 0, the null block,
    never used)."""
    contiguous = torch.arange(1, 1 + rows * blocks_per_row, dtype=torch.int32).view(rows, blocks_per_row)
    gen = torch.Generator().manual_seed(seed)
    scattered = (torch.randperm(pool - 1, generator=gen)[: rows * blocks_per_row] + 1).to(torch.int32)
    cached = torch.arange(1, 1 + blocks_per_row, dtype=torch.int32).repeat(rows, 1)
    return {"contiguous": contiguous, "scattered": scattered.view(rows, blocks_per_row), "cached": cached}


def measure(shapes: Shapes, rows: int, context: int, rounds: int) -> dict[str, float]:
    """Median ms of a step (every layer's paged_decode once) per layout."""
    blocks_per_row = -(-context // BLOCK_SIZE)
    pool = 4 * rows * blocks_per_row + 1  # room to scatter
    gen = torch.Generator().manual_seed(0)
    cache_shape = (shapes.layers, pool, BLOCK_SIZE, shapes.kv_heads, shapes.head_dim)
    k = (torch.randn(cache_shape, generator=gen) * 0.5).to(torch.bfloat16)
    v = torch.randn(cache_shape, generator=gen).to(torch.bfloat16)
    q = torch.randn(rows, shapes.heads, shapes.head_dim, generator=gen).to(torch.bfloat16)
    lens = torch.full((rows,), context, dtype=torch.int32)
    tables = block_tables(rows, blocks_per_row, pool, seed=1)
    times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for _ in range(rounds):
        for layout in LAYOUTS:
            started = time.perf_counter()
            for layer in range(shapes.layers):
                kernels.paged_decode(q, k[layer], v[layer], tables[layout], lens)
            times[layout].append((time.perf_counter() - started) * 1e3)
    return {layout: statistics.median(t) for layout, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="smollm2-135m,qwen2.5-coder-1.5b", help=f"any of {', '.join(SHAPES)}")
    parser.add_argument("--rows", type=int, default=16, help="decode rows a step")
    parser.add_argument("--context", type=int, default=600, help="tokens of context each row attends over")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if not kernels.available():
        sys.exit("ember._C is not built: paged_decode would be the pure-torch reference")
    torch.set_num_threads(args.threads)
    print(f"# paged_decode, ISA {torch.ops.ember.cpu_isa()}, {args.threads} threads, {args.rows} rows x {args.context}")
    print(f"# tokens, blocks of {BLOCK_SIZE}, bfloat16 cache; median of {args.rounds} rounds, ms a step\n")
    print("| shapes | KV MB a step | " + " | ".join(LAYOUTS) + " | contiguous GB/s |")
    print("|---|---|" + "---|" * len(LAYOUTS) + "---|")
    for name in args.shapes.split(","):
        shapes = SHAPES[name]
        step_bytes = 2 * shapes.layers * args.rows * args.context * shapes.kv_heads * shapes.head_dim * 2
        ms = measure(shapes, args.rows, args.context, args.rounds)
        cells = " | ".join(f"{ms[layout]:.2f}" for layout in LAYOUTS)
        print(f"| {name} | {step_bytes / 1e6:.0f} | {cells} | {step_bytes / ms['contiguous'] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
