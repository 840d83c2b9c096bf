"""From form values to a GenerationRequest, and from infotext back to form values.

No gradio here: the tabs collect their values into a dict keyed by the names below, so this
translation is tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from ..infotext import request_fields_from_infotext
from ..pipelines.request import RequestError
from .controlnet_form import units_from_values

# Fields every mode has, in the order the txt2img API takes them after the checkpoint.
COMMON_FIELDS = ("prompt", "negative_prompt", "sampler", "schedule_type", "steps", "width", "height", "batch_count",
                 "batch_size", "cfg_scale", "seed", "clip_skip", "styles", "vae")
IMG2IMG_FIELDS = ("init_image", "denoising_strength", "resize_mode")
OUTPAINT_FIELDS = ("outpaint_left", "outpaint_right", "outpaint_top", "outpaint_bottom")
INPAINT_FIELDS = ("mask_editor", "mask_upload", "mask_blur", "masked_content", "inpaint_area", "inpaint_padding",
                  "mask_invert", *OUTPAINT_FIELDS)
VARIATION_FIELDS = ("subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")
HIRES_FIELDS = ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "denoising_strength", "hr_scale", "hr_resize_x",
                "hr_resize_y", "hr_sampler", "hr_schedule_type", "hr_cfg_scale", "hr_checkpoint", "hr_prompt",
                "hr_negative_prompt")
REFINER_FIELDS = ("refiner_checkpoint", "refiner_switch_at")
# A1111 settings that change the picture, overridden for one job ("Use setting" / ENSD -1: the Settings' value).
OVERRIDE_FIELDS = ("emphasis", "rng", "eta_noise_seed_delta")
USE_SETTING = "Use setting"
SAME = "Use same"  # a hires dropdown's "like the first pass"
SAME_CHECKPOINT = "Use same checkpoint"
NO_REFINER = "None"
# The override fields come last, so gradio clients that send the older fields positionally still work.
MODE_FIELDS = {
    "txt2img": COMMON_FIELDS + VARIATION_FIELDS + HIRES_FIELDS + REFINER_FIELDS + OVERRIDE_FIELDS,
    "img2img": COMMON_FIELDS + IMG2IMG_FIELDS + VARIATION_FIELDS + REFINER_FIELDS + OVERRIDE_FIELDS,
    "inpaint": COMMON_FIELDS + ("denoising_strength", "resize_mode") + INPAINT_FIELDS + VARIATION_FIELDS
    + REFINER_FIELDS + OVERRIDE_FIELDS,
}


def _int(values: Mapping[str, Any], name: str) -> int | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise RequestError(name, "must be a number") from exc
    if number != number or number in (float("inf"), float("-inf")) or number != int(number):
        raise RequestError(name, "must be a whole number")
    return int(number)


def _float(values: Mapping[str, Any], name: str) -> float | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise RequestError(name, "must be a number") from exc


def editor_parts(value: Any) -> tuple[Image.Image | None, Image.Image | None]:
    """(picture, painted mask) from an image editor's value {background, layers, composite}.

    The mask is white wherever any layer has paint (alpha > 0), black elsewhere; None if nothing is painted.
    """
    if not isinstance(value, Mapping):
        return (value if isinstance(value, Image.Image) else None), None
    background = value.get("background")
    if not isinstance(background, Image.Image):
        return None, None
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        if isinstance(layer, Image.Image):
            alpha = np.asarray(layer.convert("RGBA").resize(background.size, Image.Resampling.NEAREST))[..., 3]
            painted |= alpha > 0
    picture = background.convert("RGB")
    if not painted.any():
        return picture, None
    return picture, Image.fromarray((painted * 255).astype(np.uint8), "L")


def _uploaded_mask(image: Any, size: tuple[int, int]) -> Image.Image | None:
    """An uploaded mask (white = repaint): alpha counts where it has transparency, else brightness."""
    if not isinstance(image, Image.Image):
        return None
    if image.mode in ("RGBA", "LA") and np.asarray(image.getchannel("A")).min() < 255:
        mask = image.getchannel("A")
    else:
        mask = image.convert("L")
    return mask.resize(size, Image.Resampling.NEAREST).point(lambda v: 255 if v >= 128 else 0)


def _text(values: Mapping[str, Any], name: str) -> str | None:
    return str(values[name]) if values.get(name) else None


def form_fields(mode: str, checkpoint: str | None, values: Mapping[str, Any],
                prompt: str | None = None, negative_prompt: str | None = None) -> dict[str, Any]:
    """The request fields a tab's Generate button asks for (None where a box was left empty: the settings'
    default applies, see ``AppContext.new_request``). ``prompt``/``negative_prompt`` override the typed text
    (styles already merged in). Raises RequestError naming the field a user has to fix."""
    fields: dict[str, Any] = {
        "prompt": prompt if prompt is not None else str(values.get("prompt") or ""),
        "negative_prompt": negative_prompt if negative_prompt is not None else str(values.get("negative_prompt") or ""),
        "checkpoint": checkpoint or None,
        "sampler": _text(values, "sampler"),
        "schedule_type": _text(values, "schedule_type"),
        "vae": _text(values, "vae"),
        **{name: _int(values, name) for name in ("steps", "width", "height", "seed", "batch_count", "batch_size",
                                                 "clip_skip")},
        "cfg_scale": _float(values, "cfg_scale"),
    }
    fields.update(_variation_fields(values))
    fields.update(_refiner_fields(values))
    fields.update(_override_fields(values))
    if mode == "txt2img":
        fields.update(_hires_fields(values))
    if mode in ("img2img", "inpaint"):
        fields["denoising_strength"] = _float(values, "denoising_strength")
        fields["resize_mode"] = _text(values, "resize_mode")
    if mode == "img2img":
        image = values.get("init_image")
        if not isinstance(image, Image.Image):
            raise RequestError("init_image", "drop or paste a picture to start from")
        fields["init_image"] = image.convert("RGB")
    elif mode == "inpaint":
        picture, painted = editor_parts(values.get("mask_editor"))
        if picture is None:
            raise RequestError("init_image", "drop or paste a picture to inpaint, then paint over what should change")
        mask = _uploaded_mask(values.get("mask_upload"), picture.size) or painted
        outpaint = {name: _int(values, name) or 0 for name in OUTPAINT_FIELDS}
        if mask is None and not any(outpaint.values()):
            raise RequestError("mask", "paint over the part to change, upload a mask, or extend the picture "
                                       "(Outpainting)")
        fields.update(outpaint)
        fields.update(
            init_image=picture,
            mask=mask,
            mask_blur=_int(values, "mask_blur"),
            masked_content=_text(values, "masked_content"),
            inpaint_area=_text(values, "inpaint_area"),
            inpaint_padding=_int(values, "inpaint_padding"),
            mask_invert=bool(values.get("mask_invert")),
        )
    elif mode != "txt2img":
        raise ValueError(f"unknown mode {mode!r}")
    controlnet_units = units_from_values(values)  # the ControlNet accordion's units (controlnet_form)
    if controlnet_units:
        fields["controlnet_units"] = controlnet_units
    return fields


def _variation_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {name: _int(values, name) for name in ("subseed", "seed_resize_from_w",
                                                                    "seed_resize_from_h")}
    fields["subseed_strength"] = _float(values, "subseed_strength")
    return fields


def _override_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Emphasis, RNG source and ENSD for this job; None (the Settings' value) where the page says so."""
    fields: dict[str, Any] = {}
    for name in ("emphasis", "rng"):
        value = values.get(name)
        fields[name] = None if value in (None, "", USE_SETTING) else str(value)
    ensd = _int(values, "eta_noise_seed_delta")
    fields["eta_noise_seed_delta"] = None if ensd is None or ensd < 0 else ensd
    return fields


def _refiner_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    checkpoint = values.get("refiner_checkpoint")
    if checkpoint in (None, "", NO_REFINER):
        return {}
    return {"refiner_checkpoint": str(checkpoint), "refiner_switch_at": _float(values, "refiner_switch_at")}


def _hires_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """txt2img's hires-fix fields, when hires fix is ticked."""
    fields: dict[str, Any] = {}
    if not values.get("enable_hr"):
        return fields
    same = (None, "", SAME)
    cfg = _float(values, "hr_cfg_scale")
    checkpoint = values.get("hr_checkpoint")
    fields.update(
        hr_checkpoint=None if checkpoint in (None, "", SAME_CHECKPOINT) else str(checkpoint),
        enable_hr=True,
        hr_upscaler=_text(values, "hr_upscaler"),
        hr_second_pass_steps=_int(values, "hr_second_pass_steps"),
        denoising_strength=_float(values, "denoising_strength"),
        hr_scale=_float(values, "hr_scale"),
        hr_resize_x=_int(values, "hr_resize_x"),
        hr_resize_y=_int(values, "hr_resize_y"),
        hr_sampler=None if values.get("hr_sampler") in same else str(values["hr_sampler"]),
        hr_schedule_type=None if values.get("hr_schedule_type") in same else str(values["hr_schedule_type"]),
        hr_cfg_scale=cfg or None,  # 0: the first pass's CFG scale
        hr_prompt=str(values.get("hr_prompt") or ""),
        hr_negative_prompt=str(values.get("hr_negative_prompt") or ""),
    )
    return fields


# Infotext request fields -> the form field that shows them ("checkpoint" lives in the top bar).
_FORM_NAMES = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "cfg_scale": "cfg_scale",
               "seed": "seed", "width": "width", "height": "height", "sampler": "sampler",
               "schedule_type": "schedule_type", "denoising_strength": "denoising_strength",
               "clip_skip": "clip_skip", "checkpoint": "checkpoint", "vae": "vae",
               **{name: name for name in VARIATION_FIELDS + HIRES_FIELDS + REFINER_FIELDS + OVERRIDE_FIELDS},
               "controlnet_units": "controlnet_units"}


def values_from_infotext(text: str) -> dict[str, Any]:
    """Form values read from a pasted or embedded infotext; what does not parse is left out. A text without
    hires fix, variation seed or ControlNet units switches them off, and one without "Emphasis" / "ENSD" means
    A1111's defaults (it writes them only when they differ), so the form makes the picture the text describes.
    ``controlnet_units`` holds the text's units (``ControlUnit``, without images) for ``restore_units``."""
    fields = {"enable_hr": False, "subseed_strength": 0.0, "refiner_checkpoint": NO_REFINER, "controlnet_units": [],
              "emphasis": "Original", "eta_noise_seed_delta": 0, **request_fields_from_infotext(text)}
    values = {_FORM_NAMES[k]: v for k, v in fields.items() if k in _FORM_NAMES}
    for name in ("hr_sampler", "hr_schedule_type"):
        if fields.get("enable_hr") and name not in values:
            values[name] = SAME
    if fields.get("enable_hr") and "hr_checkpoint" not in values:
        values["hr_checkpoint"] = SAME_CHECKPOINT
    return values


def token_count_label(token_count: int) -> str:
    """"12/75", "80/150": tokens used and the size of the 75-token chunks they take, as A1111 shows it."""
    chunks = max(1, -(-token_count // 75))
    return f"{token_count}/{chunks * 75}"


def part_token_count_label(counts: list[int]) -> str:
    """One count per ``AND`` part: "12/75" for a plain prompt, "12/75 AND 80/150" for two parts."""
    return " AND ".join(token_count_label(count) for count in counts or [0])


def insert_into_prompt(prompt: str, text: str) -> str:
    """The prompt with a LoRA tag or embedding name added at the end (once), comma-separated as artists write."""
    prompt = prompt or ""
    if text in prompt:
        return prompt
    stripped = prompt.rstrip()
    if not stripped:
        return text
    separator = " " if stripped.endswith(",") else ", "
    return f"{stripped}{separator}{text}"
