"""The torch side of the image runtime: Ember's pixel-space pipeline, and one batched call for any pipeline.

``EmberPixelPipeline`` is a diffusers ``DiffusionPipeline`` (unet + scheduler, prompts encoded by MiniLM) that
denoises directly in RGB at a small resolution. ``PipelineRunner`` wraps it or any Stable Diffusion-family
pipeline and runs one batch: per-image prompts and seeds, a step callback, image-to-image and masks, and
previews (the step's prediction of the final image, x0-hat) for the rows that ask for them.
"""

from __future__ import annotations

import functools
import math
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
# Called with (row of the batch, its preview's number 0, 1, ..., the step it was taken after, the preview at the
# requested size), before the StepCallback of that step.
PreviewCallback = Callable[[int, int, int, Image.Image], None]


def preview_steps(steps: int, partial_images: int) -> list[int]:
    """After which steps (1-based, of ``steps``) a row that wants ``partial_images`` previews gets them.

    Evenly spaced: preview j after step round(steps * (j + 1) / (partial_images + 1)). Never after the last step
    (that is the final image), so with few steps a row gets fewer previews than it asked for, as OpenAI allows.
    """
    chosen = {math.floor(steps * (j + 1) / (partial_images + 1) + 0.5) for j in range(partial_images)}
    return sorted(s for s in chosen if 1 <= s < steps)


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
    # Previews wanted per row (see preview_steps); empty: none for any row. Rows may differ.
    partial_images: list[int] = field(default_factory=list)


class _X0Capture:
    """Keeps the latest ``scheduler.step`` prediction of the final sample (x0-hat) while the block runs.

    diffusers' pipelines do not hand the step's output to ``callback_on_step_end`` (only the new latents), so the
    scheduler's ``step`` is wrapped on the instance for one call. The wrapper keeps ``step``'s signature (the
    pipelines inspect it for ``eta`` and ``generator``) and its return value, so the images do not change.
    Schedulers that predict no x0 (PNDM, DPM-Solver multistep, ...) leave ``x0`` None: such pipelines get no
    previews rather than a noisy latent passed off as one.
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        # [B, C, h, w]: the batch's x0-hat after the latest step (pixels in [-1, 1], or latents).
        self.x0: torch.Tensor | None = None

    def __enter__(self) -> _X0Capture:
        original = self.scheduler.step

        @functools.wraps(original)
        def step(*args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
            out = original(*args, return_dict=True, **kwargs)
            x0 = getattr(out, "pred_original_sample", None)
            self.x0 = x0 if x0 is not None else getattr(out, "denoised", None)  # LCM names it "denoised"
            return out if return_dict else out.to_tuple()

        self.scheduler.step = step
        return self

    def __exit__(self, *exc: object) -> None:
        del self.scheduler.step  # the class's method again


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

    @property
    def can_preview(self) -> bool:
        """Whether x0-hat can be shown: pixels already (Ember's pipeline), or 4-D latents with a VAE (SD family).

        Other pipelines (packed transformer latents, ...) get no previews.
        """
        return self.is_pixel or (hasattr(self.pipe, "vae") and hasattr(self.pipe, "unet"))

    def generate(
        self, batch: BatchInput, on_step: StepCallback | None = None, on_preview: PreviewCallback | None = None
    ) -> list[Image.Image]:
        """One pipeline call for the whole batch; returns one RGB image per prompt, at the requested size.

        ``on_preview`` gets the previews that ``batch.partial_images`` asks for; only those rows, at those steps,
        are decoded.
        """
        spec = batch.spec
        pipe = self._variant(spec.masked) if spec.strength is not None else self.pipe
        width, height = self.native_size if self.resize_output else (spec.width, spec.height)
        generators = [torch.Generator("cpu").manual_seed(s) for s in batch.seeds]
        steps_total = effective_steps(spec.steps, spec.strength)
        # step -> [(row, preview number)]
        wanted: dict[int, list[tuple[int, int]]] = {}
        if on_preview is not None and self.can_preview:
            for row, k in enumerate(batch.partial_images):
                for j, step in enumerate(preview_steps(steps_total, k)):
                    wanted.setdefault(step, []).append((row, j))
        capture = _X0Capture(pipe.scheduler) if wanted else None

        def callback(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if capture is not None and capture.x0 is not None and i + 1 in wanted:
                assert on_preview is not None
                self._previews(pipe, capture.x0, i + 1, wanted[i + 1], batch, on_preview)
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
        if capture is not None:
            with capture:
                images = list(pipe(**kwargs).images)
        else:
            images = list(pipe(**kwargs).images)
        size = (spec.width, spec.height)
        return [im.convert("RGB").resize(size, Image.Resampling.LANCZOS) if im.size != size else im for im in images]

    @torch.no_grad()
    def _previews(
        self,
        pipe: DiffusionPipeline,
        x0: torch.Tensor,
        step: int,
        rows: list[tuple[int, int]],
        batch: BatchInput,
        on_preview: PreviewCallback,
    ) -> None:
        """Decode x0-hat of ``rows`` only, as RGB at the requested size, and hand each to ``on_preview``."""
        picked = x0[[row for row, _ in rows]]  # [R, C, h, w]
        if self.is_pixel:
            pixels = picked.float() / 2 + 0.5
        else:
            vae = pipe.vae
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            latents = picked.to(vae.dtype) / vae.config.scaling_factor + shift
            pixels = vae.decode(latents, return_dict=False)[0].float() / 2 + 0.5
        arrays = pixels.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # [R, H, W, 3]
        size = (batch.spec.width, batch.spec.height)
        for (row, j), array in zip(rows, arrays, strict=True):
            image = Image.fromarray((array * 255).round().astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
            if batch.spec.masked:
                # Outside the mask an edit keeps the source: show it there, as the final image will.
                source = batch.images[row].convert("RGB").resize(size)
                image = Image.composite(image, source, batch.masks[row].convert("L").resize(size))
            on_preview(row, j, step, image)
