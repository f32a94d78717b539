"""load_model on Hugging Face folders: the happy paths, sharding, and errors that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ember.runtimes.text.config import ModelConfig, ModelLoadError
from ember.runtimes.text.loader import LoadedModel, load_model
from tests.helpers.text_runner import Driver, new_runner
from tests.helpers.tiny_checkpoint import write_tiny_llama


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def logits_of(loaded: LoadedModel, text: str = "The quick brown fox") -> torch.Tensor:
    ids = torch.tensor(loaded.tokenizer.encode(text))
    with torch.inference_mode():
        return loaded.model.logits(loaded.model(ids, torch.arange(ids.shape[0])))


def test_loads_a_folder(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "tiny-llama")
    loaded = load_model(folder)
    assert loaded.name == "tiny-llama"
    assert loaded.path == folder and loaded.source == folder
    assert loaded.context_length == 512
    assert loaded.config.num_hidden_layers == 2 and loaded.config.head_dim == 16
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.rope_positions == 512


def test_bfloat16(tmp_path: Path) -> None:
    loaded = load_model(write_tiny_llama(tmp_path / "m"), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert torch.isfinite(logits_of(loaded)).all()
    runner = new_runner(loaded, num_blocks=16, max_context=64, max_step_tokens=32, max_batch=2, dtype=torch.bfloat16)
    assert runner.cache.k.dtype == torch.bfloat16
    driver = Driver(runner)
    seq = driver.sequence(loaded.tokenizer.encode("The quick brown fox"))
    (first,) = driver.step((seq, seq.num_tokens))
    driver.append(seq, int(first.argmax()))
    (step,) = driver.step((seq, 1))
    assert first.dtype == step.dtype == torch.float32 and torch.isfinite(step).all()


def test_sharded_checkpoint_equals_single_file(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    expected = logits_of(load_model(folder))
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / file))
        weight_map.update(dict.fromkeys(keys, file))
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.testing.assert_close(logits_of(load_model(folder)), expected, atol=0, rtol=0)


def test_tied_checkpoint_that_also_stores_lm_head(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m", tie_embeddings=True)
    expected = logits_of(load_model(folder))
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, str(folder / "model.safetensors"))
    torch.testing.assert_close(logits_of(load_model(folder)), expected, atol=0, rtol=0)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    (folder / missing).unlink()
    with pytest.raises(ModelLoadError, match=missing.replace(".", r"\.")):
        load_model(folder)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_missing_shard_is_named(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"model-00001-of-00001\.safetensors"):
        load_model(folder)


def test_unsupported_architecture(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    edit_json(folder / "config.json", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(ModelLoadError, match="model_type='gpt2' is not supported"):
        load_model(folder)
    edit_json(folder / "config.json", model_type="llama", architectures=["LlamaForSequenceClassification"])
    with pytest.raises(ModelLoadError, match="LlamaForSequenceClassification"):
        load_model(folder)


def test_unsupported_rope_scaling(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    edit_json(folder / "config.json", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ModelLoadError, match="'yarn' is not supported"):
        load_model(folder)


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    edit_json(folder / "config.json", intermediate_size=96)
    with pytest.raises(ModelLoadError, match=r"mlp\.(down|gate|up)_proj\.weight has shape"):
        load_model(folder)


def test_missing_and_unexpected_tensors_are_named(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    edit_json(folder / "config.json", num_hidden_layers=3)
    with pytest.raises(ModelLoadError, match=r"model\.layers\.2\."):
        load_model(folder)
    edit_json(folder / "config.json", num_hidden_layers=1)
    with pytest.raises(ModelLoadError, match=r"unexpected.*model\.layers\.1\."):
        load_model(folder)


def test_tokenizer_larger_than_the_embedding(tmp_path: Path) -> None:
    folder = write_tiny_llama(tmp_path / "m")
    edit_json(folder / "config.json", vocab_size=100)
    with pytest.raises(ModelLoadError, match="vocab_size=100"):
        load_model(folder)


def test_config_variants() -> None:
    base = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "vocab_size": 100,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        "eos_token_id": [1, 2],
    }
    config = ModelConfig.from_dict(base)
    assert (config.num_key_value_heads, config.head_dim, config.rope_theta) == (8, 8, 1e6)
    assert config.qkv_bias and not config.o_proj_bias
    assert config.eos_token_ids == (1, 2)
    llama = ModelConfig.from_dict({**base, "model_type": "llama", "architectures": [], "attention_bias": True})
    assert llama.qkv_bias and llama.o_proj_bias
    mistral = ModelConfig.from_dict({**base, "model_type": "mistral", "architectures": [], "sliding_window": 16})
    assert mistral.context_length == 16
    with pytest.raises(ModelLoadError, match="hidden_act='gelu'"):
        ModelConfig.from_dict({**base, "hidden_act": "gelu"})
    with pytest.raises(ModelLoadError, match="'hidden_size'"):
        ModelConfig.from_dict({k: v for k, v in base.items() if k != "hidden_size"})
    with pytest.raises(ModelLoadError, match="num_key_value_heads=3"):
        ModelConfig.from_dict({**base, "num_key_value_heads": 3})


def test_gguf_selection_errors(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf"):
        load_model(tmp_path / "weights.bin")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json and no \.gguf"):
        load_model(empty)
    (empty / "a.gguf").write_bytes(b"x")
    (empty / "b.gguf").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"2 \.gguf files"):
        load_model(empty)
