"""``QuantLinear`` and ``QuantEmbedding``: layers whose weight stays quantized (``formats.QuantizedTensor``).

A linear layer has two ways to run:
- the streaming kernel (``ember._C``'s quant_linear), which reads each quantized weight once per call and
  dequantizes it in registers: what decode steps want, since they are bound by the bytes of weights read;
- a dense matmul on the weight dequantized for the call (oneDNN, AMX where the CPU has it): what long prefill
  steps want, since they are bound by arithmetic and the dequantization is paid once for many rows.
Which is faster from how many rows on depends on the CPU, so ``choose_dense_rows`` times both at load on this
machine and sets ``dense_from_rows``; without the extension only the dense path (with the reference
dequantization) exists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ember.runtimes.text import kernels
from ember.runtimes.text.quant.formats import QuantizedTensor, dequantize

_PARTS = ("qweight", "scales", "mins", "super_scales", "super_mins")


class _Quantized(nn.Module):
    """Holds a QuantizedTensor's tensors as buffers (so ``.to()`` and the state dict see them)."""

    qweight: Tensor
    scales: Tensor
    mins: Tensor | None
    super_scales: Tensor | None
    super_mins: Tensor | None

    def __init__(self, weight: QuantizedTensor) -> None:
        super().__init__()
        self.shape = weight.shape
        self.bits = weight.bits
        self.group_size = weight.group_size
        self.kind = weight.kind
        stored = weight.tensors()
        for name in _PARTS:
            self.register_buffer(name, stored.get(name))
        # The buffers as a QuantizedTensor, built once: a forward at batch 1 is ~121 of these calls.
        self._view: QuantizedTensor | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PARTS:
            self.__dict__["_view"] = None  # a buffer replaced: build the view again
        super().__setattr__(name, value)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self.__dict__["_view"] = None  # .to() and friends replace the buffers without __setattr__
        return super()._apply(fn, recurse)

    def quantized(self) -> QuantizedTensor:
        if self._view is None:
            self._view = self._build_view()
        return self._view

    def _build_view(self) -> QuantizedTensor:
        return QuantizedTensor(
            shape=self.shape,
            bits=self.bits,
            group_size=self.group_size,
            q=self.qweight,
            scales=self.scales,
            mins=self.mins,
            super_scales=self.super_scales,
            super_mins=self.super_mins,
            kind=self.kind,
        )

    def dense(self, dtype: torch.dtype) -> Tensor:
        """The weight dequantized, [N, K] in dtype."""
        w = self.quantized()
        if kernels.has_quant_linear() and dtype in (torch.float32, torch.bfloat16) and w.q.device.type == "cpu":
            return kernels.dequantize(w, dtype)
        return dequantize(w, dtype)

    def extra_repr(self) -> str:
        return f"out={self.shape[0]}, in={self.shape[1]}, {self.kind or f'int{self.bits}'}"


class QuantLinear(_Quantized):
    """A linear layer y = x W^T + b with W quantized; y in x's dtype."""

    bias: Tensor | None

    def __init__(self, weight: QuantizedTensor, bias: Tensor | None = None) -> None:
        super().__init__(weight)
        self.out_features, self.in_features = weight.shape
        # Kept in float32: the kernel adds it to its float32 sums.
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        # Rows from which a call takes the dense path; set by choose_dense_rows.
        self.dense_from_rows = 64

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] < self.dense_from_rows and kernels.quant_covers(rows):
            out = kernels.quant_linear(rows, self.quantized(), self.bias)
        else:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            out = F.linear(rows, self.dense(x.dtype), bias)
        return out.view(*x.shape[:-1], self.out_features)


class QuantEmbedding(_Quantized):
    """An embedding table kept quantized: a lookup dequantizes only the rows it reads."""

    def __init__(self, weight: QuantizedTensor, dtype: torch.dtype) -> None:
        super().__init__(weight)
        self.num_embeddings, self.embedding_dim = weight.shape
        self.dtype = dtype

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.quantized().rows(ids.reshape(-1))
        return dequantize(rows, self.dtype).view(*ids.shape, self.embedding_dim)


def tile_for_kernel(model: nn.Module) -> int:
    """Put every matrix a QuantLinear multiplies in the tiled layout (formats.py), which the streaming kernel reads
    at up to 2.6x the bandwidth; returns how many were tiled. Only where the kernel is built and reads 8 rows at
    once (kernels.reads_tiles; the reference dequantization would untile on every call), and on the CPU. A tied
    embedding shares its lm_head's tensor: it gets the tiled one too, rather than keeping a second copy (its lookups
    untile the few tiles they read)."""
    if not kernels.reads_tiles():
        return 0
    # The layers by the tensor they hold (a tied pair holds one). The ids stay apt while grouping, since the layers
    # hold every tensor; then each old tensor is freed as soon as its layers hold the tiled one, so loading never
    # holds two copies of every matrix.
    groups: dict[int, list[_Quantized]] = {}
    for module in model.modules():
        if isinstance(module, _Quantized) and module.qweight.device.type == "cpu":
            groups.setdefault(id(module.qweight), []).append(module)
    tiled = 0
    for group in groups.values():
        w = group[0].quantized()
        if w.tiled or not w.tileable or not any(isinstance(m, QuantLinear) for m in group):
            continue
        q = w.tile().q
        del w
        for module in group:
            module.qweight = q
        tiled += 1
    return tiled


@dataclass(frozen=True)
class DenseChoice:
    """What choose_dense_rows measured for one weight format."""

    kind: str
    dense_from_rows: int
    # Seconds per call by row count: (streaming kernel, dequantize + dense matmul).
    timings: dict[int, tuple[float, float]]


# Row counts tried; steps come in these buckets (runner.padded_rows).
_TRIAL_ROWS = (8, 16, 32, 64, 128, 256, 512)

# (seconds of the streaming kernel, seconds of dequantize + dense matmul) for a call of this many rows.
Measure = Callable[[int], tuple[float, float]]


def crossover(measure: Measure, trial_rows: Sequence[int] = _TRIAL_ROWS) -> tuple[int, dict[int, tuple[float, float]]]:
    """The smallest of ``trial_rows`` from which the dense path is faster (twice the largest when it never is), and
    what was measured. A win counts only when it holds when timed again, at that row count and the next: on a
    shared machine one timing can lose to a neighbour's burst, and a dense path chosen too early takes those steps
    off the native decode stack (NativeDecode covers rows below every layer's ``dense_from_rows``): measured, a
    16-row SmolLM2-135M decode step takes 133 ms on the dense path against 68 ms on the stack."""
    timings: dict[int, tuple[float, float]] = {}
    for i, rows in enumerate(trial_rows):
        stream, dense = timings[rows] = measure(rows)
        if dense >= stream:
            continue
        again = map(measure, (rows, *trial_rows[i + 1 : i + 2]))  # lazy: stops at the first loss
        if all(dense < stream for stream, dense in again):
            return rows, timings
    return trial_rows[-1] * 2, timings


def choose_dense_rows(model: nn.Module, dtype: torch.dtype) -> list[DenseChoice]:
    """Time the streaming kernel against dequantize + dense matmul on one layer of each weight format, and set every
    QuantLinear's ``dense_from_rows`` to the smallest row count where the dense path wins (on this machine)."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not layers:
        return []
    if dtype not in (torch.float32, torch.bfloat16) or not kernels.has_quant_linear():
        for layer in layers:
            layer.dense_from_rows = 0
        return []
    by_kind: dict[str, list[QuantLinear]] = {}
    for layer in layers:
        by_kind.setdefault(layer.kind, []).append(layer)
    choices = []
    with torch.inference_mode():
        for kind, group in by_kind.items():
            # The most common shape of the format: the vocabulary projection alone would take seconds to time.
            shapes = Counter((m.out_features, m.in_features) for m in group)
            probe = next(m for m in group if (m.out_features, m.in_features) == shapes.most_common(1)[0][0])
            w = probe.quantized()

            def measure(rows: int, p: QuantLinear = probe, w: QuantizedTensor = w) -> tuple[float, float]:
                x = torch.randn(rows, p.in_features).to(dtype)
                stream = kernels.time_call(lambda: kernels.quant_linear(x, w, p.bias))
                dense = kernels.time_call(lambda: F.linear(x, p.dense(dtype)))
                return stream, dense

            chosen, timings = crossover(measure)
            for layer in group:
                layer.dense_from_rows = chosen
            choices.append(DenseChoice(kind=kind, dense_from_rows=chosen, timings=timings))
    return choices
