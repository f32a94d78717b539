"""Step-level batching for Ember's pixel pipeline: every image is a Row with its own schedule, and one UNet call
advances all running rows by one denoising step, so images join and leave the batch between steps.

A row carries everything that differs between images: prompt states, seed noise, step count, guidance, a source
image and mask. The UNet takes one timestep per row, so rows at different points of different schedules share a
call; only the resolution must match, and the pixel model always draws at its native one. Each row steps its own
copy of the scheduler (a multistep scheduler keeps history per image).

    stepper = PixelStepper(pipe)
    rows = stepper.start([RowInput("a red circle", seed=7, steps=20, guidance_scale=1.5)])
    while not all(r.finished for r in rows):
        stepper.step([r for r in rows if not r.finished])
    image = stepper.image(rows[0])
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ember.runtimes.device_group.slot import with_reclaim
from ember.runtimes.image.diffusers_types import SchedulerMixin, UNet2DConditionModel
from ember.runtimes.image.text_encoder import PromptEncoder


def effective_steps(steps: int, strength: float | None) -> int:
    """Denoising steps a call really runs: image-to-image skips the first (1 - strength) of them, as diffusers does."""
    return steps if strength is None else max(1, min(int(steps * strength), steps))


def to_tensor(images: list[Image.Image], size: int, mode: str = "RGB") -> torch.Tensor:
    """[B, C, size, size] in [-1, 1] (RGB) or [0, 1] (mask, mode "L")."""
    arrays = [np.asarray(im.convert(mode).resize((size, size), Image.Resampling.LANCZOS)) for im in images]
    x = torch.from_numpy(np.stack(arrays)).float() / 255.0
    x = x.unsqueeze(1) if mode == "L" else x.permute(0, 3, 1, 2)
    return x if mode == "L" else x * 2 - 1


@dataclass
class RowInput:
    """One image to make."""

    prompt: str
    seed: int
    steps: int
    guidance_scale: float
    # Guided rows (guidance_scale > 1) steer away from this; "" is the unconditional prompt.
    negative_prompt: str = ""
    # Image-to-image: start from ``image`` noised to ``strength`` (None: 0.8); with ``mask`` (white = repaint)
    # keep the rest of it.
    image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float | None = None


@dataclass
class Row:
    """One image in flight. Tensors are float32 on the UNet's device; ``x`` is [3, H, W]."""

    x: torch.Tensor
    scheduler: SchedulerMixin
    # This row's schedule (image-to-image starts part way in); ``done`` of them are behind it.
    timesteps: torch.Tensor
    # Prompt states [T, D]; ``uncond`` only on guided rows.
    cond: torch.Tensor
    uncond: torch.Tensor | None
    guidance_scale: float
    noise: torch.Tensor
    known: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    done: int = 0
    # The latest step's estimate of the finished image (x0-hat), [3, H, W]; None before the first step.
    estimate: torch.Tensor | None = field(default=None, repr=False)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def finished(self) -> bool:
        return self.done >= self.steps


class PixelStepper:
    """Starts rows and steps any set of them together; everything here runs on the engine's one torch thread."""

    def __init__(self, unet: UNet2DConditionModel, scheduler: SchedulerMixin, encoder: PromptEncoder) -> None:
        self.unet = unet
        self.scheduler = scheduler
        self.encoder = encoder
        # A scheduler with its timesteps set, per step count; each row gets a copy.
        self._schedulers: dict[int, SchedulerMixin] = {}

    @property
    def resolution(self) -> int:
        return int(self.unet.config["sample_size"])

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _scheduler(self, steps: int) -> SchedulerMixin:
        if steps not in self._schedulers:
            scheduler = copy.deepcopy(self.scheduler)
            scheduler.set_timesteps(steps, device=self.device)
            self._schedulers[steps] = scheduler
        return copy.deepcopy(self._schedulers[steps])

    def start(self, inputs: list[RowInput]) -> list[Row]:
        """New rows (each prompt encoded on its own, so batch-mates never change it); none of their steps has run."""
        size, device = self.resolution, self.device
        guided = [inp for inp in inputs if inp.guidance_scale > 1.0]
        texts = [inp.prompt for inp in inputs] + [inp.negative_prompt for inp in guided]
        states, _ = self.encoder.encode(texts, device)
        # states: [len(inputs) + len(guided), T, D]; the guided rows' negatives follow the prompts.
        negatives = iter(states[len(inputs) :])
        rows = []
        for inp, cond in zip(inputs, states, strict=False):
            scheduler = self._scheduler(inp.steps)
            generator = torch.Generator("cpu").manual_seed(inp.seed)
            # noise: [1, 3, size, size] from the seed alone, so batch-mates never change an image.
            noise = randn_tensor((1, 3, size, size), generator=generator, device=device, dtype=torch.float32)
            timesteps = scheduler.timesteps
            known = mask = None
            if inp.image is None:
                x = noise * scheduler.init_noise_sigma
            else:
                known = to_tensor([inp.image], size).to(device)
                timesteps = timesteps[inp.steps - effective_steps(inp.steps, inp.strength) :]
                x = scheduler.add_noise(known, noise, timesteps[:1])
                if inp.mask is not None:
                    mask = to_tensor([inp.mask], size, "L").to(device).round()[0]
                known = known[0]
            guided_row = inp.guidance_scale > 1.0
            rows.append(
                Row(
                    x=x[0],
                    scheduler=scheduler,
                    timesteps=timesteps,
                    cond=cond,
                    uncond=next(negatives) if guided_row else None,
                    guidance_scale=inp.guidance_scale,
                    noise=noise[0],
                    known=known,
                    mask=mask,
                )
            )
        return rows

    @torch.no_grad()
    def step(self, rows: list[Row]) -> None:
        """Advance every row (none finished) by one step, with one UNet call for all of them."""
        assert rows and not any(r.finished for r in rows), "step only unfinished rows"
        dtype = self.unet.dtype
        guided = [i for i, r in enumerate(rows) if r.uncond is not None]
        # x: [B, 3, H, W]; t: [B]; the guided rows run twice, their unconditional copies after all B.
        x = torch.stack([r.x for r in rows])
        t = torch.stack([r.timesteps[r.done] for r in rows])
        states = torch.stack([r.cond for r in rows] + [rows[i].uncond for i in guided])  # type: ignore[misc]
        model_in = torch.cat([x, x[guided]])
        t_in = torch.cat([t, t[guided]])
        if len(model_in) == 1:
            # NOTE: CPU kernels take another path for a batch of one (GroupNorm splits its reduction otherwise),
            # and in bfloat16 that rounding difference can grow into another picture over the steps. Running a
            # lone row twice keeps "same seed, same image" whatever the batch, for the price of one tiny row.
            model_in, t_in, states = model_in.repeat(2, 1, 1, 1), t_in.repeat(2), states.repeat(2, 1, 1)
        # The forward alone changes no row, so where it runs out of device memory in a device group it may run again
        # once the group's text runtimes gave back KV blocks (device_group.slot.with_reclaim).
        out = with_reclaim(
            lambda: self.unet(model_in.to(dtype), t_in, encoder_hidden_states=states.to(dtype)).sample.float()
        )
        pred = out[: len(rows)].clone()
        if guided:
            scale = torch.tensor([rows[i].guidance_scale for i in guided], device=out.device).view(-1, 1, 1, 1)
            uncond = out[len(rows) :]
            pred[guided] = uncond + scale * (pred[guided] - uncond)
        for row, eps, t_row in zip(rows, pred, t, strict=True):
            result = row.scheduler.step(eps[None], t_row, row.x[None])
            row.x = result.prev_sample[0]
            row.estimate = getattr(result, "pred_original_sample", None)
            row.estimate = None if row.estimate is None else row.estimate[0]
            row.done += 1
            if row.mask is not None and row.known is not None:
                # Outside the mask the image is the source, noised to the level of the step just reached.
                keep = row.known
                if not row.finished:
                    nxt = row.timesteps[row.done : row.done + 1]
                    keep = row.scheduler.add_noise(row.known[None], row.noise[None], nxt)[0]
                row.x = row.mask * row.x + (1 - row.mask) * keep

    @staticmethod
    def pixels(x: torch.Tensor) -> np.ndarray:
        """[3, H, W] in [-1, 1] -> [H, W, 3] float in [0, 1]."""
        return (x / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().float().numpy()

    @classmethod
    def to_pil(cls, x: torch.Tensor) -> Image.Image:
        return Image.fromarray((cls.pixels(x) * 255).round().astype("uint8"))

    def image(self, row: Row) -> Image.Image:
        """The finished image at the model's native size."""
        assert row.finished, "the row still has steps to run"
        return self.to_pil(row.x)

    def preview(self, row: Row) -> Image.Image | None:
        """The latest step's estimate of the finished image (None before the first step)."""
        return None if row.estimate is None else self.to_pil(row.estimate)
