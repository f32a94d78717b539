"""Train Ember's default image model: a small pixel-space UNet2DConditionModel on the captioned-shapes dataset.

Saves a diffusers-layout folder (model_index.json, unet/, scheduler/, ember_pipeline.json) that refers to the
MiniLM text-encoder package rather than copying it. Checkpoints (EMA weights) are written every few minutes, so a
run can be stopped at any time and its last checkpoint shipped::

    nice python -m ember.runtimes.image.train.train --out runtimes/image/weights/ember-shapes --minutes 30
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ember.runtimes.image.diffusers_types import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from ember.runtimes.image.text_encoder import DEFAULT_PACKAGE, DEFAULT_SUBDIR, PromptEncoder
from ember.runtimes.image.train.shapes import N_TEMPLATES, all_scenes, render

# The scheduler the model is trained with and sampled with (DDIM reuses its betas).
NUM_TRAIN_TIMESTEPS = 1000
SCHEDULE = {
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": True,
}


def build_unet(size: int, cross_dim: int) -> UNet2DConditionModel:
    """A ~1.6M-parameter UNet; cross-attention only at the lowest resolution keeps a training step cheap on CPU."""
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=cross_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def save_pipeline(unet: UNet2DConditionModel, out: Path, *, size: int, max_tokens: int, meta: dict) -> None:
    """Write the diffusers-layout folder atomically (a temp folder renamed over the old one)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp / "unet")
    DDIMScheduler(**SCHEDULE).save_pretrained(tmp / "scheduler")
    import diffusers

    index = {
        "_class_name": "EmberPixelPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    ember = {
        "text_encoder_package": DEFAULT_PACKAGE,
        "text_encoder_subdir": DEFAULT_SUBDIR,
        "max_tokens": max_tokens,
        "resolution": size,
        "default_steps": 20,
        # Light guidance: the unconditional branch (10% of training) is the weaker one, and strong guidance
        # mixes colours (eval: guidance 1.5 beats 3.0 by far).
        "default_guidance_scale": 1.5,
        "training": meta,
    }
    (tmp / "ember_pipeline.json").write_text(json.dumps(ember, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--checkpoint-minutes", type=float, default=3.0)
    ap.add_argument("--uncond-prob", type=float, default=0.1)
    # One thread: on a shared machine a second OpenMP thread waits at every op's barrier for a descheduled
    # sibling (measured here: 0.7 it/s fell to 0.05 it/s once other jobs ran).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None, help="continue from this pipeline folder's unet")
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rng = random.Random(args.seed)
    encoder = PromptEncoder.from_package()
    scenes = all_scenes()
    captions = [s.caption(t) for s in scenes for t in range(N_TEMPLATES)]
    # Every caption is encoded once up front; index len(captions) is the empty (unconditional) prompt.
    states, _ = encoder.encode([*captions, ""])
    print(f"{len(captions)} captions, states {tuple(states.shape)}", flush=True)

    unet = build_unet(args.size, encoder.dim)
    if args.init is not None:
        unet = UNet2DConditionModel.from_pretrained(str(args.init / "unet")).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    print(f"unet params: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M", flush=True)
    sched = DDPMScheduler(**SCHEDULE)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    start = last_ckpt = time.monotonic()
    step, losses = 0, []
    while True:
        elapsed = time.monotonic() - start
        # Warmup, then cosine decay over the time budget.
        frac = min(1.0, elapsed / (args.minutes * 60))
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup)) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = [rng.randrange(len(captions)) for _ in range(args.batch)]
        imgs = [render(scenes[i // N_TEMPLATES], args.size, rng) for i in idx]
        x0 = torch.from_numpy(np.stack([np.asarray(im) for im in imgs])).permute(0, 3, 1, 2).float() / 127.5 - 1
        cond = torch.tensor([len(captions) if rng.random() < args.uncond_prob else i for i in idx])
        noise = torch.randn_like(x0)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (args.batch,))
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=states[cond]).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            rate = step / (time.monotonic() - start)
            print(f"step {step} loss {np.mean(losses[-50:]):.4f} lr {lr:.2e} {rate:.2f} it/s", flush=True)
        now = time.monotonic()
        done = now - start > args.minutes * 60
        if done or now - last_ckpt > args.checkpoint_minutes * 60:
            meta = {"steps": step, "batch": args.batch, "loss": float(np.mean(losses[-200:]))}
            save_pipeline(ema, args.out, size=args.size, max_tokens=encoder.max_tokens, meta=meta)
            print(f"checkpoint at step {step} -> {args.out}", flush=True)
            last_ckpt = now
        if done:
            break


if __name__ == "__main__":
    main()
