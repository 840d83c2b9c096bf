"""Thumbnails for the History tab, made once per picture version and kept in the outputs folder
(``.atelier/thumbs/``, served like the pictures), written atomically."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

from PIL import Image, ImageOps

from ..fileio import write_bytes_atomic

log = logging.getLogger(__name__)

SIDE = 256


class Thumbnails:
    def __init__(self, folder: Path, side: int = SIDE) -> None:
        self.folder = Path(folder)
        self.side = side

    def path_for(self, rel: str, mtime_ns: int, size: int) -> Path:
        """Where the thumbnail of this version of the picture lives (a new version gets a new name)."""
        digest = hashlib.sha1(f"{rel}\0{mtime_ns}\0{size}\0{self.side}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.jpg"

    def get(self, picture: Path, rel: str, mtime_ns: int, size: int) -> Path | None:
        """The thumbnail's file, made now if it does not exist yet; None when the picture cannot be read."""
        target = self.path_for(rel, mtime_ns, size)
        if target.is_file():
            return target
        try:
            with Image.open(picture) as image:
                image.draft("RGB", (self.side, self.side))
                small = ImageOps.exif_transpose(image).convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            log.warning("No thumbnail for %s: %s", picture, exc)
            return None
        factor = min(small.width, small.height) // (2 * self.side)
        if factor >= 2:
            small = small.reduce(factor)  # a box filter first: much faster than resampling a big picture
        small.thumbnail((self.side, self.side))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=85)  # 40x faster to write than WebP, as small at this size
        try:
            write_bytes_atomic(target, buffer.getvalue())
        except OSError as exc:
            log.warning("Cannot cache the thumbnail of %s: %s", picture, exc)
            return None
        return target
