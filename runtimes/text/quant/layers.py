"""``QuantLinear`` and ``QuantEmbedding``: layers whose weight stays quantized (``formats.QuantizedTensor``).

A linear layer has three ways to run:
- the streaming kernel (``ember._C``'s quant_linear), which reads each quantized weight once per call and
  dequantizes it in registers: what decode steps want, since they are bound by the bytes of weights read;
- where bfloat16 x takes the 8-bit x kernel, its matrix product (quant_matmul: the same rounding of x, each strip
  of weights unpacked once per call and swept by every row): what prompt chunks want, bound by arithmetic, with
  vpdpbusd's 64 products an instruction;
- a dense matmul on the weight dequantized for the call (oneDNN, AMX where the CPU has it): long prefill steps
  where the CPU's dense matmul beats both.
Which is faster from how many rows on depends on the CPU, so ``choose_dense_rows`` times them at load on this
machine and sets ``product_from_rows`` and ``dense_from_rows``; without the extension only the dense path (with
the reference dequantization) exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ember.runtimes.text import kernels
from ember.runtimes.text.quant.formats import QuantizedTensor, dequantize

_PARTS = ("qweight", "scales", "mins", "super_scales", "super_mins")

# A row count no call reaches: a path chosen "never".
NEVER = 1 << 30

# On a GPU, the rows of x below which a QuantLinear takes the decode GEMV (csrc/cuda/quant_linear.cu: 8 rows a pass
# over the weights) rather than dequantize + cuBLAS: at 16 rows two passes read the 4-bit weights' ~0.56 bytes a
# weight twice, where dequantizing writes and reads 2 bytes a weight of bfloat16 once. Set, not yet measured.
GPU_GEMV_ROWS = 16


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
        if kernels.dequantize_covers(w, dtype):
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
        # Rows from which a call takes the dense path, and below that the matrix product; set by choose_dense_rows.
        self.dense_from_rows = 64
        self.product_from_rows = NEVER

    def native(self, rows: Tensor) -> Tensor:
        """rows [M, K] on the native kernels: the streaming kernel, or from ``product_from_rows`` its matrix
        product."""
        if rows.shape[0] >= self.product_from_rows:
            return kernels.quant_matmul(rows, self.quantized(), self.bias)
        return kernels.quant_linear(rows, self.quantized(), self.bias)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] < self.dense_from_rows and kernels.quant_covers(rows):
            out = self.native(rows)
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
    # Seconds per call by row count: (native kernels as chosen below, dequantize + dense matmul).
    timings: dict[int, tuple[float, float]]
    # Rows from which the 8-bit x kernel runs as its matrix product (NEVER where it does not apply), and the
    # seconds per call by row count: (streaming tiles, matrix product).
    product_from_rows: int = NEVER
    product_timings: dict[int, tuple[float, float]] = field(default_factory=dict)


# Row counts tried; steps come in these buckets (runner.padded_rows).
_TRIAL_ROWS = (8, 16, 32, 64, 128, 256, 512)
# The streaming tiles against the matrix product: it wins from 16-32 rows (SmolLM2-135M's Q4_1, 2 threads: 24).
_PRODUCT_TRIAL_ROWS = (8, 16, 24, 32, 48, 64, 128)

# (seconds of the streaming kernel, seconds of dequantize + dense matmul) for a call of this many rows.
Measure = Callable[[int], tuple[float, float]]


def crossover(
    measure: Measure, trial_rows: Sequence[int] = _TRIAL_ROWS, passes: int = 2
) -> tuple[int, dict[int, tuple[float, float]]]:
    """The smallest of ``trial_rows`` from which the second path is faster at that row count and every larger one
    (twice the largest when it is not faster at the largest), and what was measured: each path's fastest time at
    each row count over ``passes`` passes through them all.

    On a shared machine one timing can lose to a neighbour's burst, either way, and a wrong choice costs either way:
    chosen too early, the dense path takes steps off the native decode stack (NativeDecode covers rows below every
    layer's ``dense_from_rows``; a 16-row SmolLM2-135M decode step took 133 ms on the dense path against 68 ms on the
    stack); too late, or never, a 512-row prefill chunk of Qwen2.5-Coder-1.5B runs on the streaming kernel, 1.7x
    slower (a Q4_K worker that chose "never" took 8.9 s to its first token where another took 7.4). Passes through
    every row count, rather than stopping at the first win, put each noisy timing beside a second one taken later;
    and since the choice is where the dense path wins from there on, a loss near the crossover (where either path
    is about as fast) moves it one row count up, not to "never"."""
    timings: dict[int, tuple[float, float]] = {}
    for _ in range(passes):
        for rows in trial_rows:
            stream, dense = measure(rows)
            old = timings.get(rows, (stream, dense))
            timings[rows] = (min(old[0], stream), min(old[1], dense))
    chosen = trial_rows[-1] * 2
    for rows in reversed(trial_rows):
        stream, dense = timings[rows]
        if dense >= stream:
            break
        chosen = rows
    return chosen, timings


# Weight bytes of the layers a format's timing calls in turn (or all of its layers, if fewer): their dense copies
# (bfloat16, ~4x the bytes) outgrow the caches as a forward's do, where one layer's stayed in them; the streaming
# kernel is bound by its arithmetic from a few rows on, so that 8 MiB of its weights may sit in a large L3 matters
# little.
_PROBE_BYTES = 8 * 2**20


def probe_layers(group: Sequence[QuantLinear], budget: int = _PROBE_BYTES) -> list[QuantLinear]:
    """The first layers of ``group`` (in model order: the shapes of the first blocks, in a forward's proportions)
    whose quantized weights add up to ``budget`` bytes."""
    chosen, total = [], 0
    for layer in group:
        chosen.append(layer)
        total += layer.quantized().nbytes
        if total >= budget:
            break
    return chosen


def time_layers(fn: Callable[[QuantLinear], object], layers: Sequence[QuantLinear], *, warm_up: bool = True) -> float:
    """Seconds for one call of ``fn`` on each of ``layers`` in turn, after (``warm_up``) a call on one layer of each
    shape: oneDNN makes a kernel for each shape and row count on its first call. One layer called again and again
    (kernels.time_call) keeps its weights, and the dense path its dequantized copy, in the cache, which no forward
    does."""
    if warm_up:
        first: dict[tuple[int, int], QuantLinear] = {}
        for layer in layers:
            first.setdefault((layer.out_features, layer.in_features), layer)
        for layer in first.values():
            fn(layer)
    started = time.perf_counter()
    for layer in layers:
        fn(layer)
    return time.perf_counter() - started


def choose_dense_rows(model: nn.Module, dtype: torch.dtype) -> list[DenseChoice]:
    """Time the streaming kernel against dequantize + dense matmul on the first layers of each weight format (some
    8 MiB of them, called in turn as a forward calls them), and set every QuantLinear's ``dense_from_rows`` to the
    smallest row count where the dense path wins (on this machine).

    Timed on one layer called repeatedly, the dense path ran from its cache: Qwen2.5-Coder-1.5B's 1536 x 1536 Q4_K
    layer chose it from 32 or 64 rows, one load or the next, where over the model's layers the streaming kernel is
    faster up to 128 (all 112 Q4_K layers, 2 threads, 32 rows: 337 against 983 ms); a 32-row step (a 28-token
    prompt tail) took 1.1 s in the workers that chose 32 and 0.6 s in those that chose 64."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not layers:
        return []
    if layers[0].qweight.device.type != "cpu":
        # A GPU: the decode GEMV where the build has it, else dequantize + cuBLAS. Not timed here (the timings below
        # are the CPU's); benchmarks/gpu_kernels.py measures the crossover on the GPU check.
        gemv = kernels.quant_covers(torch.empty(0, dtype=dtype, device=layers[0].qweight.device))
        for layer in layers:
            layer.dense_from_rows = GPU_GEMV_ROWS if gemv else 0
        return []
    if dtype not in (torch.float32, torch.bfloat16) or not kernels.has_quant_linear():
        for layer in layers:
            layer.dense_from_rows = 0
        return []
    head = getattr(model, "lm_head", None)  # CausalLM's vocabulary projection
    by_kind: dict[str, list[QuantLinear]] = {}
    for layer in layers:
        by_kind.setdefault(layer.kind, []).append(layer)
    choices = []
    with torch.inference_mode():
        for kind, group in by_kind.items():
            # The vocabulary projection only where it is all of its format (SmolLM2-135M's Q8_0): one such matrix is
            # tens of MiB, ~1 s to time through every row count.
            probes = probe_layers([m for m in group if m is not head] or group)
            inputs: dict[int, dict[int, Tensor]] = {}

            def xs_for(rows: int, probes: list[QuantLinear] = probes, inputs: dict = inputs) -> dict[int, Tensor]:
                if rows not in inputs:
                    inputs[rows] = {k: torch.randn(rows, k).to(dtype) for k in {p.in_features for p in probes}}
                return inputs[rows]

            # First the streaming tiles against the matrix product (neither has anything to make on a first call).
            product_from, product_timings = NEVER, dict[int, tuple[float, float]]()
            if kernels.quant_matmul_applies(dtype, group[0].quantized()):

                def product(rows: int, probes: list[QuantLinear] = probes) -> tuple[float, float]:
                    xs = xs_for(rows)
                    stream = time_layers(
                        lambda p: kernels.quant_linear(xs[p.in_features], p.quantized(), p.bias), probes, warm_up=False
                    )
                    matmul = time_layers(
                        lambda p: kernels.quant_matmul(xs[p.in_features], p.quantized(), p.bias), probes, warm_up=False
                    )
                    return stream, matmul

                product_from, product_timings = crossover(product, _PRODUCT_TRIAL_ROWS)
            for layer in group:
                layer.product_from_rows = product_from

            warm: set[int] = set()  # row counts measured once: crossover's second pass needs no warm-up

            def measure(rows: int, probes: list[QuantLinear] = probes, warm: set[int] = warm) -> tuple[float, float]:
                xs = xs_for(rows)
                cold = rows not in warm
                warm.add(rows)
                # The native kernels have nothing to make on a first call: the passes' fastest time serves.
                stream = time_layers(lambda p: p.native(xs[p.in_features]), probes, warm_up=False)
                dense = time_layers(lambda p: F.linear(xs[p.in_features], p.dense(dtype)), probes, warm_up=cold)
                return stream, dense

            chosen, timings = crossover(measure)
            for layer in group:
                layer.dense_from_rows = chosen
            choices.append(
                DenseChoice(
                    kind=kind,
                    dense_from_rows=chosen,
                    timings=timings,
                    product_from_rows=product_from,
                    product_timings=product_timings,
                )
            )
    return choices
