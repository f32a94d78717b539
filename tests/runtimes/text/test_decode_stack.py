"""The native decode step (``ember._C``'s DecodeStack, ``decode_stack.NativeDecode``) against the torch model.

Both run the same kernels in the same order, so a decode step's logits must be equal bit for bit, not close:
every step below runs on two runners over one model, one with the native step and one without, and compares.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from ember.runtimes.text import kernels
from ember.runtimes.text.decode_stack import NativeDecode
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.quant.formats import QuantizedTensor
from ember.runtimes.text.quant.layers import QuantLinear
from ember.runtimes.text.request import Request
from ember.runtimes.text.runner import ModelRunner
from ember.runtimes.text.scheduler import ScheduledChunk, SchedulerOutput
from tests.helpers.text_runner import Driver, new_runner
from tests.helpers.tiny_checkpoint import write_tiny_llama

BUILT = os.environ.get("EMBER_NATIVE") != "0"
pytestmark = pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")


def test_the_native_step_is_there_when_the_extension_is() -> None:
    assert kernels.has_decode_stack()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode_stack")
    return {
        "llama": write_tiny_llama(root / "llama", seed=3),
        # Qwen2: biases on q/k/v; tied embeddings: the head reads the embedding's quantized tensors.
        "qwen2": write_tiny_llama(root / "qwen2", seed=4, qwen2=True, tie_embeddings=True),
        # Rows of 512 and 1024 values (16 and 32 groups) and 4096 logits a row: wide enough that two orders of the
        # float32 sums show in the bfloat16 outputs.
        "wide": write_tiny_llama(root / "wide", seed=6, vocab_size=4096, hidden_size=512, intermediate_size=1024),
    }


def load(folder: Path, quantization: str, dtype: torch.dtype) -> LoadedModel:
    return load_model(folder, dtype=dtype, quantization=quantization)


class Counted:
    """A runner's NativeDecode, counting the steps it ran."""

    def __init__(self, native: NativeDecode) -> None:
        self.native, self.calls = native, 0

    @property
    def max_rows(self) -> int:
        return self.native.max_rows

    def covers(self, batch: object, rows: int) -> bool:
        return self.native.covers(batch, rows)  # type: ignore[arg-type]

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.native(*args, **kwargs)  # type: ignore[arg-type]


class Twin:
    """Two drivers over one model, each with its own KV cache: one runs decode steps natively, one the torch
    model. Every step runs on both and their logits must be identical."""

    def __init__(self, loaded: LoadedModel, dtype: torch.dtype, **runner: Any) -> None:
        native, plain = new_runner(loaded, dtype=dtype, **runner), new_runner(loaded, dtype=dtype, **runner)
        assert native.native_decode is not None
        self.counted = Counted(native.native_decode)
        native.native_decode = self.counted  # type: ignore[assignment]
        plain.native_decode = None
        self.drivers = (Driver(native), Driver(plain))
        self.seqs: list[tuple[Request, Request]] = []

    def sequence(self, prompt: list[int]) -> int:
        self.seqs.append((self.drivers[0].sequence(prompt), self.drivers[1].sequence(prompt)))
        return len(self.seqs) - 1

    def append(self, i: int, token: int) -> None:
        for seq in self.seqs[i]:
            Driver.append(seq, token)

    def step(self, *chunks: tuple[int, int]) -> torch.Tensor:
        """(sequence, tokens) chunks on both drivers; the logits, checked identical."""
        la, lb = (d.step(*[(self.seqs[i][side], n) for i, n in chunks]) for side, d in enumerate(self.drivers))
        assert torch.equal(la, lb), (la - lb).abs().max()
        return la


def run_decodes(loaded: LoadedModel, dtype: torch.dtype, steps: int = 6) -> int:
    """Three sequences of different lengths, prefilled, then decoding together greedily; returns native calls."""
    twin = Twin(loaded, dtype)
    prompts = [[5, 17, 33, 2, 9], list(range(40, 61)), [7] * 11]
    ids = [twin.sequence(p) for p in prompts]
    logits = twin.step(*[(i, len(p)) for i, p in zip(ids, prompts, strict=True)])  # prefill: the torch model
    for _ in range(steps):
        for i, token in zip(ids, logits.argmax(-1).tolist(), strict=True):
            twin.append(i, token)
        logits = twin.step(*[(i, 1) for i in ids])
    return twin.counted.calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantization", ["int4", "int8"])
@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_decode_steps_equal_the_torch_model(
    checkpoints: dict[str, Path], model: str, quantization: str, dtype: torch.dtype
) -> None:
    loaded = load(checkpoints[model], quantization, dtype)
    assert run_decodes(loaded, dtype) == 6  # every decode step ran natively, none of the prefills


def _split(joined: QuantLinear, sizes: list[int]) -> list[QuantLinear]:
    """A joined projection back into its parts (each a QuantLinear over the same values)."""
    w, out, start = joined.quantized(), [], 0
    for n in sizes:
        rows = torch.arange(start, start + n)
        part: QuantizedTensor = w.rows(rows)
        bias = None if joined.bias is None else joined.bias[start : start + n]
        out.append(QuantLinear(part, bias))
        start += n
    return out


def test_separate_projections_equal_the_torch_model(checkpoints: dict[str, Path]) -> None:
    """Where q/k/v or gate/up could not be joined (formats differ in Q4_K_M files), each writes its columns."""
    loaded = load(checkpoints["qwen2"], "int4", torch.bfloat16)
    config = loaded.config
    hd = config.head_dim
    for layer in loaded.model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        q, k, v = _split(attn.qkv_proj, [config.num_attention_heads * hd] + [config.num_key_value_heads * hd] * 2)
        attn.q_proj, attn.k_proj, attn.v_proj, attn.qkv_proj = q, k, v, None
        gate, up = _split(mlp.gate_up_proj, [config.intermediate_size] * 2)
        mlp.gate_proj, mlp.up_proj, mlp.gate_up_proj = gate, up, None
    assert run_decodes(loaded, torch.bfloat16) == 6


def test_verified_drafts_and_plain_decodes_in_one_native_step(checkpoints: dict[str, Path]) -> None:
    """A chunk verifying drafts attends as decode rows, each seeing the rows before it written this very step."""
    twin = Twin(load(checkpoints["llama"], "int4", torch.bfloat16), torch.bfloat16)
    other, seq = twin.sequence([3, 4, 5, 6, 7]), twin.sequence(list(range(20, 33)))
    twin.step((other, 5), (seq, 13))
    twin.append(other, 9)
    twin.append(seq, 40)
    results = []
    for side, driver in enumerate(twin.drivers):
        driver.runner.verify_as_decode = True
        a, b = twin.seqs[other][side], twin.seqs[seq][side]
        assert driver.kv.allocate(b, 4) and driver.kv.allocate(a, 1)
        chunk = ScheduledChunk(b, b.num_computed, 1)
        chunk.add_drafts([41, 42, 43])
        results.append(driver.runner.execute(SchedulerOutput(chunks=[ScheduledChunk(a, a.num_computed, 1), chunk])))
    assert results[0].shape[0] == 5
    assert torch.equal(results[0], results[1])
    assert twin.counted.calls == 1


def test_decode_steps_past_16_rows_run_natively_at_their_own_size(checkpoints: dict[str, Path]) -> None:
    """The torch model pads a step of 17-64 rows to a multiple of 16; a step of decodes alone, which the native step
    takes, is not padded, so 16 decodes and a draft (17 rows) do not fall back to the torch model."""
    loaded = load(checkpoints["llama"], "int4", torch.bfloat16)
    for module in loaded.model.modules():
        if isinstance(module, QuantLinear):
            module.dense_from_rows = 1000  # the streaming kernel at every row count here, timed or not
    twin = Twin(loaded, torch.bfloat16, max_batch=24, num_blocks=256)
    ids = [twin.sequence([3 + i, 7, 11 + i]) for i in range(18)]
    logits = twin.step(*[(i, 3) for i in ids])  # prefill: the torch model
    assert twin.counted.calls == 0
    for _ in range(2):
        for i, token in zip(ids, logits.argmax(-1).tolist(), strict=True):
            twin.append(i, token)
        logits = twin.step(*[(i, 1) for i in ids])  # 18 rows: padded to 32 before
    assert twin.counted.calls == 2


@pytest.mark.skipif(not kernels.has_quant_matmul(), reason="an older build without the matrix product")
def test_decode_steps_take_the_matrix_product_from_where_the_layers_do(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each projection of the native step takes the 8-bit x kernel's matrix product from its layer's
    product_from_rows, as the torch model does: the two compute the same float32 sums only if they agree on it (on
    this model a native step without it is off the torch model's)."""
    loaded = load(checkpoints["wide"], "int4", torch.bfloat16)
    if not kernels.quant_matmul_applies(torch.bfloat16, loaded.model.lm_head.quantized()):
        pytest.skip("bfloat16 x does not take the 8-bit x kernel here")
    for module in loaded.model.modules():
        if isinstance(module, QuantLinear):
            module.dense_from_rows, module.product_from_rows = 1000, 3
    products: list[int] = []
    matmul = kernels.quant_matmul
    monkeypatch.setattr(kernels, "quant_matmul", lambda x, w, b: products.append(len(x)) or matmul(x, w, b))
    twin = Twin(loaded, torch.bfloat16, max_batch=24, num_blocks=256)
    ids = [twin.sequence([3 + i, 7, 11 + i, 5]) for i in range(16)]
    logits = twin.step(*[(i, 4) for i in ids])  # prefill: the torch model
    for _ in range(3):
        for i, token in zip(ids, logits.argmax(-1).tolist(), strict=True):
            twin.append(i, token)
        products.clear()
        logits = twin.step(*[(i, 1) for i in ids])  # 16 rows: the product, natively and in the torch model
        assert products and set(products) == {16}  # the torch model's side took it
    assert twin.counted.calls == 3


def test_steps_it_does_not_cover_take_the_torch_model(checkpoints: dict[str, Path]) -> None:
    twin = Twin(load(checkpoints["llama"], "int4", torch.float32), torch.float32)
    first, second = twin.sequence([1, 2, 3, 4]), twin.sequence([8, 9])
    twin.step((first, 4))
    twin.append(first, 11)
    twin.step((first, 1), (second, 2))  # a decode beside a prefill: the torch model
    assert twin.counted.calls == 0
    # From the row count at which a projection takes its dense path, the torch model too.
    twin.counted.native.max_rows = 1
    twin.append(first, 12)
    twin.step((first, 1))
    assert twin.counted.calls == 0


def test_a_model_with_dense_projections_has_no_native_step(checkpoints: dict[str, Path]) -> None:
    loaded = load(checkpoints["llama"], "none", torch.float32)
    assert NativeDecode.build(loaded.model, torch.float32) is None
    assert new_runner(loaded).native_decode is None


def test_bad_inputs_raise_instead_of_reading_outside_the_cache(checkpoints: dict[str, Path]) -> None:
    loaded = load(checkpoints["llama"], "int4", torch.float32)
    runner: ModelRunner = new_runner(loaded)
    native = runner.native_decode
    assert native is not None
    model, cache = loaded.model, runner.cache
    x = torch.zeros(1, loaded.config.hidden_size)
    table = torch.tensor([[1]], dtype=torch.int32)

    def run(slot: int, length: int, position: int = 0) -> None:
        native.stack.run(
            x,
            model.model.norm.weight.detach(),
            torch.tensor([position]),
            torch.tensor([slot]),
            cache.k,
            cache.v,
            table,
            torch.tensor([length], dtype=torch.int32),
            model.rope_cos,
            model.rope_sin,
            True,
        )

    run(slot=4, length=1)  # in range: fine
    with pytest.raises(RuntimeError, match="outside the cache"):
        run(slot=cache.num_blocks * cache.block_size, length=1)
    with pytest.raises(RuntimeError, match="context_lens"):
        run(slot=4, length=cache.block_size + 1)
    with pytest.raises(RuntimeError, match="rotary"):
        run(slot=4, length=1, position=model.rope_positions)
    with pytest.raises(RuntimeError, match="dtype"):
        native.stack.run(x.to(torch.bfloat16), *[torch.zeros(1)] * 9, True)
