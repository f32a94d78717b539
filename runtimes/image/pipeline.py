"""The torch side of the image runtime: Ember's pixel-space pipeline, and one batched call for any pipeline.

``EmberPixelPipeline`` is a diffusers ``DiffusionPipeline`` (unet + scheduler, prompts encoded by MiniLM) that
denoises directly in RGB at a small resolution. ``PipelineRunner`` wraps it or any Stable Diffusion-family
pipeline and runs one batch: per-image prompts and seeds, a step callback, image-to-image and masks, and
previews (the step's prediction of the final image, x0-hat) for the rows that ask for them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ember.runtimes.image.diffusers_types import (
    DiffusionPipeline,
    ImagePipelineOutput,
    SchedulerMixin,
    UNet2DConditionModel,
)
from ember.runtimes.image.stepper import PixelStepper, RowInput, effective_steps
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

    @property
    def stepper(self) -> PixelStepper:
        """Step-level access to this pipeline (what the engine batches with); built once."""
        assert self.prompt_encoder is not None, "the loader sets prompt_encoder"
        if getattr(self, "_stepper", None) is None:
            self._stepper = PixelStepper(self.unet, self.scheduler, self.prompt_encoder)
        return self._stepper

    @torch.no_grad()
    def __call__(
        self,
        prompt: list[str],
        negative_prompt: list[str] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: list[torch.Generator] | None = None,
        image: list[Image.Image] | None = None,
        mask_image: list[Image.Image] | None = None,
        strength: float = 0.8,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        output_type: str = "pil",
        seeds: list[int] | None = None,
        **_: Any,
    ) -> ImagePipelineOutput:
        """Generate one image per prompt; with ``image``, start from it (SDEdit), and with ``mask_image`` (white
        = repaint) keep the rest of it. Image i's noise comes from ``seeds[i]`` (or ``generator[i]``)."""
        self._interrupt = False
        if seeds is None:
            gens = generator or [torch.Generator().manual_seed(i) for i in range(len(prompt))]
            seeds = [int(g.initial_seed()) for g in gens]
        negatives = negative_prompt or [""] * len(prompt)
        inputs = [
            RowInput(
                prompt=p,
                seed=seeds[i],
                steps=num_inference_steps,
                guidance_scale=guidance_scale,
                negative_prompt=negatives[i],
                image=None if image is None else image[i],
                mask=None if mask_image is None else mask_image[i],
                strength=None if image is None else strength,
            )
            for i, p in enumerate(prompt)
        ]
        rows = self.stepper.start(inputs)
        for i in range(rows[0].steps if rows else 0):
            if self.interrupt:
                break
            self.stepper.step(rows)
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, rows[0].timesteps[i], {})
        pixels = np.stack([PixelStepper.pixels(r.x) for r in rows])
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
    def stepper(self) -> PixelStepper | None:
        """Step-level batching where Ember drives the denoising loop itself (its pixel pipeline); else None."""
        return self.pipe.stepper if isinstance(self.pipe, EmberPixelPipeline) else None

    def row_input(
        self,
        spec: BatchSpec,
        prompt: str,
        seed: int,
        negative_prompt: str = "",
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> RowInput:
        """One image of a request, for the stepper."""
        return RowInput(
            prompt=prompt,
            seed=seed,
            steps=spec.steps,
            guidance_scale=spec.guidance_scale,
            negative_prompt=negative_prompt if spec.negative else "",
            image=image if spec.strength is not None else None,
            mask=mask if spec.masked else None,
            strength=spec.strength,
        )

    @staticmethod
    def fit(image: Image.Image, spec: BatchSpec) -> Image.Image:
        """An RGB image at the requested size."""
        size = (spec.width, spec.height)
        return image.convert("RGB").resize(size, Image.Resampling.LANCZOS) if image.size != size else image

    def shown_preview(
        self, image: Image.Image, spec: BatchSpec, source: Image.Image | None, mask: Image.Image | None
    ) -> Image.Image:
        """A preview at the requested size; outside an edit's mask the source, as the final image will keep it."""
        image = self.fit(image, spec)
        if spec.masked and source is not None and mask is not None:
            image = Image.composite(
                image, source.convert("RGB").resize(image.size), mask.convert("L").resize(image.size)
            )
        return image

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
        if self.stepper is not None:
            return self._generate_rows(self.stepper, batch, on_step, on_preview)
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
        kwargs["height"], kwargs["width"] = height, width
        if capture is not None:
            with capture:
                images = list(pipe(**kwargs).images)
        else:
            images = list(pipe(**kwargs).images)
        return [self.fit(im, spec) for im in images]

    def _generate_rows(
        self,
        stepper: PixelStepper,
        batch: BatchInput,
        on_step: StepCallback | None,
        on_preview: PreviewCallback | None,
    ) -> list[Image.Image]:
        """The batch as stepper rows (what the pixel pipeline always is underneath)."""
        spec = batch.spec
        n = len(batch.prompts)
        images: Sequence[Image.Image | None] = batch.images or [None] * n
        masks: Sequence[Image.Image | None] = batch.masks or [None] * n
        negatives = batch.negative_prompts or [""] * n
        rows = stepper.start(
            [
                self.row_input(spec, batch.prompts[i], batch.seeds[i], negatives[i], images[i], masks[i])
                for i in range(n)
            ]
        )
        wanted = [preview_steps(r.steps, k) for r, k in zip(rows, batch.partial_images or [0] * n, strict=True)]
        for _ in range(rows[0].steps):
            stepper.step(rows)
            step = rows[0].done
            for i, row in enumerate(rows):
                if on_preview is not None and step in wanted[i] and (preview := stepper.preview(row)) is not None:
                    on_preview(i, wanted[i].index(step), step, self.shown_preview(preview, spec, images[i], masks[i]))
            if on_step is not None and on_step(step, rows[0].steps):
                break
        return [self.fit(stepper.image(r) if r.finished else stepper.to_pil(r.x), spec) for r in rows]

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
        vae = pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = picked.to(vae.dtype) / vae.config.scaling_factor + shift
        pixels = vae.decode(latents, return_dict=False)[0].float() / 2 + 0.5
        arrays = pixels.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # [R, H, W, 3]
        for (row, j), array in zip(rows, arrays, strict=True):
            image = Image.fromarray((array * 255).round().astype(np.uint8))
            source = batch.images[row] if batch.images else None
            mask = batch.masks[row] if batch.masks else None
            on_preview(row, j, step, self.shown_preview(image, batch.spec, source, mask))
