"""Thumbnails for the History tab, made once per picture version and kept in the outputs folder
(``.atelier/thumbs/``), written atomically. Each records its picture's maker (EXIF Artist, as saved JPEGs do),
so a thumbnail is served only to whoever may see the picture (``access.may_read``)."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

from PIL import ExifTags, Image, ImageOps

from ..fileio import write_bytes_atomic
from ..outputs import artist_bytes

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

    def get(self, picture: Path, rel: str, mtime_ns: int, size: int, owner: str = "") -> Path | None:
        """The thumbnail's file, made now if it does not exist yet; None when the picture cannot be read.
        ``owner``: the picture's maker ("" = the host), recorded in the thumbnail."""
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
        exif = Image.Exif()
        if owner:
            exif[ExifTags.Base.Artist] = artist_bytes(owner)
        # JPEG: 40x faster to write than WebP, as small at this size.
        small.save(buffer, format="JPEG", quality=85, exif=exif.tobytes())
        try:
            write_bytes_atomic(target, buffer.getvalue())
        except OSError as exc:
            log.warning("Cannot cache the thumbnail of %s: %s", picture, exc)
            return None
        return target
