"""Fitting a control map to the picture, by the unit's resize mode, as sd-webui-controlnet does it:

- Just Resize: stretched to the picture's size;
- Crop and Resize: scaled to cover the picture, the overflow cut evenly from both sides;
- Resize and Fill: scaled to fit inside, the rest filled with the median colour of the map's border.

Resampling follows the extension's "high quality resize": maps of a few flat colours (segmentation,
poses) use nearest-neighbour, black-and-white line maps are resampled and thresholded back to two levels
(Otsu) so thin lines stay crisp (the extension also thins them; that step is left out), everything else uses
area when shrinking and cubic when enlarging.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from . import inpaint
from .units import ControlResizeMode


def _colour_count(x: np.ndarray, limit: int = 256) -> int:
    """Distinct RGB colours (stops counting above ``limit``; a sample for big maps is enough to tell)."""
    flat = x.reshape(-1, x.shape[2])
    if flat.shape[0] > 1 << 18:
        flat = flat[:: flat.shape[0] // (1 << 18)]
    packed = flat[:, 0].astype(np.uint32) << 16 | flat[:, 1].astype(np.uint32) << 8 | flat[:, 2].astype(np.uint32)
    return min(int(np.unique(packed).size), limit + 1)


def high_quality_resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    if x.shape[0] == height and x.shape[1] == width:
        return x
    if x.shape[2] == 4:  # an inpaint map: the picture as below, its mask (alpha) kept binary
        rgb = high_quality_resize(np.ascontiguousarray(x[:, :, :3]), width, height)
        alpha = cv2.resize(np.ascontiguousarray(x[:, :, 3]), (width, height), interpolation=cv2.INTER_LINEAR)
        return np.concatenate([rgb, ((alpha > 127) * 255).astype(np.uint8)[:, :, None]], axis=2)
    smaller = width * height < x.shape[0] * x.shape[1]
    colours = _colour_count(x)
    binary = colours == 2 and int(x.min()) < 16 and int(x.max()) > 240
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    elif smaller:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    y = cv2.resize(x, (width, height), interpolation=interpolation)
    if binary:
        gray = np.mean(y.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        y = np.stack([gray] * 3, axis=2)
    return y


def fit_map(x: np.ndarray, width: int, height: int, mode: ControlResizeMode) -> np.ndarray:
    """``x`` (H, W, 3 uint8; 4 for an inpaint map, its mask as alpha) fitted to width x height."""
    if mode is ControlResizeMode.JUST_RESIZE:
        return np.ascontiguousarray(high_quality_resize(x, width, height))
    old_h, old_w = x.shape[:2]
    k_h, k_w = height / old_h, width / old_w
    if mode is ControlResizeMode.RESIZE_AND_FILL:
        k = min(k_h, k_w)
        border = np.concatenate([x[0, :, :], x[-1, :, :], x[:, 0, :], x[:, -1, :]], axis=0)
        colour = np.median(border, axis=0).astype(x.dtype)
        if colour.shape[0] == 4:
            colour[3] = 255  # an inpaint map's added border is masked: it is to be drawn
        canvas = np.tile(colour[None, None], (height, width, 1))
        inner = high_quality_resize(x, max(1, int(round(old_w * k))), max(1, int(round(old_h * k))))
        new_h, new_w = inner.shape[:2]
        top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        canvas[top:top + new_h, left:left + new_w] = inner[:height, :width]
        return canvas
    k = max(k_h, k_w)
    outer = high_quality_resize(x, max(width, int(round(old_w * k))), max(height, int(round(old_h * k))))
    new_h, new_w = outer.shape[:2]
    top, left = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
    return np.ascontiguousarray(outer[top:top + height, left:left + width])


def to_image(x: np.ndarray) -> Image.Image:
    if x.shape[2] == 4:
        return inpaint.preview(x)
    return Image.fromarray(np.ascontiguousarray(x), "RGB")
