"""What a saved picture says about itself: its infotext (A1111's ``parameters``), the user who made it
(``atelier-user``), and its size, read without decoding the image.

PNGs are read chunk by chunk up to the image data, so indexing thousands costs a few kilobytes each; text after
the image data (some tools put it there) and JPEG / WebP files go through PIL.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..infotext import parse_infotext
from ..outputs import OWNER_KEY, PNG_KEY, read_infotext, read_owner

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_TEXT_LIMIT = 1 << 20  # a text chunk bigger than this is not an infotext


@dataclass(frozen=True)
class PictureInfo:
    infotext: str
    owner: str  # "" = the host
    width: int
    height: int
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    model: str = ""
    model_hash: str = ""


def _png_texts(path: Path) -> tuple[dict[str, str], int, int, bool]:
    """(text chunks before the image data, width, height, whether the file is a readable PNG)."""
    texts: dict[str, str] = {}
    width = height = 0
    with open(path, "rb") as fh:
        if fh.read(8) != PNG_SIGNATURE:
            return texts, 0, 0, False
        while True:
            head = fh.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                break
            if kind == b"IHDR":
                width, height = struct.unpack(">II", fh.read(8))
                fh.seek(length - 8 + 4, 1)
                continue
            if kind not in (b"tEXt", b"iTXt", b"zTXt") or length > _TEXT_LIMIT:
                fh.seek(length + 4, 1)
                continue
            data = fh.read(length)
            fh.seek(4, 1)  # CRC
            key, value = _text_chunk(kind, data)
            if key:
                texts.setdefault(key, value)
    return texts, width, height, True


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, str]:
    key, _, rest = data.partition(b"\0")
    name = key.decode("latin-1")
    try:
        if kind == b"tEXt":
            return name, rest.decode("latin-1")
        if kind == b"zTXt":
            return name, zlib.decompress(rest[1:]).decode("latin-1")
        compressed, _method, rest = rest[0], rest[1], rest[2:]
        _lang, _, rest = rest.partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return name, (zlib.decompress(text) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError):
        return "", ""


def read_picture(path: Path) -> PictureInfo | None:
    """The picture's own information; None when the file is not a picture PIL can read."""
    texts: dict[str, str] = {}
    width = height = 0
    ok = False
    if path.suffix.lower() == ".png":
        try:
            texts, width, height, ok = _png_texts(path)
        except (OSError, struct.error):
            ok = False
    if not ok or PNG_KEY not in texts:
        try:
            with Image.open(path) as image:
                width, height = image.size
                infotext = read_infotext(image) or ""
                owner = read_owner(image) or ""
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None
    else:
        infotext, owner = texts[PNG_KEY], texts.get(OWNER_KEY, "")
    return describe(infotext, owner, width, height)


def describe(infotext: str, owner: str, width: int, height: int) -> PictureInfo:
    fields = parse_infotext(infotext) if infotext.strip() else {}
    seed = fields.get("Seed")
    try:
        seed_value = int(str(seed)) if seed is not None else None
    except (TypeError, ValueError):
        seed_value = None
    return PictureInfo(infotext, owner, width, height, str(fields.get("Prompt", "")),
                       str(fields.get("Negative prompt", "")), seed_value, str(fields.get("Model", "")),
                       str(fields.get("Model hash", "")))
