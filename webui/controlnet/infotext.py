"""ControlNet units in infotext, exactly as sd-webui-controlnet writes and reads them:

    ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and
    Resize, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0,
    Pixel Perfect: False, Control Mode: Balanced"

One key per enabled unit (with a model), numbered by the unit's place among all units; the value lists the extension's
infotext fields in its order, each ``Display Name: value`` (field names title-cased word by word, numbers as
Python prints them, enums by their value). The general infotext writer quotes the whole value.

Pure: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .units import ControlUnit, UnitError, control_mode_from_value, hr_option_from_value, resize_mode_from_value

KEY = "ControlNet"
KEY_RE = re.compile(r"^ControlNet (\d+)$")
MAX_UNITS = 32  # more "ControlNet N" entries than any UI has units: the text is not Atelier's or the extension's
# The extension's ControlNetUnit.infotext_fields(), in order.
FIELDS: tuple[str, ...] = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a",
                           "threshold_b", "guidance_start", "guidance_end", "pixel_perfect", "control_mode")
# Read but not written: newer versions of the extension add "Hr Option" to the entry.
READ_FIELDS: tuple[str, ...] = (*FIELDS, "hr_option")


def display_name(field: str) -> str:
    """``processor_res`` -> ``Processor Res`` (the extension's field_to_displaytext)."""
    return " ".join(word.capitalize() for word in field.split("_"))


_DISPLAY = {display_name(f): f for f in READ_FIELDS}
# One "Key: value" pair; the value runs to the next ", Key:" of a known key, so a model name with a comma
# survives (the extension itself would split it).
_PAIR_RE = re.compile(r"\s*(" + "|".join(re.escape(k) for k in _DISPLAY) + r"):\s*(.*?)\s*(?=,\s*(?:"
                      + "|".join(re.escape(k) for k in _DISPLAY) + r"):|$)")


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))  # enums by value; floats as Python prints them ("1.0")


def format_unit(unit: ControlUnit) -> str:
    """The value of one ``ControlNet N`` entry."""
    return ", ".join(f"{display_name(f)}: {_text(getattr(unit, f))}" for f in FIELDS)


def infotext_params(units: Sequence[ControlUnit]) -> dict[str, str]:
    """``{"ControlNet 0": "...", ...}`` for the units a job applies (enabled, with a model), numbered by their
    index among all units as the extension numbers them."""
    return {f"{KEY} {index}": format_unit(unit) for index, unit in enumerate(units) if unit.used}


def _parse_value(text: str) -> bool | int | float | str:
    """The extension's parse_value: True/False, then int, then float, else the text."""
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_unit(text: str, index: int = 0) -> ControlUnit:
    """A unit (enabled, without image) from one entry's value. Raises UnitError when it is not one."""
    pairs = {_DISPLAY[key]: value for key, value in _PAIR_RE.findall(text)}
    if "module" not in pairs or "model" not in pairs:
        raise UnitError(f"controlnet_units[{index}]", f"not a ControlNet unit: {text[:80]!r}")
    fields: dict[str, Any] = {"enabled": True, "module": pairs["module"], "model": pairs["model"]}
    for name in ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
        if name in pairs:
            value = _parse_value(pairs[name])
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                fields[name] = float(value)
    if "processor_res" in pairs:
        value = _parse_value(pairs["processor_res"])
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            fields["processor_res"] = int(value)
    if "pixel_perfect" in pairs:
        fields["pixel_perfect"] = pairs["pixel_perfect"] == "True"
    if "resize_mode" in pairs:
        fields["resize_mode"] = resize_mode_from_value(pairs["resize_mode"], f"controlnet_units[{index}].resize_mode")
    if "control_mode" in pairs:
        fields["control_mode"] = control_mode_from_value(pairs["control_mode"],
                                                         f"controlnet_units[{index}].control_mode")
    if "hr_option" in pairs:
        fields["hr_option"] = hr_option_from_value(pairs["hr_option"], f"controlnet_units[{index}].hr_option")
    return ControlUnit(**fields)


def units_from_params(params: Mapping[str, object]) -> list[ControlUnit]:
    """The units a parsed infotext (``webui.infotext.parse_infotext``) describes, at their indices: a gap (an
    index the text has no entry for) is a disabled default unit. Entries that do not parse are skipped."""
    found: dict[int, ControlUnit] = {}
    for key, value in params.items():
        match = KEY_RE.match(key)
        if match is None or not isinstance(value, str) or int(match[1]) >= MAX_UNITS:
            continue
        try:
            found[int(match[1])] = parse_unit(value, int(match[1]))
        except UnitError:
            continue
    if not found:
        return []
    return [found.get(i, ControlUnit(enabled=False)) for i in range(max(found) + 1)]
