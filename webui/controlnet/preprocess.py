"""The weight-free preprocessors, as sd-webui-controlnet computes them, with OpenCV and numpy.

Each takes an RGB uint8 array (H, W, 3), the preprocessor resolution (the short side it works at) and the
two thresholds, and returns the control map as an RGB uint8 array. Maps come out at the working resolution;
``maps.fit_map`` later fits them to the picture. ``run`` is the entry point (the preview button and the
``/controlnet/detect`` route use it too); the weight-based ones go through ``annotators`` (which files)
and ``annotator_maps`` (the networks, from the library's AnnotatorStore).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from . import annotators, catalog, inpaint
from .units import ControlResizeMode, UnitError


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """An RGB uint8 array; transparent pixels become white (the extension's HWC3 blends alpha onto white)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def resize_short_side(img: np.ndarray, resolution: int) -> np.ndarray:
    """Scaled so the short side is ``resolution`` (cubic when enlarging, area when shrinking), as the
    extension's resize_image_with_pad does before a preprocessor runs (its 64-pixel edge padding is cut off
    again afterwards, so it is left out here)."""
    height, width = img.shape[:2]
    k = float(resolution) / float(min(height, width))
    size = (max(1, int(round(width * k))), max(1, int(round(height * k))))
    if size == (width, height):
        return img
    interpolation = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    return cv2.resize(img, size, interpolation=interpolation)


def pixel_perfect_resolution(image_size: tuple[int, int], target_width: int, target_height: int,
                             resize_mode: ControlResizeMode) -> int:
    """The preprocessor resolution that makes the map's pixels land 1:1 on the picture's (the extension's
    pixel_perfect_resolution): the short side the image has once fitted to the target size."""
    raw_w, raw_h = image_size
    k_h, k_w = target_height / raw_h, target_width / raw_w
    k = min(k_h, k_w) if resize_mode is ControlResizeMode.RESIZE_AND_FILL else max(k_h, k_w)
    return int(np.round(k * min(raw_h, raw_w)))


def _none(img: np.ndarray, res: int, a: float, b: float, seed: int) -> np.ndarray:
    return img


def _invert(img: np.ndarray, res: int, a: float, b: float, seed: int) -> np.ndarray:
    return 255 - img


def _canny(img: np.ndarray, res: int, low: float, high: float, seed: int) -> np.ndarray:
    edges = cv2.Canny(resize_short_side(img, res), int(low), int(high))
    return cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB)


def _lineart_standard(img: np.ndarray, res: int, a: float, b: float, seed: int) -> np.ndarray:
    """Dark lines on a light background -> white lines on black: how much darker each pixel is than its
    blurred surroundings, normalised by the median line strength."""
    x = resize_short_side(img, res).astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    intensity *= 127
    gray = intensity.clip(0, 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)


def _scribble_xdog(img: np.ndarray, res: int, threshold: float, b: float, seed: int) -> np.ndarray:
    """Difference of Gaussians, thresholded: white strokes where the picture has edges."""
    x = resize_short_side(img, res).astype(np.float32)
    fine = cv2.GaussianBlur(x, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(x, (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros_like(x, dtype=np.uint8)
    out[2 * (255 - dog.astype(np.int32)) > threshold] = 255
    return out


def _threshold(img: np.ndarray, res: int, threshold: float, b: float, seed: int) -> np.ndarray:
    x = resize_short_side(img, res)
    out = np.zeros_like(x)
    out[np.min(x, axis=2) > threshold] = 255
    return out


def _tile_resample(img: np.ndarray, res: int, rate: float, b: float, seed: int) -> np.ndarray:
    """The picture itself, shrunk by the down-sampling rate (the tile model then re-creates the detail)."""
    if rate < 1.1:
        return img
    height, width = img.shape[:2]
    size = (max(1, int(width / rate)), max(1, int(height / rate)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _blur_gaussian(img: np.ndarray, res: int, sigma: float, b: float, seed: int) -> np.ndarray:
    return cv2.GaussianBlur(resize_short_side(img, res), (0, 0), float(sigma))


def _noise_disk(height: int, width: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random values in [0, 1]: coarse uniform noise, enlarged with cubic interpolation."""
    coarse = rng.uniform(0, 1, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    noise = np.asarray(cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC),
                       dtype=np.float32)[cell:cell + height, cell:cell + width]
    noise -= noise.min()
    return noise / max(float(noise.max()), 1e-6)


def _shuffle(img: np.ndarray, res: int, a: float, b: float, seed: int) -> np.ndarray:
    """The picture's content reshuffled by a smooth random flow field (the extension's content shuffle; seeded
    here by the job's seed so a job can be repeated)."""
    x = resize_short_side(img, res)
    height, width = x.shape[:2]
    rng = np.random.default_rng(seed)
    flow_x = _noise_disk(height, width, 256, rng) * float(width - 1)
    flow_y = _noise_disk(height, width, 256, rng) * float(height - 1)
    return cv2.remap(x, flow_x, flow_y, cv2.INTER_LINEAR)


_IMPLEMENTED: dict[str, Callable[[np.ndarray, int, float, float, int], np.ndarray]] = {
    "none": _none,
    "invert": _invert,
    "canny": _canny,
    "lineart_standard": _lineart_standard,
    "scribble_xdog": _scribble_xdog,
    "threshold": _threshold,
    "tile_resample": _tile_resample,
    "blur_gaussian": _blur_gaussian,
    "shuffle": _shuffle,
}


def run(module: str, image: Image.Image, processor_res: float = -1, threshold_a: float = -1,
        threshold_b: float = -1, seed: int = 0, annotators_dir: object = None, field: str = "module",
        mask: Image.Image | None = None) -> np.ndarray:
    """The control map ``module`` makes of ``image`` (RGB uint8 array; RGBA for the inpaint preprocessors,
    the mask as alpha). Resolution and thresholds outside the preprocessor's ranges (-1 among them) take its
    defaults. ``mask`` (white = masked): the inpaint preprocessors' mask; for the others, when it is neither
    blank nor full, the input instead of ``image`` (see inpaint.py). Raises UnitError naming ``field`` for an
    unknown module, annotators.AnnotatorMissingError for one whose weights are not installed and
    annotator_store.AnnotatorFileError for weights that cannot be used. ``annotators_dir``: the library's
    AnnotatorStore (its cache keeps the networks loaded), or a folder (loaded for this call only)."""
    pre = catalog.find(module)
    if pre is None:
        raise UnitError(field, f"unknown preprocessor {module!r} (see /controlnet/module_list)")
    store = None
    if not pre.weight_free:
        from .annotator_store import AnnotatorStore  # torch: only for the weight-based ones

        store = annotators_dir if isinstance(annotators_dir, AnnotatorStore) else \
            AnnotatorStore(Path(annotators_dir) if isinstance(annotators_dir, (str, Path)) else None)
        found = annotators.require(pre, store.folder, field)
    rgb = to_rgb_array(image)
    if inpaint.is_inpaint(pre.name):
        return inpaint.with_mask(rgb, mask)
    if mask is not None:
        scribble = inpaint.scribble_input(rgb, mask)
        rgb = rgb if scribble is None else scribble
    values = []
    for value, slider in ((processor_res, pre.resolution), (threshold_a, pre.slider_1), (threshold_b, pre.slider_2)):
        values.append(float(value) if slider.minimum <= value <= slider.maximum else float(slider.value))
    resolution = max(1, int(values[0]))
    if store is not None:
        from . import annotator_maps  # torch and the networks: only when a weight-based one runs

        job = annotator_maps.Job(store, found, field)
        return annotator_maps.run(pre.name, rgb, resolution, values[1], values[2], job)
    return _IMPLEMENTED[pre.name](rgb, resolution, values[1], values[2], seed)


def detect_map(module: str, image: Image.Image, processor_res: float = -1, threshold_a: float = -1,
               threshold_b: float = -1, seed: int = 0, annotators_dir: object = None,
               field: str = "module", mask: Image.Image | None = None) -> Image.Image:
    """``run`` as a picture: what the preview button shows and ``POST /controlnet/detect`` returns (an
    inpaint map as RGBA, its masked part half transparent)."""
    return inpaint.preview(run(module, image, processor_res, threshold_a, threshold_b, seed, annotators_dir, field,
                               mask))
