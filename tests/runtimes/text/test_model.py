"""Our torch model and ModelRunner against transformers' reference implementation, on tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.model import Linear
from ember.runtimes.text.runner import ModelRunner
from tests.helpers.tiny_checkpoint import write_tiny_llama

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
VARIANTS = {
    "llama": {},
    "llama-tied": {"tie_embeddings": True},
    "qwen2": {"qwen2": True},
    "llama3-rope": {"rope_scaling": LLAMA3_SCALING},
}
PROMPTS = [
    "The quick brown fox",
    "Paris is the capital of",
    "def add(a, b):\n    return",
    "Once upon a time there was a small robot who wanted to learn how to paint",
]


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp(request.param), **VARIANTS[request.param])


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def new_runner(loaded: LoadedModel, *, max_slots: int = 4, max_context: int = 256) -> ModelRunner:
    return ModelRunner(
        loaded.model,
        loaded.config,
        max_slots=max_slots,
        max_context=max_context,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def hf_greedy(reference: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    out = reference.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


def test_state_dict_names_equal_transformers(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    ours = {k: tuple(v.shape) for k, v in loaded.model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours == theirs


def test_logits_equal_transformers(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    for prompt in PROMPTS:
        ids = torch.tensor([loaded.tokenizer.encode(prompt)])
        with torch.inference_mode():
            expected = reference(ids).logits
            ours = loaded.model.logits(loaded.model(ids, torch.arange(ids.shape[1])[None]))
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_tied_embeddings_share_storage(loaded: LoadedModel) -> None:
    head, embed = loaded.model.lm_head.weight, loaded.model.model.embed_tokens.weight
    assert (head is embed) == loaded.config.tie_word_embeddings


def test_runner_prefill_logits_equal_transformers(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    runner = new_runner(loaded)
    ids = loaded.tokenizer.encode(PROMPTS[3])
    logits = runner.prefill(2, ids)
    assert logits.shape == (loaded.config.vocab_size,) and logits.dtype == torch.float32
    with torch.inference_mode():
        expected = reference(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_runner_greedy_equals_transformers_generate(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    runner = new_runner(loaded)
    n = 20
    for prompt in PROMPTS[:2]:
        ids = loaded.tokenizer.encode(prompt)
        logits = runner.prefill(0, ids)
        ours = []
        for i in range(n):
            token = int(logits.argmax())
            ours.append(token)
            logits = runner.decode([0], [token], [len(ids) + i])[0]
        assert ours == hf_greedy(reference, ids, n), prompt


def test_batched_decode_of_different_lengths_equals_transformers(
    loaded: LoadedModel, reference: torch.nn.Module
) -> None:
    """Three sequences of different prompt lengths, decoded together in one call per step, from
    non-contiguous slots listed out of order (the gathered-cache path)."""
    runner = new_runner(loaded, max_slots=6)
    slots = [4, 1, 3]
    prompts = [loaded.tokenizer.encode(p) for p in PROMPTS[1:]]
    n = 16
    tokens = [int(runner.prefill(slot, ids).argmax()) for slot, ids in zip(slots, prompts, strict=True)]
    outputs = [[t] for t in tokens]
    positions = [len(ids) for ids in prompts]
    for _ in range(n - 1):
        logits = runner.decode(slots, tokens, positions)
        assert logits.shape == (3, loaded.config.vocab_size) and logits.dtype == torch.float32
        tokens = logits.argmax(-1).tolist()
        for out, token in zip(outputs, tokens, strict=True):
            out.append(token)
        positions = [p + 1 for p in positions]
    for ids, out in zip(prompts, outputs, strict=True):
        assert out == hf_greedy(reference, ids, n)


def test_chunked_prefill_equals_one_shot(loaded: LoadedModel) -> None:
    runner = new_runner(loaded)
    ids = loaded.tokenizer.encode(PROMPTS[3] + " " + PROMPTS[0])
    one_shot = runner.prefill(0, ids)
    runner.prefill(1, ids[:5])
    runner.prefill(1, ids[5:11], start_pos=5)
    chunked = runner.prefill(1, ids[11:], start_pos=11)
    torch.testing.assert_close(chunked, one_shot, atol=1e-5, rtol=1e-5)
    # And the caches the two wrote continue identically.
    a = runner.decode([0], [7], [len(ids)])
    b = runner.decode([1], [7], [len(ids)])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_batched_decode_equals_per_sequence_decode(loaded: LoadedModel) -> None:
    prompts = [loaded.tokenizer.encode(p) for p in PROMPTS]
    batched, single = new_runner(loaded), new_runner(loaded)
    for slot, ids in enumerate(prompts):
        batched.prefill(slot, ids)
        single.prefill(slot, ids)
    tokens = [11, 22, 33, 44]
    for order in ([0, 1, 2, 3], [2, 0, 3, 1]):
        positions = [len(prompts[s]) for s in order]
        together = batched.decode(order, [tokens[s] for s in order], positions)
        for row, slot in enumerate(order):
            alone = single.decode([slot], [tokens[slot]], [len(prompts[slot])])[0]
            torch.testing.assert_close(together[row], alone, atol=1e-5, rtol=1e-5)


def test_reused_slot_forgets_the_previous_sequence(loaded: LoadedModel) -> None:
    runner = new_runner(loaded)
    long_ids = loaded.tokenizer.encode(PROMPTS[3])
    short_ids = loaded.tokenizer.encode(PROMPTS[0])
    runner.prefill(0, long_ids)
    runner.decode([0], [5], [len(long_ids)])
    reused = runner.prefill(0, short_ids)
    step = runner.decode([0], [9], [len(short_ids)])
    fresh_runner = new_runner(loaded)
    torch.testing.assert_close(reused, fresh_runner.prefill(0, short_ids))
    torch.testing.assert_close(step, fresh_runner.decode([0], [9], [len(short_ids)]))


def test_runner_rejects_bad_calls(loaded: LoadedModel) -> None:
    runner = new_runner(loaded, max_slots=2, max_context=16)
    assert (runner.max_slots, runner.max_context, runner.vocab_size) == (2, 16, loaded.config.vocab_size)
    with pytest.raises(ValueError, match="slot=2"):
        runner.prefill(2, [1, 2])
    with pytest.raises(ValueError, match="max_context=16"):
        runner.prefill(0, list(range(10)), start_pos=7)
    with pytest.raises(ValueError, match="at least one token"):
        runner.prefill(0, [])
    with pytest.raises(ValueError, match="slot twice"):
        runner.decode([0, 0], [1, 2], [3, 3])
    with pytest.raises(ValueError, match="position 16"):
        runner.decode([1], [1], [16])


@pytest.mark.parametrize("bias", [False, True])
def test_linear_kernels_equal_f_linear(bias: bool) -> None:
    """Every row count takes one of Linear's CPU paths; all must compute F.linear."""
    torch.manual_seed(0)
    layer = Linear(96, 160, bias=bias)
    for rows in (1, 2, 3, 4, 5, 8, 33):
        x = torch.randn(rows, 3, 96)[:, 1]  # a strided [rows, 96] view
        expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(x[None]), expected[None], atol=1e-5, rtol=1e-5)
