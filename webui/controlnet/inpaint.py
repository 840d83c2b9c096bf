"""Unit masks and the inpaint preprocessors, with sd-webui-controlnet's semantics.

- ``inpaint`` ("inpaint_global_harmonious") and ``inpaint_only`` make no map of their own: the map is the
  picture with the mask as its alpha channel (RGBA). When the map becomes the ControlNet's hint, masked
  pixels (alpha above one half) are set to -1 and the others are the picture's colours in [0, 1]: the input
  that inpaint ControlNets (control_v11p_sd15_inpaint) were trained on. Fitting the map to the picture keeps
  the mask binary, and the border that "Resize and Fill" adds counts as masked (to be drawn).
- The mask comes from the unit (the API's ``mask`` / ``mask_image``); a unit without one in the Inpaint tab
  takes the tab's inpaint mask (inverted and blurred as the tab says); without either, nothing is masked.
- ``inpaint_only`` outside the Inpaint tab then pastes the unmasked part of its picture back over the result,
  through the mask dilated and box-blurred by 7 pixels (in the Inpaint tab the tab's own paste-back does it).
- A non-inpaint preprocessor with a unit mask: as the extension's "canvas scribble mode", the mask itself is
  the preprocessor's input (white strokes on black) unless it is blank or full, when it is ignored.

Pure numpy / PIL; no torch.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

INPAINT_MODULES = frozenset({"inpaint", "inpaint_only"})
BLANK, FULL = 5, 250  # the extension's limits: a mask at most this dark everywhere, or this bright, is no mask
PASTE_SIGMA = 7  # the extension's control_net_inpaint_blur_sigma: how far inpaint_only's paste-back feathers


def is_inpaint(module: str) -> bool:
    return module in INPAINT_MODULES


def mask_array(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The mask as an (H, W) uint8 array at ``size`` (white = masked). Transparent pixels count as unmasked."""
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        rgba = mask.convert("RGBA")
        gray = Image.composite(rgba.convert("L"), Image.new("L", rgba.size, 0), rgba.getchannel("A"))
    else:
        gray = mask.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.NEAREST)
    return np.asarray(gray, dtype=np.uint8)


def is_blank_or_full(mask: np.ndarray) -> bool:
    return bool((mask <= BLANK).all() or (mask >= FULL).all())


def with_mask(rgb: np.ndarray, mask: Image.Image | None) -> np.ndarray:
    """The inpaint preprocessors' map: (H, W, 4) uint8, the picture with the mask as alpha (0 = nothing masked)."""
    height, width = rgb.shape[:2]
    alpha = mask_array(mask, (width, height)) if mask is not None else np.zeros((height, width), np.uint8)
    return np.ascontiguousarray(np.concatenate([rgb[:, :, :3], alpha[:, :, None]], axis=2))


def scribble_input(rgb: np.ndarray, mask: Image.Image) -> np.ndarray | None:
    """What a non-inpaint preprocessor gets from a unit with a mask: the mask's strokes as an RGB picture, or
    None when the mask is blank or full (then the picture is used and the mask ignored)."""
    height, width = rgb.shape[:2]
    alpha = mask_array(mask, (width, height))
    if is_blank_or_full(alpha):
        return None
    return np.ascontiguousarray(np.stack([alpha] * 3, axis=2))


def hint_pixels(fitted: np.ndarray) -> np.ndarray:
    """A fitted map (H, W, 3 or 4 uint8) as the hint's (H, W, 3) float32 pixels: colours in [0, 1]; with an
    alpha channel (an inpaint map), masked pixels are -1 (the extension's ``c * (1 - m) - m``)."""
    colours = np.ascontiguousarray(fitted[:, :, :3], dtype=np.float32) / 255.0
    if fitted.shape[2] < 4:
        return colours
    masked = (fitted[:, :, 3:4].astype(np.float32) / 255.0 > 0.5).astype(np.float32)
    return colours * (1.0 - masked) - masked


def preview(detected: np.ndarray) -> Image.Image:
    """How a map is shown: RGB as is; an inpaint map with the masked part half transparent (as the extension
    shows it)."""
    if detected.shape[2] < 4:
        return Image.fromarray(np.ascontiguousarray(detected[:, :, :3]), "RGB")
    shown = detected.copy()
    shown[:, :, 3] = 255 - shown[:, :, 3] // 2
    return Image.fromarray(shown, "RGBA")


def paste_unmasked(picture: Image.Image, fitted: np.ndarray, sigma: int = PASTE_SIGMA) -> Image.Image:
    """inpaint_only's finish: ``fitted`` (an inpaint map fitted to the picture's size, H x W x 4) supplies the
    unmasked pixels; the result stays where the mask, dilated then blurred by ``sigma``, is."""
    result = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    source = fitted[:, :, :3].astype(np.float32) / 255.0
    alpha = fitted[:, :, 3].astype(np.float32) / 255.0
    mask = np.asarray(cv2.blur(cv2.dilate(alpha, np.ones((sigma, sigma), dtype=np.uint8)), (sigma, sigma)),
                      dtype=np.float32)[:, :, None]
    blended = (mask * result.clip(0, 1) + (1 - mask) * source).clip(0, 1)
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), "RGB")
