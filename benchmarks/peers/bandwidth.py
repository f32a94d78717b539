"""The memory-bandwidth floor of batch-1 decode: this machine's read bandwidth over the bytes a token reads.

    python -m benchmarks.peers.bandwidth                    # bandwidth at 1 and all threads, SmolLM2's bytes/token

One decoded token with one request in flight reads every weight matrix once (the embedding table only for its one
row, unless the output projection shares it) and the KV cache of the context so far. On a CPU that is bound by
memory bandwidth, so tokens/s <= bandwidth / bytes per token: the floor on time per token that a perfect engine
reaches. The bandwidth is measured, not looked up: torch sums a float32 buffer several times and the best run
counts, once for a buffer well above the last-level cache (DRAM) and once for a buffer the size of the model's
bytes per token (where the model fits in the cache, that is what a decode step can reach).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gguf.gguf_reader import ReaderTensor

# How many bytes a GGUF tensor takes as an engine holds it. The first version for Ember is the GGUF's own size.
TensorBytes = Callable[["ReaderTensor"], int]

MIN_DRAM_BUFFER = 1 << 30


def gguf_bytes(tensor: ReaderTensor) -> int:
    """The tensor's size in the file: quantized blocks as they are."""
    return int(tensor.n_bytes)


def dense_bytes(itemsize: int) -> TensorBytes:
    """Every element dequantized to a dtype of ``itemsize`` bytes (an engine that expands the file at load)."""
    return lambda tensor: int(tensor.n_elements) * itemsize


@dataclass(frozen=True)
class TokenBytes:
    weights: int  # the weight bytes one decode step reads
    kv_per_context_token: int  # K and V of all layers, per token of context

    def total(self, context_tokens: float) -> float:
        return self.weights + self.kv_per_context_token * context_tokens


def bytes_per_token(gguf: Path, tensor_bytes: TensorBytes = gguf_bytes, *, kv_bytes_per_value: int) -> TokenBytes:
    """What one batch-1 decode step reads from the model in ``gguf``, with tensors sized by ``tensor_bytes``.

    The embedding table counts one row, unless there is no separate output projection (tied embeddings): then the
    whole table is read by the logits matmul. The KV cache counts ``kv_bytes_per_value`` per cached value.
    """
    from gguf import GGUFReader

    reader = GGUFReader(gguf)
    tensors = {t.name: t for t in reader.tensors}
    tied = "output.weight" not in tensors
    weights = 0
    for name, tensor in tensors.items():
        size = tensor_bytes(tensor)
        if name == "token_embd.weight" and not tied:
            size //= int(tensor.shape[-1])  # one row of [vocab, hidden] (GGUF lists shapes innermost first)
        weights += size

    def field(key: str) -> int:
        return int(reader.fields[key].contents())

    arch = str(reader.fields["general.architecture"].contents())
    layers = field(f"{arch}.block_count")
    heads = field(f"{arch}.attention.head_count")
    kv_heads = field(f"{arch}.attention.head_count_kv") if f"{arch}.attention.head_count_kv" in reader.fields else heads
    head_dim = field(f"{arch}.embedding_length") // heads
    if f"{arch}.attention.key_length" in reader.fields:
        head_dim = field(f"{arch}.attention.key_length")
    return TokenBytes(weights=weights, kv_per_context_token=2 * layers * kv_heads * head_dim * kv_bytes_per_value)


def llc_bytes() -> int:
    """The largest cache of CPU 0 (Linux sysfs), 0 where it cannot be read."""
    sizes = [0]
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes)


@dataclass(frozen=True)
class Bandwidth:
    threads: int
    buffer_bytes: int
    best: float  # bytes/s of the fastest repeat
    median: float


def read_bandwidth(threads: int, buffer_bytes: int, *, repeats: int = 7, min_seconds: float = 0.5) -> Bandwidth:
    """Bytes/s that ``threads`` torch threads read summing a float32 buffer of ``buffer_bytes`` (restores threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(max(buffer_bytes // 4, 1024), dtype=torch.float32)  # touched: every page is faulted in
        n = buf.numel() * 4
        buf.sum()  # warm: caches, thread pool
        rates: list[float] = []
        started = time.perf_counter()
        while len(rates) < repeats or time.perf_counter() - started < min_seconds:
            t0 = time.perf_counter()
            buf.sum()
            rates.append(n / (time.perf_counter() - t0))
        del buf
    finally:
        torch.set_num_threads(before)
    return Bandwidth(threads=threads, buffer_bytes=n, best=max(rates), median=statistics.median(rates))


def dram_buffer_bytes() -> int:
    """A buffer that no cache holds: four times the last-level cache, at least 1 GiB."""
    return max(4 * llc_bytes(), MIN_DRAM_BUFFER)


def main() -> None:
    import os

    from benchmarks.peers.llama_server import default_gguf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--context", type=int, default=100, help="tokens of context for the KV read")
    args = parser.parse_args()
    gguf = args.gguf or default_gguf()
    token = bytes_per_token(gguf, kv_bytes_per_value=2)
    per_token = token.total(args.context)
    print(
        f"{gguf.name}: {token.weights / 1e6:.1f} MB of weights + {token.kv_per_context_token} B of KV per context token"
    )
    print(f"last-level cache {llc_bytes() / 2**20:.0f} MiB")
    for threads in sorted({1, os.cpu_count() or 1}):
        for size in (dram_buffer_bytes(), int(per_token)):
            bw = read_bandwidth(threads, size)
            print(
                f"{threads} thread(s), {size / 2**20:6.0f} MiB buffer: best {bw.best / 1e9:6.1f} GB/s, median "
                f"{bw.median / 1e9:6.1f} GB/s -> floor {bw.best / per_token:6.0f} tok/s"
            )


if __name__ == "__main__":
    main()
