"""From the fields a front end was given to a checked GenerationRequest.

The page, the REST API and the CLI each read their own input (form values, A1111 JSON, flags) into a
dict of GenerationRequest field names; a field that is missing or None was not given, and takes its
default here, from the Settings, in this one place. So a job asked for without steps, sampler, clip skip,
VAE or size is the same job whichever front end sent it.

Pure: no torch, no gradio.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any

from ..config import Settings
from ..controlnet.units import ControlUnit
from ..samplers import resolve_sampler
from .request import GenerationRequest, InpaintArea, MaskedContent, RequestError, ResizeMode

_ENUMS: dict[str, type[enum.Enum]] = {"resize_mode": ResizeMode, "masked_content": MaskedContent,
                                      "inpaint_area": InpaintArea}
_KNOWN = frozenset(f.name for f in dataclasses.fields(GenerationRequest))
HIRES_DENOISING_STRENGTH = 0.7  # A1111's default for the hires pass (img2img's is 0.75)


def settings_defaults(settings: Settings) -> dict[str, Any]:
    """The request fields whose default is a setting (everything else defaults as GenerationRequest says)."""
    return {
        "sampler": settings.default_sampler,
        "steps": settings.default_steps,
        "clip_skip": settings.default_clip_skip,
        "vae": settings.default_vae,
        "emphasis": settings.emphasis,
        "rng": settings.randn_source,
        "eta_noise_seed_delta": settings.eta_noise_seed_delta,
        "img2img_fix_steps": settings.img2img_fix_steps,
        "uni_pc_variant": settings.uni_pc_variant,
        "uni_pc_skip_type": settings.uni_pc_skip_type,
        "uni_pc_order": settings.uni_pc_order,
        "uni_pc_lower_order_final": settings.uni_pc_lower_order_final,
        "save_images": settings.save_images,
        "save_first_pass": settings.save_images_before_highres_fix,
    }


def build_request(settings: Settings, given: Mapping[str, Any], native_size: Callable[[], int]) -> GenerationRequest:
    """A validated request from ``given`` (GenerationRequest field names; None = not given).

    ``native_size`` gives the checkpoint's native side; it is asked only when a txt2img request has no size
    and the settings name none. img2img and inpainting default to the init image's size (to a multiple of 8),
    so nothing is stretched. A legacy sampler name such as "DPM++ 2M Karras" is split into sampler and schedule
    type. Raises RequestError / UnknownSamplerError naming the field.
    """
    unknown = sorted(set(given) - _KNOWN)
    if unknown:
        raise ValueError(f"not request fields: {', '.join(unknown)}")  # a front end's bug, not the user's
    fields = settings_defaults(settings)
    if given.get("enable_hr") and given.get("init_image") is None:
        fields["denoising_strength"] = HIRES_DENOISING_STRENGTH
    fields.update({name: value for name, value in given.items() if value is not None})
    for name, kind in _ENUMS.items():
        if name in fields:
            fields[name] = _enum_value(name, kind, fields[name])
    if "controlnet_units" in fields:  # A1111 clients' unit dicts (field names, enum names or indices)
        fields["controlnet_units"] = [unit if isinstance(unit, ControlUnit) else ControlUnit.from_dict(unit, index)
                                      for index, unit in enumerate(fields["controlnet_units"])]
    fields["width"], fields["height"] = _size(settings, fields, native_size)
    choice = resolve_sampler(str(fields["sampler"]), str(fields.get("schedule_type") or "Automatic"))
    fields.update(sampler=choice.name, schedule_type=choice.schedule_type)
    request = GenerationRequest(**fields)
    request.validate()
    return request


def _enum_value(name: str, kind: type[enum.Enum], value: Any) -> enum.Enum:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise RequestError(name, f"{value!r} is not one of {choices}") from None


def _size(settings: Settings, fields: Mapping[str, Any], native_size: Callable[[], int]) -> tuple[int, int]:
    width, height = fields.get("width"), fields.get("height")
    if width is not None and height is not None:
        return width, height
    init = fields.get("init_image")
    if init is not None:
        default_w, default_h = init.width // 8 * 8, init.height // 8 * 8
    else:
        default_w = default_h = settings.default_size or native_size()
    return (default_w if width is None else width), (default_h if height is None else height)
