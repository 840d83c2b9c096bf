"""Cards for checkpoints, LoRAs and embeddings: a preview picture and notes kept beside each model file, as A1111
keeps them (``name.preview.png``; ``name.json`` with a ``notes`` key, other keys left as they are).

Pure logic (no gradio, no torch): the networks panel shows what this reads and calls what it writes.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from PIL import Image, ImageOps

from .errors import AtelierError
from .fileio import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

PREVIEW_SUFFIXES = (".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp", ".png", ".jpg", ".jpeg",
                    ".webp")  # A1111 looks for these, in this order
PREVIEW_SIDE = 512  # the longest side a preview is stored at
NOTES_LIMIT = 20_000  # characters; notes are for people, not data
THUMB_SIDE = 160


class CardError(AtelierError):
    """A preview or notes change that cannot be made; the message says why."""


def base_of(model_path: Path) -> Path:
    """The model's path without its extension (a diffusers folder keeps its name): what A1111 adds suffixes to."""
    return model_path if model_path.is_dir() else model_path.with_suffix("")


def preview_file(model_path: Path) -> Path | None:
    """The picture shown on the model's card, if there is one."""
    base = base_of(model_path)
    for suffix in PREVIEW_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file() and candidate != model_path:
            return candidate
    return None


def thumbnail(model_path: Path, side: int = THUMB_SIDE) -> Image.Image | None:
    """The card's picture, at most ``side`` pixels wide and high; None without a (readable) preview."""
    path = preview_file(model_path)
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image.draft("RGB", (side, side))  # JPEGs decode at a fraction of their size
            picture = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("Cannot read the preview %s: %s", path, exc)
        return None
    picture.thumbnail((side, side))
    return picture


def notes_file(model_path: Path) -> Path:
    base = base_of(model_path)
    return base.with_name(base.name + ".json")


def read_notes(model_path: Path) -> str:
    path = notes_file(model_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    notes = data.get("notes") if isinstance(data, dict) else None
    return notes if isinstance(notes, str) else ""


def save_notes(model_path: Path, notes: str) -> Path:
    """Store ``notes`` under ``notes`` in ``name.json`` beside the model, keeping the file's other keys."""
    if len(notes) > NOTES_LIMIT:
        raise CardError(f"Notes are limited to {NOTES_LIMIT} characters.", "notes")
    path = notes_file(model_path)
    data: dict[str, object] = {}
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(existing, dict):
            data = existing
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise CardError(f"{path.name} exists but is not readable JSON ({exc}); fix or remove it first.",
                        "notes") from exc
    data["notes"] = notes
    try:
        write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False))
    except OSError as exc:
        raise CardError(f"Could not save the notes beside the model: {exc.strerror or exc}", "notes") from exc
    return path


def save_preview(model_path: Path, picture: Image.Image) -> Path:
    """Make ``picture`` the model's card picture: ``name.preview.png`` (at most ``PREVIEW_SIDE`` pixels, no
    metadata), replacing an earlier one atomically."""
    base = base_of(model_path)
    target = base.with_name(base.name + ".preview.png")
    image = ImageOps.exif_transpose(picture).convert("RGB")
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    try:
        write_bytes_atomic(target, buffer.getvalue())
    except OSError as exc:
        raise CardError(f"Could not save the preview beside the model: {exc.strerror or exc}", "preview") from exc
    return target
