"""Image preparation for img2img and inpainting: resize modes, masks, crop to the masked area, paste back.

Pure PIL/numpy. The paste-back is what guarantees that pixels outside the (blurred) mask come
out exactly as they went in, whatever the VAE round trip did to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from .request import MaskedContent, ResizeMode

_LANCZOS = Image.Resampling.LANCZOS


def fit_image(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """Fit an init image to the requested size the way A1111's resize modes do."""
    image = image.convert("RGB")
    if mode is ResizeMode.JUST_RESIZE or image.size == (width, height):
        return image.resize((width, height), _LANCZOS)
    if mode is ResizeMode.CROP_AND_RESIZE:
        return ImageOps.fit(image, (width, height), _LANCZOS)
    # Resize and fill: fit inside, then fill the borders with the picture stretched and blurred.
    inner = ImageOps.contain(image, (width, height), _LANCZOS)
    canvas = image.resize((width, height), _LANCZOS).filter(ImageFilter.GaussianBlur(max(width, height) / 32))
    canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
    return canvas


def prepare_mask(mask: Image.Image, size: tuple[int, int], invert: bool, blur: int) -> tuple[Image.Image, Image.Image]:
    """(hard mask, blurred mask), both "L" at `size`. White = repaint.

    Transparent pixels of an RGBA mask count as unmasked; the brightness of the rest decides.
    """
    if mask.mode in ("RGBA", "LA"):
        alpha = mask.getchannel("A")
        gray = Image.composite(mask.convert("L"), Image.new("L", mask.size, 0), alpha)
    else:
        gray = mask.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.NEAREST)
    if invert:
        gray = ImageOps.invert(gray)
    hard = gray.point(lambda v: 255 if v >= 128 else 0)
    blurred = hard.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else hard
    return hard, blurred


@dataclass(frozen=True)
class CropBox:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom


def masked_region(mask: Image.Image, padding: int, width: int, height: int) -> CropBox | None:
    """The mask's bounding box plus padding, grown to the target aspect ratio and kept inside the image."""
    bbox = mask.getbbox()
    if bbox is None:
        return None
    img_w, img_h = mask.size
    left, top, right, bottom = bbox
    left, top = max(left - padding, 0), max(top - padding, 0)
    right, bottom = min(right + padding, img_w), min(bottom + padding, img_h)
    box_w, box_h = right - left, bottom - top
    ratio = width / height
    if box_w / box_h < ratio:
        box_w = min(img_w, round(box_h * ratio))
    else:
        box_h = min(img_h, round(box_w / ratio))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    left = int(min(max(cx - box_w / 2, 0), img_w - box_w))
    top = int(min(max(cy - box_h / 2, 0), img_h - box_h))
    return CropBox(left, top, left + box_w, top + box_h)


def fill_masked(image: Image.Image, mask: Image.Image, content: MaskedContent, seed: int) -> Image.Image:
    """Pre-fill the masked area: "fill" with the surrounding colours, "latent noise" with noise, "latent
    nothing" with flat mid-grey (about what an all-zero latent, A1111's start for it, decodes to)."""
    if content is MaskedContent.ORIGINAL:
        return image
    if content is MaskedContent.LATENT_NOTHING:
        return Image.composite(Image.new("RGB", image.size, (127, 127, 127)), image, mask)
    if content is MaskedContent.FILL:
        filler = image
        for radius in (64, 32, 16, 8):  # repeated blurs spread the colours around the hole into it
            filler = Image.composite(image, filler.filter(ImageFilter.GaussianBlur(radius)), ImageOps.invert(mask))
        return Image.composite(filler.filter(ImageFilter.GaussianBlur(4)), image, mask)
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 256, (image.height, image.width, 3), dtype=np.uint8), "RGB")
    return Image.composite(noise, image, mask)


def paste_back(original: Image.Image, generated: Image.Image, blurred_mask: Image.Image,
               crop: CropBox | None = None) -> Image.Image:
    """Put the generated pixels into the original through the blurred mask; outside it, the original stays."""
    original = original.convert("RGB")
    if crop is not None:
        placed = original.copy()
        placed.paste(generated.convert("RGB").resize(crop.size, _LANCZOS), (crop.left, crop.top))
        generated = placed
    elif generated.size != original.size:
        generated = generated.resize(original.size, _LANCZOS)
    return Image.composite(generated.convert("RGB"), original, blurred_mask)


def extend_canvas(image: Image.Image, mask: Image.Image | None, sides: tuple[int, int, int, int],
                  seam: int) -> tuple[Image.Image, Image.Image]:
    """Outpainting's starting point: the picture on a canvas larger by (left, right, top, bottom) pixels, its
    edge pixels stretched outward, and the mask to repaint: the new area, ``seam`` pixels into the picture on
    each extended side (so the two join), and what ``mask`` (white = repaint) already marks."""
    left, right, top, bottom = sides
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    canvas = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    repaint = np.ones(canvas.shape[:2], dtype=bool)
    x0, x1 = left + (seam if left else 0), left + width - (seam if right else 0)
    y0, y1 = top + (seam if top else 0), top + height - (seam if bottom else 0)
    repaint[y0:y1, x0:x1] = False
    if mask is not None:
        painted = np.asarray(mask.convert("L").resize((width, height), Image.Resampling.NEAREST)) >= 128
        repaint[top:top + height, left:left + width] |= painted
    return Image.fromarray(canvas, "RGB"), Image.fromarray(repaint.astype(np.uint8) * 255, "L")
