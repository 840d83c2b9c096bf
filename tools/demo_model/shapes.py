"""Coloured shapes on coloured backgrounds: the built-in demo model's world.

Shared by the training script (``tools.demo_model.train``, which draws its pictures with PIL), the
quality benchmark (``benchmarks.demo_quality``) and the tests; a development tool, not shipped.
Pure PIL/numpy: the classifier here knows nothing of any model. It finds the background as the
colour of the picture's border, the foreground as what differs from it, names colours by hue and
shapes by how much of their bounding box they fill.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUND_TEMPLATES",
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "caption",
    "centre_of",
    "classify",
    "draw",
    "eval_background",
    "mass_centre_of",
    "random_scene",
    "shape_box",
    "with_article",
]

IMAGE_SIZE = 64

# Hues at least 28° apart, all saturated and bright, so mean hue alone tells them apart.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 125, 10),
    "yellow": (240, 220, 20),
    "green": (30, 160, 50),
    "cyan": (20, 200, 215),
    "blue": (30, 60, 225),
    "purple": (135, 40, 205),
    "pink": (235, 70, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

# Size word -> shape width in pixels at 64x64 (None = no word in the caption).
SIZES: dict[str | None, int] = {None: 30, "small": 20, "large": 40}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}

# Position phrase -> (x, y) in units of the free room around the shape: 0 = left/top edge, 1 = right/bottom.
POSITIONS: dict[str | None, tuple[float, float]] = {
    None: (0.5, 0.5),
    "in the top left": (0.0, 0.0),
    "in the top right": (1.0, 0.0),
    "in the bottom left": (0.0, 1.0),
    "in the bottom right": (1.0, 1.0),
    "on the left": (0.0, 0.5),
    "on the right": (1.0, 0.5),
    "at the top": (0.5, 0.0),
    "at the bottom": (0.5, 1.0),
}

# {obj} is "a red circle" (with size word and position); {bg} a colour name, {bg_a} "a red" / "an orange".
BACKGROUND_TEMPLATES: tuple[str, ...] = (
    "{obj} on {bg_a} background",
    "{obj} against {bg_a} background",
    "a picture of {obj} on {bg_a} background",
    "{bg} background, {obj}",
)
PLAIN_TEMPLATES: tuple[str, ...] = ("{obj}", "a picture of {obj}")

MARGIN = 3  # pixels kept free between a placed shape and the picture's edge
_SUPERSAMPLE = 4  # drawn larger and scaled down, for smooth edges


@dataclass(frozen=True)
class Scene:
    fg: str
    shape: str
    bg: str
    size: str | None = None  # "small", "large" or None
    position: str | None = None  # a key of POSITIONS
    mention_bg: bool = True
    template: int = 0
    jitter: tuple[float, float] = (0.0, 0.0)  # pixels, so unplaced shapes are not all at one spot


def eval_background(fg: str, index: int) -> str:
    """The background paired with ``fg`` in the benchmark: cycles through the other colours."""
    names = list(COLOURS)
    others = [c for c in names if c != fg]
    return others[index % len(others)]


def random_scene(rng: np.random.Generator) -> Scene:
    """One random scene as the training script samples them (about half plain, half with extras)."""
    names = list(COLOURS)
    fg = names[rng.integers(len(names))]
    bg = [c for c in names if c != fg][rng.integers(len(names) - 1)]
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = None if rng.random() < 0.7 else ("small" if rng.random() < 0.5 else "large")
    positions = list(POSITIONS)[1:]
    position = None if rng.random() < 0.7 else positions[rng.integers(len(positions))]
    mention_bg = bool(rng.random() < 0.85)
    templates = BACKGROUND_TEMPLATES if mention_bg else PLAIN_TEMPLATES
    template = int(rng.integers(len(templates)))
    jitter = (float(rng.uniform(-2.5, 2.5)), float(rng.uniform(-2.5, 2.5)))
    return Scene(fg, shape, bg, size, position, mention_bg, template, jitter)


def with_article(words: str) -> str:
    """"a red circle", "an orange star"."""
    return ("an " if words[:1] in "aeiou" else "a ") + words


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """The caption of a scene; ``rng`` picks a synonym for the size word (the first one without it)."""
    words = []
    if scene.size is not None:
        synonyms = SIZE_SYNONYMS[scene.size]
        words.append(synonyms[rng.integers(len(synonyms))] if rng is not None else synonyms[0])
    words += [scene.fg, scene.shape]
    obj = with_article(" ".join(words))
    if scene.position is not None:
        obj += " " + scene.position
    if scene.mention_bg:
        template = BACKGROUND_TEMPLATES[scene.template % len(BACKGROUND_TEMPLATES)]
        return template.format(obj=obj, bg=scene.bg, bg_a=with_article(scene.bg))
    return PLAIN_TEMPLATES[scene.template % len(PLAIN_TEMPLATES)].format(obj=obj)


def shape_box(scene: Scene, image_size: int) -> tuple[float, float, float]:
    """Centre x, centre y and width of the shape, in pixels of the final picture."""
    width = SIZES[scene.size] * image_size / IMAGE_SIZE
    fx, fy = POSITIONS[scene.position]
    room = image_size - 2 * MARGIN - width
    cx = MARGIN + width / 2 + fx * room + scene.jitter[0]
    cy = MARGIN + width / 2 + fy * room + scene.jitter[1]
    return cx, cy, width


def _star(cx: float, cy: float, width: float) -> list[tuple[float, float]]:
    # Outer radius from the width (tip to tip across is 2R·sin 72°); inner radius 0.4 R for deep notches.
    outer = width / (2 * math.sin(math.radians(72)))
    inner = 0.4 * outer
    height = outer * (1 + math.cos(math.radians(36)))
    top = cy - height / 2
    centre_y = top + outer
    points = []
    for k in range(10):
        radius = outer if k % 2 == 0 else inner
        angle = math.radians(-90 + 36 * k)
        points.append((cx + radius * math.cos(angle), centre_y + radius * math.sin(angle)))
    return points


def draw_shape(draw_: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, width: float, fill: tuple) -> None:
    """Draw one shape centred at (cx, cy) whose bounding box is ``width`` wide."""
    half = width / 2
    if shape == "circle":
        draw_.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "square":
        draw_.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "triangle":
        draw_.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    elif shape == "star":
        draw_.polygon(_star(cx, cy, width), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def draw(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The picture of a scene: a flat background and one flat shape, anti-aliased."""
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLOURS[scene.bg])
    cx, cy, width = shape_box(scene, size)
    s = _SUPERSAMPLE
    draw_shape(ImageDraw.Draw(image), scene.shape, cx * s, cy * s, width * s, COLOURS[scene.fg])
    return image.resize((size, size), Image.Resampling.BOX)


# --------------------------------------------------------------------------- classifier

_HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for name, rgb in COLOURS.items()}


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


def nearest_colour(hue: float) -> str:
    return min(_HUES, key=lambda name: _hue_distance(hue, _HUES[name]))


def _hues(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees and saturation (max - min, 0..1) of an (N, 3) array of 0..1 floats."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    chroma = mx - mn
    safe = np.where(chroma > 1e-6, chroma, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return hue * 60.0, chroma


def mean_hue(rgb: np.ndarray) -> float:
    """Circular mean hue, weighted by saturation so greyish pixels count little."""
    hue, chroma = _hues(rgb)
    angle = np.radians(hue)
    x, y = (chroma * np.cos(angle)).sum(), (chroma * np.sin(angle)).sum()
    return float(math.degrees(math.atan2(y, x)) % 360)


def foreground_mask(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(mask of foreground pixels, background RGB 0..1): foreground = far from the border's median colour."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3),
                             arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    distance = np.sqrt(((arr - bg) ** 2).sum(axis=2))
    mask = distance > 0.25
    # Drop specks: keep pixels with at least 4 foreground neighbours in their 3x3 block.
    padded = np.pad(mask, 1).astype(np.int8)
    h, w = mask.shape
    neighbours = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    return mask & (neighbours >= 5), bg


def shape_of(mask: np.ndarray) -> str:
    """Name a shape from its mask: fill of the bounding box, and how full the bottom band is."""
    if mask.sum() < 12:
        return "none"
    rows = np.where(mask.any(axis=1))[0]
    cols = np.where(mask.any(axis=0))[0]
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    box = mask[top:bottom + 1, left:right + 1]
    fill = box.mean()
    band = box[-max(2, box.shape[0] // 5):]  # bottom fifth: a triangle's base is solid, a star has two legs
    if fill > 0.88:
        return "square"
    if fill > 0.65:
        return "circle"
    if band.mean() > 0.55 and fill > 0.4:
        return "triangle"
    return "star"


def classify(image: Image.Image) -> tuple[str, str, str]:
    """(background colour, foreground colour, shape) of a picture; shape "none" if nothing stands out."""
    mask, bg = foreground_mask(image)
    bg_name = nearest_colour(mean_hue(bg[None, :]))
    if mask.sum() < 12:
        return bg_name, "none", "none"
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    fg_name = nearest_colour(mean_hue(arr[mask]))
    return bg_name, fg_name, shape_of(mask)


def centre_of(image: Image.Image) -> tuple[float, float] | None:
    """Centre (x, y) of the foreground's bounding box, or None if there is none."""
    mask, _ = foreground_mask(image)
    if mask.sum() < 12:
        return None
    rows = np.where(mask.any(axis=1))[0]
    cols = np.where(mask.any(axis=0))[0]
    return (cols[0] + cols[-1]) / 2, (rows[0] + rows[-1]) / 2


def mass_centre_of(image: Image.Image) -> tuple[float, float] | None:
    """Centre of mass (x, y) of the foreground pixels, or None if there is none: where the shape sits,
    less swayed than the bounding box by a stray blob at one side."""
    mask, _ = foreground_mask(image)
    if mask.sum() < 12:
        return None
    rows, cols = np.nonzero(mask)
    return float(cols.mean()), float(rows.mean())
