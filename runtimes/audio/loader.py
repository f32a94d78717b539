"""Whisper weights from disk: whisper's own checkpoint (``.pt``), or a CTranslate2 folder converted once into the cache.

A CTranslate2 folder holds ``model.bin`` (or ``model.bin.part1``, ``.part2``, ... when a package split it; a
part may sit in a sibling package whose name says ``part2`` where this one says ``part1``) and ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper
from whisper.tokenizer import Tokenizer, get_tokenizer

from ember.runtimes.audio.ct2_convert import convert
from ember.runtimes.devices import resolve_device

log = logging.getLogger("ember.audio.loader")


class WeightsError(ValueError):
    """The weights are missing, incomplete or not a Whisper model."""


@dataclass
class LoadedWhisper:
    model: Whisper
    path: Path
    device: torch.device

    @property
    def multilingual(self) -> bool:
        return bool(self.model.is_multilingual)

    def tokenizer(self, task: str = "transcribe", language: str | None = None) -> Tokenizer:
        m = self.model
        lang = language if self.multilingual else "en"
        with warnings.catch_warnings():
            # whisper reads its vocabulary file without closing it (once: the encoding is cached).
            warnings.simplefilter("ignore", ResourceWarning)
            return get_tokenizer(m.is_multilingual, num_languages=m.num_languages, language=lang, task=task)


def model_bin_parts(folder: Path) -> list[Path]:
    """``model.bin``, or its parts in order (``model.bin.part1`` ...), looking in sibling packages too."""
    whole = folder / "model.bin"
    if whole.exists():
        return [whole]
    parts: list[Path] = []
    k = 1
    while True:
        candidates = [folder / f"model.bin.part{k}"]
        if "part1" in str(folder):
            candidates.append(Path(str(folder).replace("part1", f"part{k}")) / f"model.bin.part{k}")
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            break
        parts.append(found)
        k += 1
    if not parts:
        raise WeightsError(f"no model.bin (or model.bin.part1) in {folder}")
    return parts


def _cache_key(parts: list[Path]) -> str:
    h = hashlib.sha256()
    for p in parts:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def converted_checkpoint(folder: Path, cache_dir: Path) -> Path:
    """The folder's weights as a whisper checkpoint in ``cache_dir``, converted on first use."""
    parts = model_bin_parts(folder)
    target = cache_dir / "whisper" / f"{folder.parent.name}-{folder.name}-{_cache_key(parts)}.pt"
    if target.exists():
        return target
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    log.info("converting %s (%d part(s)) to %s", folder, len(parts), target)
    checkpoint = convert(parts, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    torch.save(checkpoint, tmp)
    os.replace(tmp, target)  # atomic: two workers converting at once both end with a whole file
    return target


def load_whisper(path: Path, cache_dir: Path, device: torch.device | None = None) -> LoadedWhisper:
    """A Whisper model on ``device`` (default: ``auto``, see ember.runtimes.devices) from a checkpoint file or a
    CTranslate2 folder."""
    device = device or resolve_device("auto")
    checkpoint_path = converted_checkpoint(path, cache_dir) if path.is_dir() else path
    try:
        # weights_only: a checkpoint is data, never code (the same guard whisper.load_model uses).
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model = Whisper(ModelDimensions(**checkpoint["dims"]))
        model.load_state_dict(checkpoint["model_state_dict"])
    except (OSError, KeyError, TypeError, RuntimeError) as e:
        raise WeightsError(f"{checkpoint_path} is not a whisper checkpoint: {e}") from e
    heads = checkpoint.get("alignment_heads")
    if isinstance(heads, torch.Tensor):
        model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
    model = model.to(device).eval()
    loaded = LoadedWhisper(model=model, path=path, device=device)
    loaded.tokenizer()  # reads whisper's vocabulary now, not in the first request
    return loaded
