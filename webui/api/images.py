"""Images in and out of the REST API: base64 (optionally a data: URL) to PIL with size limits, and PIL to
base64 PNG carrying its infotext, as A1111 sends them."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from ..outputs import encode_image
from .errors import bad_input, too_large

MAX_IMAGE_BYTES = 50 * 2**20  # the same limit as the UI's uploads
MAX_IMAGE_PIXELS = 4096 * 4096  # the largest side a request may ask for, squared


def decode_image(text: str, field: str) -> Image.Image:
    """A base64 image (PNG, JPEG, WebP...) as a loaded PIL image; ApiError 400/413 naming ``field``."""
    if not isinstance(text, str) or not text.strip():
        raise bad_input(field, "empty: send a base64-encoded image")
    data = text.strip()
    if data.startswith("data:"):
        header, sep, data = data.partition(",")
        if not sep or ";base64" not in header:
            raise bad_input(field, "a data: URL must be base64 (data:image/png;base64,...)")
    elif data.startswith(("http://", "https://")):
        raise bad_input(field, "image URLs are not fetched: send the image itself, base64-encoded")
    data = "".join(data.split())  # some clients wrap base64 lines
    if len(data) * 3 // 4 > MAX_IMAGE_BYTES:
        raise too_large(field, f"image larger than {MAX_IMAGE_BYTES // 2**20} MB")
    try:
        raw = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_input(field, "not valid base64") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise too_large(field, f"{image.width}x{image.height} is more than {MAX_IMAGE_PIXELS} pixels "
                                       "(4096x4096)")
            image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise bad_input(field, "not an image PIL can read (send PNG, JPEG or WebP)") from exc
        raise too_large(field, "image has too many pixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise bad_input(field, f"damaged image: {exc}") from exc
    return image


def encode_png(image: Image.Image, infotext: str = "") -> str:
    """Base64 PNG with the infotext in its ``parameters`` chunk (no chunk when there is none)."""
    if infotext:
        return base64.b64encode(encode_image(image, infotext, "png")).decode("ascii")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
