"""The torch code of a sentence encoder: a BERT-family transformer, then pooling, an optional dense layer, and
normalisation, as a sentence-transformers folder describes them.

Two families, told apart by their ``config.json``'s ``model_type``:
- ``bert`` (BERT, MiniLM, BGE, E5, GTE...): absolute learned positions from 0, token-type embeddings;
- ``mpnet`` (all-mpnet-base-v2...): positions from padding_idx + 1 and a learned bias per relative distance
  bucket, shared by every layer.
Both are post-norm encoders with GELU (erf) feed-forwards. Query, key and value are fused into one matrix at load
(one matmul instead of three) and attention is torch's SDPA with a key-padding mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Family = Literal["bert", "mpnet"]
Pooling = Literal["mean", "cls", "max", "mean_sqrt_len"]


@dataclass(frozen=True)
class EncoderConfig:
    """The shapes of the transformer, read from its ``config.json`` (transformers' names in comments)."""

    family: Family
    vocab_size: int
    hidden_size: int
    num_layers: int  # num_hidden_layers
    num_heads: int  # num_attention_heads
    intermediate_size: int
    max_positions: int  # max_position_embeddings
    layer_norm_eps: float = 1e-12
    # BERT: token types (all 0 for one sentence); MPNet has none.
    type_vocab_size: int = 2
    pad_token_id: int = 0
    # MPNet: buckets of relative distance, each with a learned bias per head.
    relative_buckets: int = 0

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> EncoderConfig:
        """From a transformers ``config.json``; ValueError for a model this encoder does not implement."""
        family = config.get("model_type")
        if family not in ("bert", "mpnet"):
            raise ValueError(f"model_type={family!r} is not a BERT-family encoder Ember runs (bert, mpnet)")
        act = config.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"hidden_act={act!r}: only gelu (erf) encoders are implemented")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type={config['position_embedding_type']!r} is not implemented")
        return cls(
            family=family,
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            max_positions=int(config["max_position_embeddings"]),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            type_vocab_size=int(config.get("type_vocab_size", 2)) if family == "bert" else 0,
            pad_token_id=int(config.get("pad_token_id", 0 if family == "bert" else 1)),
            relative_buckets=int(config.get("relative_attention_num_buckets", 32)) if family == "mpnet" else 0,
        )

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table covers (MPNet's first position is padding_idx + 1)."""
        return self.max_positions - (self.pad_token_id + 1 if self.family == "mpnet" else 0)


class EncoderLayer(nn.Module):
    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = c.num_heads
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.out = nn.Linear(c.hidden_size, c.hidden_size)
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.up = nn.Linear(c.hidden_size, c.intermediate_size)
        self.down = nn.Linear(c.intermediate_size, c.hidden_size)
        self.ffn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x: [B, T, D]; bias: [B or 1, H or 1, T, T] additive (padding keys at -inf, MPNet's distance bias)
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, H, T, hd]
        x = self.attn_norm(x + self.out(a.transpose(1, 2).reshape(b, t, d)))
        return self.ffn_norm(x + self.down(F.gelu(self.up(x))))


class Encoder(nn.Module):
    """Token ids and their mask in, one state per token out."""

    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        self.config = c
        self.word = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position = nn.Embedding(c.max_positions, c.hidden_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size) if c.type_vocab_size else None
        self.embed_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_layers))
        self.relative_bias = nn.Embedding(c.relative_buckets, c.num_heads) if c.relative_buckets else None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # ids, mask: [B, T] (mask True on real tokens; rows are left-aligned, padding after them) -> [B, T, D]
        c = self.config
        t = ids.shape[1]
        positions = torch.arange(t, device=ids.device)
        if c.family == "mpnet":
            # MPNet numbers real tokens from padding_idx + 1 and gives padding the padding index.
            pos = torch.where(mask, positions + c.pad_token_id + 1, c.pad_token_id)
            x = self.word(ids) + self.position(pos)
        else:
            x = self.word(ids) + self.position(positions)[None]
            if self.token_type is not None:
                x = x + self.token_type.weight[0]
        x = self.embed_norm(x)
        # Keys that are padding get -inf: [B, 1, 1, T]. A row is never all padding (it holds [CLS] at least).
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, -math.inf)[:, None, None]
        if self.relative_bias is not None:
            bias = bias + self._distance_bias(t, ids.device).to(x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def _distance_bias(self, t: int, device: torch.device) -> torch.Tensor:
        """MPNet's learned bias by bucket of relative distance: [1, H, T, T]."""
        assert self.relative_bias is not None
        positions = torch.arange(t, device=device)
        buckets = relative_bucket(positions[None, :] - positions[:, None], self.config.relative_buckets)
        return self.relative_bias(buckets).permute(2, 0, 1)[None]


def relative_bucket(distance: torch.Tensor, num_buckets: int, max_distance: int = 128) -> torch.Tensor:
    """T5-style bidirectional buckets: half the buckets per direction; exact below a quarter of them, log-spaced
    above, the last bucket for everything past ``max_distance``."""
    half = num_buckets // 2
    bucket = (distance > 0).long() * half  # keys after the query use the upper half
    n = distance.abs()
    exact = half // 2
    far = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)).long()
    return bucket + torch.where(n < exact, n, far.clamp(max=half - 1))


class SentenceEncoder(nn.Module):
    """The whole sentence-transformers pipeline: encoder -> pooling -> dense (optional) -> normalise (optional)."""

    def __init__(
        self,
        encoder: Encoder,
        pooling: Pooling,
        normalize: bool,
        dense: nn.Linear | None = None,
        dense_tanh: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        self.dense = dense
        self.dense_tanh = dense_tanh

    @property
    def dimensions(self) -> int:
        return self.dense.out_features if self.dense is not None else self.encoder.config.hidden_size

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # ids, mask: [B, T] -> [B, dimensions] float32
        states = self.encoder(ids, mask).float()
        weights = mask.unsqueeze(-1).to(states.dtype)  # [B, T, 1]
        if self.pooling == "cls":
            pooled = states[:, 0]
        elif self.pooling == "max":
            pooled = states.masked_fill(weights == 0, -1e9).max(dim=1).values
        else:
            summed = (states * weights).sum(dim=1)
            counts = weights.sum(dim=1).clamp(min=1e-9)
            pooled = summed / (counts.sqrt() if self.pooling == "mean_sqrt_len" else counts)
        if self.dense is not None:
            pooled = self.dense(pooled.to(self.dense.weight.dtype)).float()
            if self.dense_tanh:
                pooled = torch.tanh(pooled)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled
