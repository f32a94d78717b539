"""Tiny random-weight checkpoints written in the real formats (a Hugging Face folder, a GGUF file).

The tokenizer is a small byte-level BPE trained in-process on a built-in corpus, shaped like
SmolLM2's (`Digits` + `ByteLevel` pre-tokenizer, ChatML special tokens at ids 0-2).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 0, 1, 2

# ChatML, with a role check so tests can see the template's raise_exception surface as an error.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Paris is the capital of France, and Berlin is the capital of Germany. Rome was not built in a day.
The weather today is sunny with a light breeze from the west; tomorrow it may rain in the afternoon.
Machine learning models learn patterns from data. A language model predicts the next token in a sequence.
def add(a, b):
    return a + b

for i in range(10):
    print(i * 2, "hello world")
She sells sea shells by the sea shore. How much wood would a woodchuck chuck if a woodchuck could chuck wood?
In 1969 the first people walked on the moon; the mission lasted 8 days, 3 hours and 18 minutes.
Cafés, naïve résumés and jalapeños: unicode text should still tokenize into bytes. 東京 is a city. 🙂
Once upon a time there was a small robot who wanted to learn how to paint the colours of the sunset.
Questions and answers: What is two plus two? It is four. Why is the sky blue? Because of scattering.
"""


@lru_cache(maxsize=4)
def tiny_tokenizer_json(vocab_size: int = 512) -> str:
    """A byte-level BPE trained on CORPUS with at most vocab_size tokens, as tokenizer.json text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer)
    return tokenizer.to_str()


def tiny_config(
    *,
    vocab_size: int = 512,
    qwen2: bool = False,
    tie_embeddings: bool = False,
    rope_scaling: dict[str, Any] | None = None,
    hidden_size: int = 64,
    intermediate_size: int = 128,
) -> dict[str, Any]:
    """config.json of a tiny Llama (or Qwen2) model, as transformers writes it."""
    config: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen2 else "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tie_embeddings,
        "bos_token_id": IM_START_ID,
        "eos_token_id": IM_END_ID,
        "torch_dtype": "float32",
    }
    if qwen2:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=2)
    else:
        config.update(attention_bias=False, mlp_bias=False)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    return config


# Layers write 4x more into the residual stream than a default init would, so the output is not just
# the input embedding echoed back (greedy decoding would repeat one token forever).
RESIDUAL_GAIN = 4.0


def tiny_state_dict(config: dict[str, Any], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under Hugging Face names, scaled so greedy decoding has clear winners."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    qwen2 = config["model_type"] == "qwen2"

    def linear(out_dim: int, in_dim: int, gain: float = 1.0) -> torch.Tensor:
        return gain * torch.randn(out_dim, in_dim, generator=gen) / in_dim**0.5

    def norm() -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(hidden, generator=gen)

    sd = {"model.embed_tokens.weight": 0.5 * torch.randn(config["vocab_size"], hidden, generator=gen)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = linear(heads * head_dim, hidden)
        sd[p + "self_attn.k_proj.weight"] = linear(kv_heads * head_dim, hidden)
        sd[p + "self_attn.v_proj.weight"] = linear(kv_heads * head_dim, hidden)
        if qwen2:
            sd[p + "self_attn.q_proj.bias"] = 0.1 * torch.randn(heads * head_dim, generator=gen)
            sd[p + "self_attn.k_proj.bias"] = 0.1 * torch.randn(kv_heads * head_dim, generator=gen)
            sd[p + "self_attn.v_proj.bias"] = 0.1 * torch.randn(kv_heads * head_dim, generator=gen)
        sd[p + "self_attn.o_proj.weight"] = linear(hidden, heads * head_dim, RESIDUAL_GAIN)
        sd[p + "mlp.gate_proj.weight"] = linear(inner, hidden)
        sd[p + "mlp.up_proj.weight"] = linear(inner, hidden)
        sd[p + "mlp.down_proj.weight"] = linear(hidden, inner, RESIDUAL_GAIN)
        sd[p + "input_layernorm.weight"] = norm()
        sd[p + "post_attention_layernorm.weight"] = norm()
    sd["model.norm.weight"] = norm()
    if not config["tie_word_embeddings"]:
        sd["lm_head.weight"] = linear(config["vocab_size"], hidden)
    return sd


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    qwen2: bool = False,
    tie_embeddings: bool = False,
    rope_scaling: dict[str, Any] | None = None,
    hidden_size: int = 64,
    intermediate_size: int = 128,
) -> Path:
    """Write a tiny random-weight checkpoint folder in Hugging Face's format and return path.

    Files: config.json, model.safetensors, tokenizer.json, tokenizer_config.json (ChatML template),
    generation_config.json. Hidden 64 (or hidden_size), 2 layers, 4 heads / 2 KV heads, context 512.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_config(
        vocab_size=vocab_size,
        qwen2=qwen2,
        tie_embeddings=tie_embeddings,
        rope_scaling=rope_scaling,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
    )
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tiny_state_dict(config, seed=seed), str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "tokenizer.json").write_text(tiny_tokenizer_json(vocab_size))
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
        # Not GPT2Tokenizer: transformers 5 would rebuild that class's pre-tokenizer and drop `Digits`.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "normalized": False, "lstrip": False, "rstrip": False}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    generation_config = {"bos_token_id": IM_START_ID, "eos_token_id": IM_END_ID, "pad_token_id": IM_END_ID}
    (path / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    return path


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to Q/K rows of llama models (pairs halves per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def write_tiny_gguf(path: Path, *, seed: int = 0, tie_embeddings: bool = False, quantize: bool = False) -> Path:
    """Write the llama model `write_tiny_llama(seed=seed)` describes as a GGUF file, the way llama.cpp's
    converter would (Q/K rows permuted, tokenizer as `tokenizer.ggml.*` metadata), and return path.

    quantize=True stores the 2-D weights as Q8_0, as a real quantized file would.
    """
    import gguf  # only the GGUF tests need it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = tiny_config(tie_embeddings=tie_embeddings)
    state_dict = tiny_state_dict(config, seed=seed)
    tok = json.loads(tiny_tokenizer_json(config["vocab_size"]))

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize else gguf.LlamaFileType.ALL_F32)

    vocab: dict[str, int] = tok["model"]["vocab"]
    tokens = [""] * config["vocab_size"]
    types = [gguf.TokenType.UNUSED] * config["vocab_size"]
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = gguf.TokenType.NORMAL
    for added in tok["added_tokens"]:
        types[added["id"]] = gguf.TokenType.CONTROL
    # Ids the tokenizer never produces still need a name, as in padded real vocabularies.
    for index, token in enumerate(tokens):
        if not token:
            tokens[index] = f"[PAD{index}]"
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(IM_START_ID)
    writer.add_eos_token_id(IM_END_ID)
    writer.add_unk_token_id(ENDOFTEXT_ID)
    writer.add_pad_token_id(IM_END_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    for name, tensor in state_dict.items():
        array = tensor.numpy()
        if name.endswith("q_proj.weight"):
            array = _llama_cpp_permute(array, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            array = _llama_cpp_permute(array, config["num_key_value_heads"])
        if quantize and array.ndim == 2:
            writer.add_tensor(
                _gguf_name(name),
                gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            writer.add_tensor(_gguf_name(name), np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_name(hf_name: str) -> str:
    """llama.cpp's tensor name for a Hugging Face one."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    module, _, kind = rest.rpartition(".")
    return f"blk.{layer}.{_GGUF_LAYER_NAMES[module]}.{kind}"
