"""ControlNet units' form values -> the request's ``controlnet_units`` (sd-webui-controlnet unit dicts).

No gradio here: each unit's components are named ``controlnet_<i>_<field>`` in the tab's fields dict, so the
translation is tested without a server. ``build_request`` turns the dicts into ``ControlUnit`` and validates
them (a bad weight, start after end, an enabled unit without an image: RequestError naming the unit's field).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..controlnet import catalog
from ..controlnet.units import ControlUnit
from ..pipelines.request import RequestError

PREFIX = "controlnet_"
DEFAULT_UNITS = 3
NO_MODEL = "None"  # the model dropdown's first choice
MAX_UNITS = 10  # the extension's own "max models" limit
# A unit's fields, as the extension names them (hr_option only where hires fix exists: txt2img).
UNIT_FIELDS = ("enabled", "image", "mask", "module", "model", "weight", "guidance_start", "guidance_end",
               "control_mode", "resize_mode", "pixel_perfect", "processor_res", "threshold_a", "threshold_b")
TXT2IMG_UNIT_FIELDS = (*UNIT_FIELDS, "hr_option")
# The unit's pictures: the last inputs of the Generate event (after the older fields, so that gradio clients
# written before they were inputs keep their positions), and what an infotext cannot restore.
PICTURE_FIELDS = ("image", "mask")
RESTORED_FIELDS = tuple(name for name in TXT2IMG_UNIT_FIELDS if name not in PICTURE_FIELDS)


def unit_field(index: int, name: str) -> str:
    return f"{PREFIX}{index}_{name}"


def unit_fields(mode: str, index: int) -> tuple[str, ...]:
    names = TXT2IMG_UNIT_FIELDS if mode == "txt2img" else UNIT_FIELDS
    return tuple(unit_field(index, name) for name in names)


def is_picture_field(name: str) -> bool:
    """Whether a form field name is a unit's control image or mask (``controlnet_<i>_image`` / ``_mask``)."""
    return name.startswith(PREFIX) and name.rsplit("_", 1)[-1] in PICTURE_FIELDS


def unit_count(setting: Any) -> int:
    """The settings' unit count, kept within 1..MAX_UNITS (a bad value gives the default)."""
    try:
        count = int(setting)
    except (TypeError, ValueError):
        return DEFAULT_UNITS
    return min(max(count, 1), MAX_UNITS)


def _control_image(value: Any) -> Image.Image | None:
    """An uploaded picture, or an image editor's drawing (its composite: a scribble on a blank canvas)."""
    if isinstance(value, Mapping):
        return scribble_picture(value)
    return value.convert("RGB") if isinstance(value, Image.Image) else None


def scribble_picture(value: Any) -> Image.Image | None:
    """A drawing on the blank canvas as an RGB picture: the strokes over white (the extension's canvas, for the
    "invert" preprocessor), or None when nothing is drawn."""
    if not isinstance(value, Mapping):
        return None
    composite = value.get("composite") or value.get("background")
    if not isinstance(composite, Image.Image):
        return None
    white = Image.new("RGBA", composite.size, "white")
    picture = Image.alpha_composite(white, composite.convert("RGBA")).convert("RGB")
    darkest, _ = picture.convert("L").getextrema()
    return None if darkest == 255 else picture


def unit_mask(value: Any) -> Image.Image | None:
    """A unit's mask as the API's ``mask`` takes it (white = masked; transparency counts as unmasked): an
    uploaded picture as is, or the strokes painted on an image editor (white where painted)."""
    if isinstance(value, Mapping):
        return painted_mask(value)
    return value if isinstance(value, Image.Image) else None


def painted_mask(value: Any) -> Image.Image | None:
    """The strokes on an image editor's layers as an L mask (white where any layer has paint), or None."""
    if not isinstance(value, Mapping):
        return None
    background = value.get("background")
    layers = [layer for layer in value.get("layers") or [] if isinstance(layer, Image.Image)]
    if not layers:
        return None
    size = background.size if isinstance(background, Image.Image) else layers[0].size
    mask = Image.new("L", size, 0)
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A").resize(size, Image.Resampling.NEAREST)
        mask.paste(255, (0, 0), alpha.point(lambda v: 255 if v > 0 else 0))
    return mask if mask.getbbox() is not None else None  # None: nothing painted


def units_from_values(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The units up to the last enabled one: enabled ones with their settings, the disabled ones before them as
    ``{"enabled": False}`` placeholders, so that messages and the infotext (``controlnet_units[1]``,
    ``ControlNet 1``) count units as the page numbers them. No unit enabled: an empty list.

    An enabled unit without a model is refused here, naming the page's unit (the engine would skip it
    silently, as it does the empty slots API clients send)."""
    units: list[dict[str, Any]] = []
    index = 0
    while unit_field(index, "enabled") in values:
        if not values.get(unit_field(index, "enabled")):
            units.append({"enabled": False})
            index += 1
            continue
        unit: dict[str, Any] = {"enabled": True}
        for name in TXT2IMG_UNIT_FIELDS[1:]:
            key = unit_field(index, name)
            if key in values and values[key] is not None and values[key] != "":
                unit[name] = values[key]
        unit["image"] = _control_image(values.get(unit_field(index, "image")))
        unit["mask"] = unit_mask(values.get(unit_field(index, "mask")))
        unit["pixel_perfect"] = bool(unit.get("pixel_perfect"))
        if str(unit.get("model") or NO_MODEL).strip() in ("", NO_MODEL):
            raise RequestError(f"controlnet_units[{index}].model",
                               f"ControlNet Unit {index} is enabled: choose its model (or untick Enable)")
        units.append(unit)
        index += 1
    while units and not units[-1]["enabled"]:
        units.pop()
    return units


@dataclass
class RestoredUnits:
    """What pasted parameters put into the page's units: control values (``controlnet_<i>_<field>``) and, per
    unit, the note it shows ("" for none)."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    overflow: str = ""  # the section's note: units the text names beyond the page's count ("" for none)


def restore_units(units: Sequence[ControlUnit], count: int, find_model: Callable[[str], str | None],
                  has_image: Sequence[bool] = (), init_image_mode: bool = False) -> RestoredUnits:
    """The page's ``count`` units as an infotext's ``ControlNet N`` entries describe them (``units``, as
    ``webui.controlnet.infotext.units_from_params`` reads them): a unit the text names is enabled with its
    settings; every other unit is switched off (its other controls are left), so the page makes what the text
    describes. ``find_model`` gives the installed model's title for a name or "name [hash]" (None: not
    installed; the unit then keeps "None" and says the model is missing). ``has_image[i]``: unit i already holds
    a control image, which is kept; otherwise the note says the image is missing and must be uploaded."""
    restored = RestoredUnits()
    for index in range(count):
        unit = units[index] if index < len(units) else None
        if unit is None or not unit.enabled:
            restored.values[unit_field(index, "enabled")] = False
            restored.notes.append("")
            continue
        problems: list[str] = []
        pre = catalog.find(unit.module)
        if pre is None:
            problems.append(f"⚠️ **Preprocessor missing**: `{unit.module}` is not available here, so \"none\" is "
                            "chosen.")
            pre = catalog.find("none")
            assert pre is not None
        unit = unit.replace(module=pre.name).with_defaults()
        title = find_model(unit.model) if unit.model.strip() not in ("", NO_MODEL) else None
        if title is None:
            problems.append(f"⚠️ **Model missing**: `{unit.model}` is not installed. Put it in models/ControlNet, "
                            "press 🔄 beside the model list and choose it.")
        values = {
            "enabled": True, "module": pre.name, "model": title or NO_MODEL, "weight": unit.weight,
            "guidance_start": unit.guidance_start, "guidance_end": unit.guidance_end,
            "control_mode": unit.control_mode.value, "resize_mode": unit.resize_mode.value,
            "pixel_perfect": unit.pixel_perfect, "processor_res": unit.processor_res,
            "threshold_a": unit.threshold_a, "threshold_b": unit.threshold_b, "hr_option": unit.hr_option.value,
        }
        restored.values.update({unit_field(index, name): value for name, value in values.items()})
        if not (index < len(has_image) and has_image[index]):
            fallback = " (or leave it empty to use the picture above)" if init_image_mode else ""
            problems.insert(0, f"⚠️ **Control image missing**: the settings of ControlNet Unit {index} came from "
                               "pasted parameters, which cannot hold its control image. Upload the control image"
                               f"{fallback} before generating.")
        restored.notes.append("\n\n".join(problems))
    restored.overflow = overflow_note(units, count)
    return restored


def overflow_note(units: Sequence[ControlUnit], count: int) -> str:
    """What the page says when pasted parameters name enabled units past its ``count``: how many were left
    out, which, and the setting that gives more units ("" when all fit)."""
    left = [index for index, unit in enumerate(units) if index >= count and unit.enabled]
    if not left:
        return ""
    names = ", ".join(f"ControlNet {index}" for index in left)
    units_word = "unit was" if len(left) == 1 else "units were"
    return (f"⚠️ **{len(left)} ControlNet {units_word} not restored** ({names}): this page shows {count} "
            f"unit{'s' if count != 1 else ''}. Raise Settings → \"ControlNet units per tab\" "
            f"(controlnet_unit_count) to at least {left[-1] + 1}, restart Atelier and paste the parameters again.")
