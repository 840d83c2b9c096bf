"""What the Extras tab and /sdapi/v1/extra-single-image, /extra-batch-images do with a picture, as in A1111:
check the request, work out the size, run upscaler 1 and blend upscaler 2 over it, and say what was done in
A1111's infotext words. Pure (no torch): the upscaler library is passed in.

Fields are named as in A1111's API (upscaling_resize, upscaler_1, ...), so an error names the field to fix in
the API and the tab alike.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from PIL import Image

from ..infotext import format_infotext, parse_infotext
from ..outputs import OutputLayout, read_infotext, save_image
from .errors import ExtrasSaveError, UpscalerError
from .folders import NONE

MAX_SCALE_BY = 8.0
MAX_SIDE = 4096  # the largest side a result may have (as for generated pictures)
# A batch is held whole (the pictures, then the results): both are bounded, 8 pictures of 4096x4096 each.
MAX_BATCH_PIXELS = 8 * MAX_SIDE * MAX_SIDE
BY, TO = 0, 1  # resize_mode: scale by upscaling_resize, or to upscaling_resize_w x upscaling_resize_h


class Upscaler(Protocol):
    def upscale(self, image: Image.Image, width: int, height: int, name: str,
                field: str = "upscaler") -> Image.Image: ...


@dataclass(frozen=True)
class ExtrasOptions:
    resize_mode: int = BY
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True  # "scale to": crop the enlarged picture to exactly w x h (else keep its shape)
    upscaler_1: str = NONE
    upscaler_2: str = NONE
    extras_upscaler_2_visibility: float = 0.0


@dataclass
class ExtrasResult:
    image: Image.Image
    info: dict[str, object] = field(default_factory=dict)  # "Postprocess upscale by": 2, ...


def _number(value: object, name: str, label: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UpscalerError(f"{label} must be a number (got {value!r})", name) from None
    if not math.isfinite(number):
        raise UpscalerError(f"{label} must be a finite number (got {value!r})", name)
    return number


def _side(value: object, name: str, label: str) -> int:
    number = _number(value, name, label)
    if not number.is_integer() or not 1 <= number <= MAX_SIDE:
        raise UpscalerError(f"{label} must be a whole number of pixels from 1 to {MAX_SIDE} (got {value!r})", name)
    return int(number)


def check_options(options: ExtrasOptions, find: Callable[[str], str | None],
                  available: Callable[[], list[str]]) -> ExtrasOptions:
    """The options with the upscalers' listed names; UpscalerError naming the first bad field.
    ``find``: the library's name lookup (case ignored, None when unknown)."""
    if options.resize_mode not in (BY, TO):
        raise UpscalerError(f"resize_mode must be {BY} (scale by) or {TO} (scale to), got {options.resize_mode!r}",
                            "resize_mode")
    changes: dict[str, object] = {}
    if options.resize_mode == BY:
        by = _number(options.upscaling_resize, "upscaling_resize", "Scale by")
        if not 0 < by <= MAX_SCALE_BY:
            raise UpscalerError(f"Scale by must be more than 0 and at most {MAX_SCALE_BY:g} (got {by:g})",
                                "upscaling_resize")
        changes["upscaling_resize"] = by
    else:
        changes["upscaling_resize_w"] = _side(options.upscaling_resize_w, "upscaling_resize_w", "Width")
        changes["upscaling_resize_h"] = _side(options.upscaling_resize_h, "upscaling_resize_h", "Height")
    visibility = _number(options.extras_upscaler_2_visibility, "extras_upscaler_2_visibility",
                         "Upscaler 2 visibility")
    if not 0 <= visibility <= 1:
        raise UpscalerError(f"Upscaler 2 visibility must be between 0 and 1 (got {visibility:g})",
                            "extras_upscaler_2_visibility")
    changes["extras_upscaler_2_visibility"] = visibility
    for name, label in (("upscaler_1", "Upscaler 1"), ("upscaler_2", "Upscaler 2")):
        given = getattr(options, name)
        known = find(given) if isinstance(given, str) else None
        if known is None:
            raise UpscalerError(f"{label}: unknown upscaler {given!r}; available: {', '.join(available())}", name)
        changes[name] = known
    return replace(options, **changes)  # type: ignore[arg-type]


def plan_size(width: int, height: int, options: ExtrasOptions) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(the enlarged size, the size it is then cropped to or None), as A1111 does it: "scale to" enlarges by the
    larger of the two ratios (the picture keeps its shape) and, with crop, cuts the middle out. UpscalerError when
    a side would be over MAX_SIDE."""
    if options.resize_mode == BY:
        by = options.upscaling_resize
        field_name = "upscaling_resize"
    else:
        by = max(options.upscaling_resize_w / width, options.upscaling_resize_h / height)
        field_name = "upscaling_resize_w"
    size = (max(1, round(width * by)), max(1, round(height * by)))
    crop = (options.upscaling_resize_w, options.upscaling_resize_h) \
        if options.resize_mode == TO and options.upscaling_crop else None
    if options.resize_mode == TO:  # rounding must never leave the picture smaller than the crop
        size = (max(size[0], options.upscaling_resize_w), max(size[1], options.upscaling_resize_h))
    if max(size) > MAX_SIDE and crop is None:
        raise UpscalerError(f"the result would be {size[0]}x{size[1]} pixels; the largest side allowed is "
                            f"{MAX_SIDE} (the picture is {width}x{height})", field_name)
    if max(size) > 2 * MAX_SIDE:  # enlarged before cropping: bounded too, so memory stays bounded
        raise UpscalerError(f"the picture ({width}x{height}) would have to be enlarged to {size[0]}x{size[1]} "
                            "before cropping; choose a shape closer to the picture's", field_name)
    return size, crop


def check_batch(sizes: list[tuple[int, int]], options: ExtrasOptions, field_name: str) -> None:
    """Every picture's planned size is allowed and the batch stays within MAX_BATCH_PIXELS, before any work."""
    if not sizes:
        raise UpscalerError("no picture given", field_name)
    given = produced = 0
    for width, height in sizes:
        given += width * height
        if options.upscaler_1 != NONE:
            (w, h), _ = plan_size(width, height, options)
            produced += w * h
    if max(given, produced) > MAX_BATCH_PIXELS:
        raise UpscalerError(f"the pictures would hold more than {MAX_BATCH_PIXELS // 2**20} million pixels together "
                            "(8 of 4096x4096); do them in smaller batches or enlarge them less", field_name)


def run_extras(library: Upscaler, image: Image.Image, options: ExtrasOptions) -> ExtrasResult:
    """Upscale one picture (options already checked). Upscaler 1 "None" leaves it as it is, as in A1111."""
    picture = image.convert("RGB")
    if options.upscaler_1 == NONE:
        return ExtrasResult(picture, {})
    (width, height), crop = plan_size(picture.width, picture.height, options)
    info: dict[str, object] = {}
    if options.resize_mode == BY:
        info["Postprocess upscale by"] = options.upscaling_resize
    else:
        info["Postprocess upscale to"] = f"{options.upscaling_resize_w}x{options.upscaling_resize_h}"
    result = library.upscale(picture, width, height, options.upscaler_1, "upscaler_1").convert("RGB")
    info["Postprocess upscaler"] = options.upscaler_1
    visibility = options.extras_upscaler_2_visibility
    if options.upscaler_2 != NONE and visibility > 0:
        second = library.upscale(picture, width, height, options.upscaler_2, "upscaler_2").convert("RGB")
        result = Image.blend(result, second, visibility)
        info["Postprocess upscaler 2"] = options.upscaler_2
        info["Postprocess upscaler 2 visibility"] = visibility  # Forge's key; A1111 leaves the amount out
    if crop is not None:
        left, top = (result.width - crop[0]) // 2, (result.height - crop[1]) // 2
        result = result.crop((left, top, left + crop[0], top + crop[1]))
        info["Postprocess crop to"] = f"{crop[0]}x{crop[1]}"
    return ExtrasResult(result, info)


def postprocess_text(info: dict[str, object]) -> str:
    """``Postprocess upscale by: 2, Postprocess upscaler: 4x-UltraSharp`` (values quoted as infotext quotes them)."""
    return format_infotext("", "", info)


def extras_infotext(original: str | None, info: dict[str, object]) -> str:
    """The picture's own parameters (if it had any) with the postprocessing appended to their last line, so
    readers of A1111's format keep every original parameter and see the new ones."""
    post = postprocess_text(info)
    if not original or not original.strip():
        return post
    text = original.strip()
    if not post:
        return text
    has_params_line = any(k not in ("Prompt", "Negative prompt") for k in parse_infotext(text))
    return f"{text}, {post}" if has_params_line else f"{text}\n{post}"


def html_info(info: dict[str, object], notes: list[str]) -> str:
    """A1111's html_info: the postprocessing text as a paragraph, then any notes (escaped)."""
    parts = [f"<p>{html.escape(postprocess_text(info))}</p>"] if info else []
    parts += [f"<p class='atelier-warning'>{html.escape(note)}</p>" for note in notes]
    return "".join(parts)


@dataclass
class ExtrasPicture:
    image: Image.Image
    name: str | None = None  # the original file's stem (batch): the saved file is called NNNNN-<name>


@dataclass
class ExtrasOutput:
    image: Image.Image
    infotext: str  # the original's parameters and the postprocessing
    info: dict[str, object]
    path: Path | None = None  # where it was saved (None: not saved)


def run_pictures(library: Upscaler, pictures: list[ExtrasPicture], options: ExtrasOptions,
                 outputs: OutputLayout | None, save_format: str = "png", user: str | None = None) -> list[ExtrasOutput]:
    """Every picture through ``run_extras``; saved in outputs/extras-images/ with its infotext when ``outputs``
    is given, recording ``user`` (the signed-in user; None: the host) as its maker and in that user's folder
    when the layout has per-user folders. Raises UpscalerError / ExtrasSaveError."""
    done = []
    for picture in pictures:
        result = run_extras(library, picture.image, options)
        text = extras_infotext(read_infotext(picture.image), result.info)
        path = save_extras(outputs, result.image, text, save_format, picture.name, user) \
            if outputs is not None else None
        done.append(ExtrasOutput(result.image, text, result.info, path))
    return done


def save_extras(outputs: OutputLayout, image: Image.Image, infotext: str, save_format: str,
                name: str | None = None, user: str | None = None) -> Path:
    folder = outputs.folder_for("extras", user=user)
    stem = Path(name).stem if name else ""
    pattern, fields = ("[number]-[name]", {"name": stem}) if stem else ("[number]", {})
    try:
        return save_image(image, folder, 0, infotext, save_format, pattern, fields, owner=user)
    except OSError as exc:
        raise ExtrasSaveError(f"Could not save the picture in {folder}: {exc.strerror or exc}. Nothing was written "
                              "there; free some space or choose another output folder.") from exc
