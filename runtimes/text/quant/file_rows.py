"""``FileEmbedding``: a GGUF embedding table read from the file itself, a few rows at a time.

An input embedding is read one row per token, yet held repacked it is resident in full: 125 MiB of Qwen2.5-Coder-
1.5B's Q4_K table (151936 x 1536), 8% of its worker. Kept as the file's raw blocks, through the read-only memory map
the loader already reads the file with, it costs only the pages of the rows looked up (shared with the page cache,
and dropped by the kernel under pressure), and a lookup repacks and dequantizes just those rows: the same
``gguf_blocks.repack`` and ``formats.dequantize`` as a resident table, so the same values (a test compares them).

Only for tables that are not also the output projection: a tied table is read in full by every token's logits, and
stays a ``QuantEmbedding``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import Tensor, nn

from ember.runtimes.text.quant import gguf_blocks
from ember.runtimes.text.quant.formats import dequantize


def own_mapping(raw: np.ndarray) -> np.ndarray:
    """``raw`` (a view into a memory map of a file) as a read-only mapping of its own bytes alone.

    Resident memory counts every page of a mapping that has been touched, and the load touches every page of the
    file's mapping to repack the other tensors: a table that kept a view of that mapping kept the whole file
    resident (measured: +800 MiB on Qwen2.5-Coder-1.5B). A fresh mapping of just the table starts with none.
    """
    base = raw  # the map itself: slices and reshapes of a memmap are memmaps too, with the map's offset
    while isinstance(base.base, np.ndarray):
        base = base.base
    if not isinstance(base, np.memmap) or base.filename is None:
        return np.ascontiguousarray(raw)  # not from a file: a copy of its own
    start = raw.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    if not raw.flags.c_contiguous:
        return np.ascontiguousarray(raw)
    return np.memmap(base.filename, dtype=np.uint8, mode="r", offset=base.offset + start, shape=raw.shape)


@dataclass(frozen=True)
class FileRows:
    """A GGUF matrix left in the file: its type, and its raw rows (uint8 [N, bytes per row], memory-mapped)."""

    kind: GGMLQuantizationType
    raw: np.ndarray
    shape: tuple[int, int]  # (N, K)


class FileEmbedding(nn.Module):
    """An embedding lookup over ``FileRows``: only the rows looked up are read, repacked and dequantized."""

    def __init__(self, rows: FileRows, dtype: torch.dtype) -> None:
        super().__init__()
        self.rows = rows
        self.num_embeddings, self.embedding_dim = rows.shape
        self.dtype = dtype
        self.kind = rows.kind.name

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1).cpu().numpy()
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_embeddings):
            raise IndexError(f"token id out of range for an embedding of {self.num_embeddings} rows")
        picked = gguf_blocks.repack(self.rows.kind, self.rows.raw[flat], flat.size, self.embedding_dim)
        return dequantize(picked, self.dtype).view(*ids.shape, self.embedding_dim).to(ids.device)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.kind} read from the file"
