"""The captioned-shapes dataset: Pillow renders a coloured shape on white, and a classifier reads one back.

The same vocabulary drives training captions, the eval's fixed caption set and the quality test's checks.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Reference RGB of every colour word; the classifier maps a foreground mean to the nearest one.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 40, 180),
}
SHAPES = ("circle", "square", "triangle")
# Where a positional caption puts the shape's centre, as fractions of the canvas (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "on the left": (0.27, 0.5),
    "on the right": (0.73, 0.5),
    "at the top": (0.5, 0.27),
    "at the bottom": (0.5, 0.73),
    "in the center": (0.5, 0.5),
}
BACKGROUND = (255, 255, 255)
# Rendered this many times larger, then downsampled, for anti-aliased edges.
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """What a caption asks for; position None means anywhere."""

    colour: str
    shape: str
    position: str | None = None

    def caption(self, template: int = 0) -> str:
        """The caption in one of a few phrasings."""
        where = f" {self.position}" if self.position else ""
        if template == 1:
            return f"{self.colour} {self.shape}{where}"
        if template == 2:
            return f"a {self.shape} in {self.colour}{where}"
        return f"a {self.colour} {self.shape}{where}"


N_TEMPLATES = 3


def all_scenes() -> list[Scene]:
    """Every colour x shape x (no position | each position)."""
    positions: list[str | None] = [None, *POSITIONS]
    return [Scene(c, s, p) for c in COLOURS for s in SHAPES for p in positions]


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """One RGB image of ``scene``: random scale and jitter, on white."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    half = rng.uniform(0.17, 0.23) * big
    if scene.position is None:
        cx, cy = rng.uniform(half + 1, big - half - 1), rng.uniform(half + 1, big - half - 1)
    else:
        fx, fy = POSITIONS[scene.position]
        cx = fx * big + rng.uniform(-0.04, 0.04) * big
        cy = fy * big + rng.uniform(-0.04, 0.04) * big
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:
        # Upright equilateral-ish triangle inscribed in the same box.
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return img.resize((size, size), Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class Reading:
    """What the classifier sees in an image; fields are None when there is no clear foreground."""

    colour: str | None
    shape: str | None
    # Foreground centre as fractions of the canvas (x, y).
    centre: tuple[float, float] | None
    # Share of the canvas that is foreground.
    coverage: float
    # Foreground pixels over their bounding box: ~1 square, ~0.79 circle, ~0.5 triangle.
    fill_ratio: float


def read(img: Image.Image) -> Reading:
    """Classify the dominant shape in an image: colour from the foreground mean, shape from its fill ratio."""
    px = np.asarray(img.convert("RGB"), dtype=np.float32)
    # Foreground: clearly away from the white background.
    dist = np.abs(px - np.array(BACKGROUND, dtype=np.float32)).max(axis=-1)
    mask = dist > 80
    coverage = float(mask.mean())
    if mask.sum() < max(4, 0.01 * mask.size):
        return Reading(None, None, None, coverage, 0.0)
    mean = px[mask].mean(axis=0)
    colour = min(COLOURS, key=lambda c: float(np.sum((mean - np.array(COLOURS[c])) ** 2)))
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill_ratio = float(mask.sum() / box)
    # Thresholds sit between the ideal ratios (square 1, circle pi/4, triangle 1/2), the square one lower than
    # the midpoint since corners come out slightly rounded at 32 px.
    shape = "square" if fill_ratio > 0.84 else "circle" if fill_ratio > 0.64 else "triangle"
    h, w = mask.shape
    centre = (float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h)
    return Reading(colour, shape, centre, coverage, fill_ratio)


def position_ok(reading: Reading, position: str | None) -> bool:
    """Whether the foreground sits where the caption said (always true with no position)."""
    if position is None:
        return True
    if reading.centre is None:
        return False
    fx, fy = POSITIONS[position]
    return math.dist(reading.centre, (fx, fy)) < 0.17
