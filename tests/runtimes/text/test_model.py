"""Our torch model and ModelRunner against transformers' reference implementation, on tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ember.runtimes.text.config import ModelConfig
from ember.runtimes.text.loader import LoadedModel, build_model, load_model, read_safetensors
from ember.runtimes.text.model import Linear
from tests.helpers.text_runner import Driver, new_runner
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


def hf_greedy(reference: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    out = reference.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


def test_state_dict_names_equal_transformers(checkpoint: Path, reference: torch.nn.Module) -> None:
    # As built from the checkpoint, before load_model joins projections (fuse_projections).
    config = ModelConfig.from_file(checkpoint / "config.json")
    model = build_model(
        config, read_safetensors(checkpoint, torch.float32), device=torch.device("cpu"), source=checkpoint
    )
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours == theirs


def test_joined_projections_compute_the_same(checkpoint: Path, loaded: LoadedModel) -> None:
    config = ModelConfig.from_file(checkpoint / "config.json")
    separate = build_model(
        config, read_safetensors(checkpoint, torch.float32), device=torch.device("cpu"), source=checkpoint
    )
    assert all(layer.self_attn.qkv_proj is not None for layer in loaded.model.model.layers)
    assert all(layer.mlp.gate_up_proj is not None for layer in loaded.model.model.layers)
    ids = torch.tensor(loaded.tokenizer.encode(PROMPTS[0]))
    with torch.inference_mode():
        expected = separate.logits(separate(ids, torch.arange(len(ids))))
        got = loaded.model.logits(loaded.model(ids, torch.arange(len(ids))))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_logits_equal_transformers(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    for prompt in PROMPTS:
        ids = torch.tensor([loaded.tokenizer.encode(prompt)])
        with torch.inference_mode():
            expected = reference(ids).logits
            ours = loaded.model.logits(loaded.model(ids[0], torch.arange(ids.shape[1])))
        torch.testing.assert_close(ours, expected[0], atol=1e-4, rtol=1e-4)


def test_tied_embeddings_share_storage(loaded: LoadedModel) -> None:
    head, embed = loaded.model.lm_head.weight, loaded.model.model.embed_tokens.weight
    assert (head is embed) == loaded.config.tie_word_embeddings


def test_runner_prefill_logits_equal_transformers(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    driver = Driver(new_runner(loaded))
    ids = loaded.tokenizer.encode(PROMPTS[3])
    (logits,) = driver.step((driver.sequence(ids), len(ids)))
    assert logits.shape == (loaded.config.vocab_size,) and logits.dtype == torch.float32
    with torch.inference_mode():
        expected = reference(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_runner_greedy_equals_transformers_generate(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    driver = Driver(new_runner(loaded))
    n = 20
    for prompt in PROMPTS[:2]:
        ids = loaded.tokenizer.encode(prompt)
        seq = driver.sequence(ids)
        (logits,) = driver.step((seq, len(ids)))
        for _ in range(n - 1):
            driver.append(seq, int(logits.argmax()))
            (logits,) = driver.step((seq, 1))
        driver.append(seq, int(logits.argmax()))
        assert seq.output_ids == hf_greedy(reference, ids, n), prompt


def test_mixed_steps_equal_transformers(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    """Sequences decode while others prefill in chunks, all in one forward per step; every one of them must still
    generate what transformers generates alone."""
    driver = Driver(new_runner(loaded, block_size=4))
    prompts = [loaded.tokenizer.encode(p) for p in PROMPTS]
    n = 12
    # Each step: (sequence, tokens) for every sequence that has work; prefills advance 7 tokens a step.
    seqs = [driver.sequence(ids) for ids in prompts]
    started = 0
    while any(s.num_output_tokens < n for s in seqs):
        if started < len(seqs):
            started += 1  # one more sequence joins each step
        work = []
        for seq in seqs[:started]:
            if seq.num_output_tokens >= n:
                continue
            left = seq.num_tokens - seq.num_computed
            work.append((seq, min(left, 7)))
        logits = iter(driver.step(*work))
        for seq, _ in work:
            if seq.num_computed == seq.num_tokens:
                driver.append(seq, int(next(logits).argmax()))
    for ids, seq in zip(prompts, seqs, strict=True):
        assert seq.output_ids == hf_greedy(reference, ids, n)


def test_mixed_batch_equals_separate_forwards(loaded: LoadedModel) -> None:
    """One step holding two decodes and two prefill chunks (one from position 0, one after a cached prefix)
    gives each the logits it gets alone."""
    prompts = [loaded.tokenizer.encode(p) for p in PROMPTS]
    together, alone = Driver(new_runner(loaded)), Driver(new_runner(loaded))
    pairs = []
    for driver in (together, alone):
        a, b = driver.sequence(prompts[0]), driver.sequence(prompts[1])
        for seq in (a, b):
            driver.step((seq, seq.num_tokens))
            driver.append(seq, 7)
        c, d = driver.sequence(prompts[2]), driver.sequence(prompts[3])
        driver.step((d, 5))  # d continues after a first chunk
        pairs.append((a, b, c, d))
    (a, b, c, d), (a1, b1, c1, d1) = pairs
    mixed = together.step((c, c.num_tokens), (a, 1), (d, d.num_tokens - 5), (b, 1))
    separate = [alone.step((c1, c1.num_tokens)), alone.step((a1, 1)), alone.step((d1, d1.num_tokens - 5))]
    separate.append(alone.step((b1, 1)))
    torch.testing.assert_close(mixed, torch.cat(separate), atol=1e-5, rtol=1e-5)


def test_chunked_prefill_equals_one_shot(loaded: LoadedModel) -> None:
    driver = Driver(new_runner(loaded))
    ids = loaded.tokenizer.encode(PROMPTS[3] + " " + PROMPTS[0])
    one, chunked = driver.sequence(ids), driver.sequence(ids)
    (one_shot,) = driver.step((one, len(ids)))
    driver.step((chunked, 5))
    driver.step((chunked, 6))
    (last,) = driver.step((chunked, len(ids) - 11))
    torch.testing.assert_close(last, one_shot, atol=1e-5, rtol=1e-5)
    # And the caches the two wrote continue identically.
    for seq in (one, chunked):
        driver.append(seq, 7)
    a, b = driver.step((one, 1), (chunked, 1))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_prefix_hit_continues_as_if_computed(loaded: LoadedModel) -> None:
    """A sequence that starts from another's cached blocks gets the logits of one that computed them itself."""
    driver = Driver(new_runner(loaded, block_size=4), caching=True)
    ids = loaded.tokenizer.encode(PROMPTS[3])
    first = driver.sequence(ids)
    (full,) = driver.step((first, len(ids)))
    second = driver.sequence(ids, use_cache=True)
    assert second.num_computed == (len(ids) - 1) // 4 * 4 and second.block_ids[0] == first.block_ids[0]
    (hit,) = driver.step((second, len(ids) - second.num_computed))
    torch.testing.assert_close(hit, full, atol=1e-5, rtol=1e-5)


def test_freed_blocks_forget_the_previous_sequence(loaded: LoadedModel) -> None:
    """Blocks reused by a new sequence (the pool is tiny) hold nothing of the one before."""
    runner = new_runner(loaded, num_blocks=1 + 16, block_size=4)
    driver = Driver(runner)
    long_ids = loaded.tokenizer.encode(PROMPTS[3])
    short_ids = loaded.tokenizer.encode(PROMPTS[0])
    old = driver.sequence(long_ids)
    driver.step((old, len(long_ids)))
    driver.kv.free(old)
    reused = driver.sequence(short_ids)
    (logits,) = driver.step((reused, len(short_ids)))
    fresh = Driver(new_runner(loaded))
    (expected,) = fresh.step((fresh.sequence(short_ids), len(short_ids)))
    torch.testing.assert_close(logits, expected)


def test_runner_rejects_bad_steps(loaded: LoadedModel) -> None:
    runner = new_runner(loaded, max_context=16, max_step_tokens=32, max_batch=2)
    driver = Driver(runner)
    with pytest.raises(ValueError, match="max_context=16"):
        driver.step((driver.sequence(list(range(3, 20))), 17))
    with pytest.raises(ValueError, match="max_step_tokens=32"):
        Driver(new_runner(loaded, max_step_tokens=32)).step((driver.sequence(list(range(3, 40))), 37))
    seqs = [driver.sequence([5]) for _ in range(3)]
    with pytest.raises(ValueError, match="max_batch=2"):
        driver.step(*((s, 1) for s in seqs))


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_steps_on_cuda_equal_the_cpu(checkpoint: Path) -> None:
    """The same decodes and prefill chunks on a GPU runner (pinned host buffers, device block tables) and on the CPU."""
    cpu_model, gpu_model = load_model(checkpoint), load_model(checkpoint, device="cuda")
    prompts = [cpu_model.tokenizer.encode(p) for p in PROMPTS]
    drivers = [Driver(new_runner(cpu_model)), Driver(new_runner(gpu_model, device="cuda"))]
    logits = []
    for driver in drivers:
        a, b = driver.sequence(prompts[0]), driver.sequence(prompts[1])
        driver.step((a, a.num_tokens), (b, 3))
        driver.append(a, 9)
        logits.append(driver.step((a, 1), (b, b.num_tokens - 3)).cpu())
    torch.testing.assert_close(logits[1], logits[0], atol=1e-3, rtol=1e-3)
