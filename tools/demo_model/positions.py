"""Where a shape sits, judged on a 3×3 grid of the demo world's nine named places (a development tool).

A picture's place is the named place whose drawn shape has its centre of mass nearest the picture's
foreground centre of mass (``shapes.mass_centre_of``); the nine are those of ``shapes.POSITIONS``
(None = the middle). Pure PIL/numpy.
"""

from __future__ import annotations

import functools
import math

from PIL import Image

from tools.demo_model import shapes

__all__ = ["GRID", "grid_scene", "place_of"]

# The nine named places, in reading order: top left ... bottom right.
GRID: tuple[str | None, ...] = tuple(sorted(shapes.POSITIONS, key=lambda p: shapes.POSITIONS[p][::-1]))


def grid_scene(fg: str, shape: str, bg: str, position: str | None, size: str | None = None) -> shapes.Scene:
    """A scene at one of the nine places exactly (no jitter); its caption names no place."""
    return shapes.Scene(fg, shape, bg, size, position, jitter=(0.0, 0.0))


def place_of(image: Image.Image, shape: str, size: str | None = None) -> str | None | bool:
    """The named place (a key of POSITIONS, None = the middle) nearest the picture's shape, or False when
    the picture has no foreground. Places are the centres of mass of ``shape`` drawn at each of them."""
    centre = shapes.mass_centre_of(image)
    if centre is None:
        return False
    best, best_distance = None, math.inf
    for position in GRID:
        target = _target(shape, size, position)
        distance = math.dist(centre, target)
        if distance < best_distance:
            best, best_distance = position, distance
    return best


@functools.cache
def _target(shape: str, size: str | None, position: str | None) -> tuple[float, float]:
    centre = shapes.mass_centre_of(shapes.draw(grid_scene("red", shape, "cyan", position, size)))
    assert centre is not None
    return centre
