"""A ControlNet unit: what one "ControlNet" panel of a generation asks for, with sd-webui-controlnet's field
names, defaults and value spellings (its ``ControlNetUnit``), so A1111 clients' units mean the same here.

Pure: PIL and the standard library; no torch. Enums accept their names, the extension's older aliases and
the integer indices clients send; every bad value raises ``RequestError`` naming the field, e.g.
``controlnet_units[1].weight``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import io
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import AtelierError
from . import catalog

# A control map larger than this is refused (the preprocessors and the fitting would take seconds and GBs).
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_WEIGHT = 2.0  # the extension's bound (its UI slider and its API model)


class UnitError(AtelierError, ValueError):
    """A ControlNet unit field is wrong; ``field`` names it (``controlnet_units[0].weight``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}", field_name)
        self.message = message  # without the field name, for the API's per-field detail


class ControlResizeMode(str, enum.Enum):
    """How the control map is fitted to the picture's size (the extension's names, in its index order)."""

    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"  # the extension's INNER_FIT
    RESIZE_AND_FILL = "Resize and Fill"  # OUTER_FIT


class ControlMode(str, enum.Enum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


class HiresOption(str, enum.Enum):
    """Which hires-fix pass a unit guides (ignored without hires fix)."""

    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


_RESIZE_ALIASES = {
    "Inner Fit (Scale to Fit)": ControlResizeMode.CROP_AND_RESIZE,
    "Scale to Fit (Inner Fit)": ControlResizeMode.CROP_AND_RESIZE,
    "Outer Fit (Shrink to Fit)": ControlResizeMode.RESIZE_AND_FILL,
    "Envelope (Outer Fit)": ControlResizeMode.RESIZE_AND_FILL,
    "Just Resize (Latent upscale)": ControlResizeMode.JUST_RESIZE,
}
# Older clients' spellings of field names (the extension's ext_compat_keys), and Forge's mask name.
FIELD_ALIASES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image", "mask_image": "mask"}


def _enum(kind: type[enum.Enum], value: Any, field_name: str, aliases: Mapping[str, enum.Enum] | None = None,
          extra_ints: Mapping[int, enum.Enum] | None = None) -> Any:
    """A member from its value ("Crop and Resize"), its name ("CROP_AND_RESIZE", "ResizeMode.INNER_FIT" style
    prefixes dropped), an alias, or its index (0, 1, 2); case does not matter for text."""
    members = list(kind)
    if isinstance(value, kind):
        return value
    if isinstance(value, bool):
        raise UnitError(field_name, f"{value!r} is not one of {', '.join(repr(m.value) for m in members)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if 0 <= value < len(members):
            return members[value]
        if extra_ints and value in extra_ints:
            return extra_ints[value]
    if isinstance(value, str):
        text = value.strip()
        lowered = {**{m.value.lower(): m for m in members}, **{m.name.lower(): m for m in members},
                   **{k.lower(): v for k, v in (aliases or {}).items()}}
        key = text.rsplit(".", 1)[-1].lower() if "." in text and " " not in text else text.lower()
        if key in lowered:
            return lowered[key]
        if text.isdigit():
            return _enum(kind, int(text), field_name, aliases, extra_ints)
    choices = ", ".join(f"{i} or {m.value!r}" for i, m in enumerate(members))
    raise UnitError(field_name, f"{value!r} is not one of {choices}")


def resize_mode_from_value(value: Any, field_name: str = "resize_mode") -> ControlResizeMode:
    # 3 is A1111's "Just resize (latent upscale)", which the extension treats as Just Resize.
    return _enum(ControlResizeMode, value, field_name, _RESIZE_ALIASES, {3: ControlResizeMode.JUST_RESIZE})


def control_mode_from_value(value: Any, field_name: str = "control_mode") -> ControlMode:
    return _enum(ControlMode, value, field_name, {"guess mode": ControlMode.CONTROL})


def hr_option_from_value(value: Any, field_name: str = "hr_option") -> HiresOption:
    return _enum(HiresOption, value, field_name)


def decode_image_data(value: Any, field_name: str) -> Image.Image:
    """A picture from what clients send: a PIL image, a numpy array (H, W[, C]), bytes, or base64 text (a
    ``data:`` URL too). Anything else, or bytes PIL cannot read, raises UnitError naming the field."""
    if isinstance(value, Image.Image):
        return value
    if hasattr(value, "__array_interface__"):  # numpy arrays, without importing numpy here
        try:
            return Image.fromarray(value)
        except (TypeError, ValueError) as exc:
            raise UnitError(field_name, f"is not an image ({exc})") from exc
    raw: bytes
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            text = text.partition(",")[2]
        text = "".join(text.split())
        if len(text) * 3 // 4 > 4 * MAX_IMAGE_PIXELS:
            raise UnitError(field_name, "is too large to be a control image")
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise UnitError(field_name, "is not an image (not valid base64)") from None
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raise UnitError(field_name, f"is not an image (got {type(value).__name__})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            check_image_size(image, field_name)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, UnitError):
            raise
        raise UnitError(field_name, "is not an image PIL can read (send PNG, JPEG or WebP)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnitError(field_name, f"is too large (too many pixels): at most {MAX_IMAGE_SIDE} pixels a side") from exc
    return image


def check_image_size(image: Image.Image, field_name: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise UnitError(field_name, "is an empty image")
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise UnitError(field_name, f"{width}x{height} is too large: at most {MAX_IMAGE_SIDE} pixels a side")


def _number(value: Any, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise UnitError(field_name, f"{value!r} is not a number") from None
        else:
            raise UnitError(field_name, f"{value!r} is not a number")
    if not math.isfinite(value):
        raise UnitError(field_name, "must be a finite number")
    return float(value)


def _flag(value: Any, field_name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise UnitError(field_name, f"{value!r} is not true or false")


@dataclass
class ControlUnit:
    """One ControlNet unit. Defaults are the extension's (``enabled`` as its API units default).

    ``processor_res``, ``threshold_a`` and ``threshold_b`` of -1 (or out of the preprocessor's range) mean the
    preprocessor's own default, as in the extension; ``image`` None in img2img / inpainting means "use the init
    image"; ``model`` is a title "name [hash]", a name, or "None".
    """

    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Image.Image | None = None
    mask: Image.Image | None = None
    resize_mode: ControlResizeMode = ControlResizeMode.CROP_AND_RESIZE
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: ControlMode = ControlMode.BALANCED
    pixel_perfect: bool = False
    hr_option: HiresOption = HiresOption.BOTH

    def replace(self, **changes: Any) -> ControlUnit:
        return dataclasses.replace(self, **changes)

    @property
    def used(self) -> bool:
        """Enabled and naming a model: a unit the job applies. An enabled unit with neither model nor image is
        an unused slot (clients send them to fill the extension's unit count) and is skipped."""
        return self.enabled and isinstance(self.model, str) and self.model.strip() not in ("", "None")

    @property
    def preprocessor(self) -> catalog.Preprocessor | None:
        return catalog.find(self.module)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], index: int = 0,
                  decode: Callable[[Any, str], Image.Image] = decode_image_data) -> ControlUnit:
        """A unit from an A1111 client's dict (JSON values). Unknown keys are ignored, as the extension does;
        ``image`` may be an image, base64, ``{"image": ..., "mask": ...}`` or ``[image, mask]``; ``decode``
        turns one such value into a PIL image (the REST API passes its own, with its limits)."""
        prefix = f"controlnet_units[{index}]"
        if not isinstance(values, Mapping):
            raise UnitError(prefix, f"a unit is an object of fields, not {type(values).__name__}")
        given = dict(values)
        for alias, name in FIELD_ALIASES.items():
            if alias in given:
                if name in given and given[name] is not None and given[alias] is not None:
                    raise UnitError(f"{prefix}.{alias}", f"give either {alias!r} or {name!r}, not both")
                value = given.pop(alias)
                given.setdefault(name, value)
                if given[name] is None:
                    given[name] = value
        image: Any = given.get("image")
        mask: Any = given.get("mask")
        if isinstance(image, Mapping):
            image, mask = image.get("image"), image.get("mask", mask)
        elif isinstance(image, (list, tuple)):
            if len(image) != 2:
                raise UnitError(f"{prefix}.image", "a list must be [image, mask]")
            image, mask = image
        fields: dict[str, Any] = {}
        for name in ("enabled", "low_vram", "pixel_perfect"):
            if given.get(name) is not None:
                fields[name] = _flag(given[name], f"{prefix}.{name}")
        for name in ("module", "model"):
            if given.get(name) is not None:
                if not isinstance(given[name], str):
                    raise UnitError(f"{prefix}.{name}", f"{given[name]!r} is not a name")
                fields[name] = given[name].strip()
        for name in ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
            if given.get(name) is not None:
                fields[name] = _number(given[name], f"{prefix}.{name}")
        if given.get("processor_res") is not None:
            fields["processor_res"] = int(round(_number(given["processor_res"], f"{prefix}.processor_res")))
        if given.get("resize_mode") is not None:
            fields["resize_mode"] = resize_mode_from_value(given["resize_mode"], f"{prefix}.resize_mode")
        if given.get("control_mode") is not None:
            fields["control_mode"] = control_mode_from_value(given["control_mode"], f"{prefix}.control_mode")
        if given.get("hr_option") is not None:
            fields["hr_option"] = hr_option_from_value(given["hr_option"], f"{prefix}.hr_option")
        if image is not None and not (isinstance(image, str) and not image.strip()):
            fields["image"] = decode(image, f"{prefix}.image")
        if mask is not None and not (isinstance(mask, str) and not mask.strip()):
            fields["mask"] = decode(mask, f"{prefix}.mask")
        return cls(**fields)

    def validate(self, index: int, has_init_image: bool = False) -> None:
        """Raise UnitError naming the first bad field. A disabled unit or an unused slot is not looked at."""
        prefix = f"controlnet_units[{index}]"
        if not self.enabled or (not self.used and self.image is None and self.mask is None):
            return  # disabled, or an unused slot
        if catalog.find(self.module) is None:
            raise UnitError(f"{prefix}.module", f"unknown preprocessor {self.module!r} (see /controlnet/module_list)")
        if not self.used:
            raise UnitError(f"{prefix}.model", "the unit is enabled and has an image but names no ControlNet model")
        weight = _number(self.weight, f"{prefix}.weight")
        if not 0.0 <= weight <= MAX_WEIGHT:
            raise UnitError(f"{prefix}.weight", f"must be between 0 and {MAX_WEIGHT:g} (got {weight:g})")
        start = _number(self.guidance_start, f"{prefix}.guidance_start")
        end = _number(self.guidance_end, f"{prefix}.guidance_end")
        for name, value in (("guidance_start", start), ("guidance_end", end)):
            if not 0.0 <= value <= 1.0:
                raise UnitError(f"{prefix}.{name}", f"must be between 0 and 1 (got {value:g})")
        if start > end:
            raise UnitError(f"{prefix}.guidance_start", f"starts after it ends ({start:g} > {end:g})")
        for name in ("threshold_a", "threshold_b", "processor_res"):
            _number(getattr(self, name), f"{prefix}.{name}")
        for name, kind in (("resize_mode", ControlResizeMode), ("control_mode", ControlMode),
                           ("hr_option", HiresOption)):
            if not isinstance(getattr(self, name), kind):
                raise UnitError(f"{prefix}.{name}", f"{getattr(self, name)!r} is not a {kind.__name__}")
        for name in ("image", "mask"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, Image.Image):
                raise UnitError(f"{prefix}.{name}", f"is not an image (got {type(value).__name__})")
            check_image_size(value, f"{prefix}.{name}")
        if self.image is None and not has_init_image:
            raise UnitError(f"{prefix}.image", "give a control image (txt2img has no picture to take it from)")

    def with_defaults(self) -> ControlUnit:
        """Resolution and thresholds outside the preprocessor's ranges (-1 among them) replaced by its defaults,
        as the extension does before using (and writing) a unit."""
        pre = catalog.find(self.module)
        if pre is None:
            return self
        changes: dict[str, Any] = {}
        for name, slider, cast in (("processor_res", pre.resolution, int), ("threshold_a", pre.slider_1, float),
                                   ("threshold_b", pre.slider_2, float)):
            value = getattr(self, name)
            if not slider.minimum <= value <= slider.maximum:
                changes[name] = cast(slider.value)
            else:
                changes[name] = cast(value)
        return self.replace(**changes)
