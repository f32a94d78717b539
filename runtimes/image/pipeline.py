"""The torch side of the image runtime: Ember's pixel-space pipeline, and one batched call for any pipeline.

``EmberPixelPipeline`` is a diffusers ``DiffusionPipeline`` (unet + scheduler, prompts encoded by MiniLM) that
denoises directly in RGB at a small resolution. ``PipelineRunner`` wraps it or any Stable Diffusion-family
pipeline and runs one batch: per-image prompts and seeds, a step callback, image-to-image and masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ember.runtimes.image.text_encoder import PromptEncoder

# Called after each denoising step with (steps done, steps in all); returns True to stop the batch early.
StepCallback = Callable[[int, int], bool]


def effective_steps(steps: int, strength: float | None) -> int:
    """Denoising steps a call really runs: image-to-image skips the first (1 - strength) of them, as diffusers does."""
    return steps if strength is None else max(1, min(int(steps * strength), steps))


class EmberPixelPipeline(DiffusionPipeline):
    """Text-to-image (and image-to-image) in pixel space: a small UNet2DConditionModel over MiniLM token states."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DConditionModel, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # Not a registered module: it comes from its own package and is never saved with the pipeline.
        self.prompt_encoder: PromptEncoder | None = None
        self._interrupt = False

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size)

    def _to_tensor(self, images: list[Image.Image], size: int, mode: str = "RGB") -> torch.Tensor:
        """[B, C, size, size] in [-1, 1] (RGB) or [0, 1] (mask, mode "L")."""
        arrays = [np.asarray(im.convert(mode).resize((size, size), Image.Resampling.LANCZOS)) for im in images]
        x = torch.from_numpy(np.stack(arrays)).float() / 255.0
        x = x.unsqueeze(1) if mode == "L" else x.permute(0, 3, 1, 2)
        return x if mode == "L" else x * 2 - 1

    @torch.no_grad()
    def __call__(
        self,
        prompt: list[str],
        negative_prompt: list[str] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: list[torch.Generator] | torch.Generator | None = None,
        image: list[Image.Image] | None = None,
        mask_image: list[Image.Image] | None = None,
        strength: float = 0.8,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        output_type: str = "pil",
        **_: Any,
    ) -> ImagePipelineOutput:
        """Generate one image per prompt; with ``image``, start from it (SDEdit), and with ``mask_image`` (white
        = repaint) keep the rest of it."""
        assert self.prompt_encoder is not None, "the loader sets prompt_encoder"
        self._interrupt = False
        batch, size = len(prompt), self.resolution
        device = self.unet.device
        cfg = guidance_scale > 1.0
        cond, _ = self.prompt_encoder.encode(prompt, device)
        # states: [2B, T, D] with the unconditional (or negative) half first, when guiding.
        states = (
            torch.cat([self.prompt_encoder.encode(negative_prompt or [""] * batch, device)[0], cond]) if cfg else cond
        )
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        # noise: [B, 3, size, size]; a list of generators gives each image its own stream, whatever the batch.
        noise = randn_tensor((batch, 3, size, size), generator=generator, device=device, dtype=torch.float32)
        known: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        if image is None:
            x = noise * self.scheduler.init_noise_sigma
        else:
            known = self._to_tensor(image, size).to(device)
            start = num_inference_steps - effective_steps(num_inference_steps, strength)
            timesteps = timesteps[start:]
            x = self.scheduler.add_noise(known, noise, timesteps[:1].repeat(batch))
            if mask_image is not None:
                mask = self._to_tensor(mask_image, size, "L").to(device).round()
        # The scheduler's state stays float32; only the UNet runs in its own dtype (bfloat16 halves its cost).
        dtype = self.unet.dtype
        states = states.to(dtype)
        for i, t in enumerate(timesteps):
            if self.interrupt:
                break
            model_in = torch.cat([x, x]) if cfg else x
            out = self.unet(model_in.to(dtype), t, encoder_hidden_states=states).sample.float()
            if cfg:
                uncond, cond_out = out.chunk(2)
                out = uncond + guidance_scale * (cond_out - uncond)
            x = self.scheduler.step(out, t, x).prev_sample
            if mask is not None and known is not None:
                # Outside the mask the image is the source, noised to the level of the step just reached.
                nxt = timesteps[i + 1] if i + 1 < len(timesteps) else None
                keep = known if nxt is None else self.scheduler.add_noise(known, noise, nxt.repeat(batch))
                x = mask * x + (1 - mask) * keep
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {})
        pixels = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().float().numpy()
        if output_type == "np":
            return ImagePipelineOutput(images=pixels)
        return ImagePipelineOutput(images=self.numpy_to_pil(pixels))


@dataclass(frozen=True)
class BatchSpec:
    """What every image of one pipeline call shares; requests batch together only when this is equal."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    # Negative prompts change the unconditional half of the batch; batches either all have them or none do.
    negative: bool = False
    # Image-to-image: how far from the source (None: text-to-image), and whether a mask is used.
    strength: float | None = None
    masked: bool = False


@dataclass
class BatchInput:
    """One pipeline call's per-image inputs (all lists of the same length)."""

    spec: BatchSpec
    prompts: list[str]
    seeds: list[int]
    negative_prompts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    masks: list[Image.Image] = field(default_factory=list)


class PipelineRunner:
    """Runs batches through a loaded pipeline; everything here runs on the engine's one torch thread."""

    def __init__(self, pipe: DiffusionPipeline, *, native_size: tuple[int, int], resize_output: bool) -> None:
        self.pipe = pipe
        self.native_size = native_size
        # True: the model always draws at native_size and the result is resized to the request's size.
        self.resize_output = resize_output
        self._img2img: DiffusionPipeline | None = None
        self._inpaint: DiffusionPipeline | None = None

    @property
    def is_pixel(self) -> bool:
        return isinstance(self.pipe, EmberPixelPipeline)

    def _variant(self, masked: bool) -> DiffusionPipeline:
        """The pipeline for image-to-image (or inpainting) calls: the same components, another call."""
        if self.is_pixel:
            return self.pipe
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        if masked:
            if self._inpaint is None:
                self._inpaint = AutoPipelineForInpainting.from_pipe(self.pipe)
                self._inpaint.set_progress_bar_config(disable=True)
            return self._inpaint
        if self._img2img is None:
            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def generate(self, batch: BatchInput, on_step: StepCallback | None = None) -> list[Image.Image]:
        """One pipeline call for the whole batch; returns one RGB image per prompt, at the requested size."""
        spec = batch.spec
        pipe = self._variant(spec.masked) if spec.strength is not None else self.pipe
        width, height = self.native_size if self.resize_output else (spec.width, spec.height)
        generators = [torch.Generator("cpu").manual_seed(s) for s in batch.seeds]
        steps_total = effective_steps(spec.steps, spec.strength)

        def callback(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None and on_step(i + 1, steps_total):
                p._interrupt = True
            return kwargs

        kwargs: dict[str, Any] = {
            "prompt": batch.prompts,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance_scale,
            "generator": generators,
            "callback_on_step_end": callback,
            "output_type": "pil",
        }
        if spec.negative:
            kwargs["negative_prompt"] = batch.negative_prompts
        if spec.strength is not None:
            kwargs["image"] = [im.convert("RGB").resize((width, height)) for im in batch.images]
            kwargs["strength"] = spec.strength
            if spec.masked:
                kwargs["mask_image"] = [m.convert("L").resize((width, height)) for m in batch.masks]
        if not self.is_pixel:
            kwargs["height"], kwargs["width"] = height, width
        images = list(pipe(**kwargs).images)
        size = (spec.width, spec.height)
        return [im.convert("RGB").resize(size, Image.Resampling.LANCZOS) if im.size != size else im for im in images]
