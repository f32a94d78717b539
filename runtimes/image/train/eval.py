"""How well the shipped model draws what it is told: generate a fixed caption set and read each image back.

    python -m ember.runtimes.image.train.eval [--model runtimes/image/weights/ember-shapes] [--steps 20]

Prints colour, shape and position accuracy (position only for captions that name one) over the fixed set.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ember.runtimes.dtypes import DTYPES, resolve_dtype
from ember.runtimes.image.loader import LoadedPipeline, load_pipeline
from ember.runtimes.image.pipeline import BatchInput, BatchSpec
from ember.runtimes.image.train.shapes import COLOURS, POSITIONS, SHAPES, Reading, Scene, position_ok, read

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "weights" / "ember-shapes"


def eval_scenes() -> list[Scene]:
    """The fixed set: every colour x shape without a position, plus each shape at each position in rotating colours."""
    scenes = [Scene(c, s) for c in COLOURS for s in SHAPES]
    colours = list(COLOURS)
    for i, (s, p) in enumerate((s, p) for s in SHAPES for p in POSITIONS):
        scenes.append(Scene(colours[i % len(colours)], s, p))
    return scenes


@dataclass
class Scored:
    scene: Scene
    seed: int
    reading: Reading

    @property
    def colour_ok(self) -> bool:
        return self.reading.colour == self.scene.colour

    @property
    def shape_ok(self) -> bool:
        return self.reading.shape == self.scene.shape

    @property
    def position_ok(self) -> bool:
        return position_ok(self.reading, self.scene.position)


def generate(
    loaded: LoadedPipeline, prompts: list[str], seeds: list[int], steps: int, guidance: float
) -> list[Image.Image]:
    """Native-size images for prompts, in batches of 16."""
    w, h = loaded.runner.native_size
    spec = BatchSpec(width=w, height=h, steps=steps, guidance_scale=guidance)
    out: list[Image.Image] = []
    for i in range(0, len(prompts), 16):
        batch = BatchInput(spec=spec, prompts=prompts[i : i + 16], seeds=seeds[i : i + 16])
        out += loaded.runner.generate(batch)
    return out


def evaluate(
    loaded: LoadedPipeline, scenes: list[Scene], seeds: list[int], steps: int, guidance: float
) -> list[Scored]:
    """Each scene once per seed, read back."""
    jobs = [(sc, seed) for sc in scenes for seed in seeds]
    images = generate(loaded, [sc.caption() for sc, _ in jobs], [seed for _, seed in jobs], steps, guidance)
    return [Scored(sc, seed, read(im)) for (sc, seed), im in zip(jobs, images, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--seeds", type=int, default=2)
    # One thread by default: on a shared machine a second OpenMP thread mostly waits (see train.py).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=[*DTYPES, "auto"], default="float32", help="what the UNet runs in")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_pipeline(args.model, dtype=resolve_dtype(args.dtype))
    guidance = loaded.default_guidance_scale if args.guidance is None else args.guidance
    scored = evaluate(loaded, eval_scenes(), list(range(args.seeds)), args.steps, guidance)
    placed = [s for s in scored if s.scene.position is not None]
    both = sum(s.colour_ok and s.shape_ok for s in scored)
    dtype = loaded.runner.pipe.unet.dtype
    print(f"model {args.model} {dtype} steps={args.steps} guidance={guidance} images={len(scored)}")
    print(f"{'metric':<22}{'correct':>10}{'accuracy':>10}")
    for name, ok, total in (
        ("colour", sum(s.colour_ok for s in scored), len(scored)),
        ("shape", sum(s.shape_ok for s in scored), len(scored)),
        ("colour and shape", both, len(scored)),
        ("position", sum(s.position_ok for s in placed), len(placed)),
    ):
        print(f"{name:<22}{ok:>6}/{total:<3}{ok / total:>10.1%}")
    for shape in SHAPES:
        of = [s for s in scored if s.scene.shape == shape]
        print(f"  shape {shape:<14}{sum(s.shape_ok for s in of):>6}/{len(of):<3}")


if __name__ == "__main__":
    main()
