"""Outline maps of the demo world: white lines on black, where a shape's edge is (a development tool).

The built-in demo ControlNet (``tools.demo_model.train_controlnet``) learns from these, and its
benchmark and test draw their control maps with them. Two families:

- geometry outlines: the shape's edge traced from the scene's own geometry (``shapes.shape_box``),
  a ring of a given width centred on the boundary, anti-aliased;
- Canny maps of drawn pictures, as a user makes them with the canny preprocessor: ``cv2.Canny`` of
  the RGB picture (OpenCV takes the strongest channel's gradient), at the picture's size or
  enlarged first (the preprocessor's resolution) and brought back to 64×64 the way a control map is
  fitted to the picture (area, then Otsu back to two levels, as the extension's high-quality resize).

Maps are 8-bit single-channel arrays (0 = no line, 255 = line); ``to_rgb`` makes the RGB picture a
pipeline takes.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from PIL import Image, ImageDraw

from tools.demo_model import shapes

__all__ = ["canny_map", "fit_binary", "outline_map", "placed_scene", "to_rgb"]

_SUPERSAMPLE = 4


def outline_map(scene: shapes.Scene, size: int = shapes.IMAGE_SIZE, line: float = 1.5) -> np.ndarray:
    """The scene's shape outline: a ring ``line`` pixels wide centred on its edge, anti-aliased."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    cx, cy, width = shapes.shape_box(scene, size)
    shapes.draw_shape(ImageDraw.Draw(canvas), scene.shape, cx * s, cy * s, width * s, 255)
    filled = np.asarray(canvas)
    radius = max(1, round(line * s / 2))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    ring = cv2.dilate(filled, kernel) - cv2.erode(filled, kernel)
    return np.asarray(Image.fromarray(ring).resize((size, size), Image.Resampling.BOX))


def canny_map(picture: Image.Image, low: int = 100, high: int = 200, resolution: int | None = None,
              size: int = shapes.IMAGE_SIZE) -> np.ndarray:
    """``cv2.Canny`` of an RGB picture, optionally enlarged (cubic) to ``resolution`` first, fitted to ``size``."""
    arr = np.asarray(picture.convert("RGB"))
    if resolution is not None and resolution != arr.shape[0]:
        arr = cv2.resize(arr, (resolution, resolution), interpolation=cv2.INTER_CUBIC)
    edges = cv2.Canny(arr, low, high)
    return fit_binary(edges, size) if edges.shape[0] != size else edges


def fit_binary(edges: np.ndarray, size: int) -> np.ndarray:
    """A two-level line map resized to ``size``: area resampling, then Otsu back to two levels."""
    small = cv2.resize(edges, (size, size), interpolation=cv2.INTER_AREA)
    if small.max() == 0:
        return small
    _, out = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return out


def to_rgb(edge_map: np.ndarray) -> Image.Image:
    """The RGB picture of a map (the channels equal), as a control image is given to a pipeline."""
    return Image.fromarray(np.repeat(edge_map[:, :, None], 3, axis=2))


def placed_scene(rng: np.random.Generator) -> shapes.Scene:
    """A random scene whose shape may sit anywhere: the caption names the place in a third of them
    (one of the nine named places), the others are placed uniformly and their caption says nothing."""
    scene = shapes.random_scene(rng)
    size = list(shapes.SIZES)[rng.choice(3, p=[0.5, 0.25, 0.25])]
    if rng.random() < 1 / 3:
        position = list(shapes.POSITIONS)[1:][rng.integers(len(shapes.POSITIONS) - 1)]
        return dataclasses.replace(scene, size=size, position=position)
    # Position None puts the shape in the middle; a jitter over the whole free room moves it anywhere.
    room = shapes.IMAGE_SIZE - 2 * shapes.MARGIN - shapes.SIZES[size]
    jitter = (float(rng.uniform(-room / 2, room / 2)), float(rng.uniform(-room / 2, room / 2)))
    return dataclasses.replace(scene, size=size, position=None, jitter=jitter)
