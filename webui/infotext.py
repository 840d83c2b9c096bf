"""A1111's infotext: the generation parameters stored in PNG `parameters` / EXIF UserComment.

    <prompt, any number of lines>
    Negative prompt: <negative prompt, any number of lines>     (omitted when empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, ...

Pure text handling (no torch, diffusers or gradio) so the API, the PNG-info tab and tools can
use it cheaply. Other tools read and write this exact layout, so its quirks are kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from .controlnet.infotext import units_from_params
from .pipelines.request import MAX_HR_SCALE, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE
from .samplers import SCHEDULE_TYPES, canonical_sampler_name, resolve_sampler, split_legacy_sampler_name

# A1111's parameter pattern: a key, then a JSON-quoted value or anything up to the next comma.
PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_PREFIX = "Negative prompt:"
MIN_PARAMS = 3  # fewer matches on the last line: it is prose, part of the prompt

# Keys A1111 writes first, in its order; other keys follow in the order given, then these last.
LEADING_KEYS: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "VAE hash", "VAE", "Variation seed", "Variation seed strength", "Seed resize from",
    "Denoising strength", "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio",
    "Init image hash", "RNG", "Tiling",
)
TRAILING_KEYS: tuple[str, ...] = ("Version",)

INT_KEYS = frozenset({
    "Steps", "Seed", "Variation seed", "Clip skip", "ENSD", "Hires steps", "Mask blur", "Masked area padding",
    "Batch size", "Batch pos",
})
FLOAT_KEYS = frozenset({
    "CFG scale", "Image CFG scale", "Variation seed strength", "Denoising strength", "Hires upscale", "Hires CFG Scale",
    "Conditional mask weight", "Token merging ratio", "Eta", "Eta DDIM", "Refiner switch at",
})


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """A1111's text for one image; None and empty values are left out."""
    pairs = [f"{key}: {_quote(_text(value))}" for key, value in _ordered(params) if not _is_empty(value)]
    lines = [prompt] if prompt else []
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    if pairs:
        lines.append(", ".join(pairs))
    return "\n".join(lines)


def _ordered(params: Mapping[str, object]) -> list[tuple[str, object]]:
    fixed = set(LEADING_KEYS) | set(TRAILING_KEYS)
    first = [(k, params[k]) for k in LEADING_KEYS if k in params]
    middle = [(k, v) for k, v in params.items() if k not in fixed]
    last = [(k, params[k]) for k in TRAILING_KEYS if k in params]
    return first + middle + last


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        # 7.0 -> "7" as A1111's UI values print; repr keeps every other float exact and short.
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, Mapping):  # e.g. Lora hashes {"name": "hash"} -> "name: hash, ..."
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _quote(text: str) -> str:
    """JSON-quote a value the parser would otherwise cut or unquote."""
    if any(c in text for c in ',:\n') or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    return text


def parse_infotext(text: str) -> dict[str, object]:
    """Parse A1111 infotext into {"Prompt", "Negative prompt", key: value...}.

    Shape: every key keeps its name. Known numeric keys (Steps, Seed, CFG scale...) become int
    or float when they parse, otherwise stay strings. A `WxH` value (Size, Hires resize...) stays
    as written and also gives `<key>-1` (width) and `<key>-2` (height) as ints, A1111's own names.
    A legacy combined sampler ("DPM++ 2M Karras") is split into Sampler and Schedule type.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    params_line = ""
    if len(PARAM_RE.findall(lines[-1])) >= MIN_PARAMS:
        params_line = lines.pop()

    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if not negative and line.lstrip().startswith(NEGATIVE_PREFIX):
            negative.append(line.lstrip()[len(NEGATIVE_PREFIX):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)

    result: dict[str, object] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, raw in PARAM_RE.findall(params_line):
        key = key.strip()
        value = _unquote(raw.strip())
        result[key] = _typed(key, value)
        size = SIZE_RE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = int(size.group(1)), int(size.group(2))

    sampler = result.get("Sampler")
    if isinstance(sampler, str):
        base, schedule = split_legacy_sampler_name(sampler)
        if schedule is not None:
            result["Sampler"] = base
            result["Schedule type"] = schedule  # the combined name wins, as in A1111
    return result


def _typed(key: str, value: str) -> object:
    try:
        if key in INT_KEYS:
            return int(value)
        if key in FLOAT_KEYS:
            return float(value)
    except ValueError:
        pass
    return value


def request_fields_from_infotext(text: str) -> dict[str, object]:
    """`GenerationRequest` keyword arguments for the parts of `text` that make sense as a request.

    Unknown keys are ignored; a value that does not parse or is out of the request's range is
    left out (the request default applies) instead of raising.
    """
    parsed = parse_infotext(text)
    fields: dict[str, object] = {"prompt": parsed["Prompt"], "negative_prompt": parsed["Negative prompt"]}

    steps = parsed.get("Steps")
    if _is_int(steps) and 1 <= steps <= MAX_STEPS:  # type: ignore[operator]
        fields["steps"] = steps
    cfg = _number(parsed.get("CFG scale"))
    if cfg is not None and 0.0 <= cfg <= 30.0:
        fields["cfg_scale"] = cfg
    seed = parsed.get("Seed")
    if _is_int(seed) and (seed == -1 or 0 <= seed <= MAX_SEED):  # type: ignore[operator]
        fields["seed"] = seed
    width, height = parsed.get("Size-1"), parsed.get("Size-2")
    if _valid_side(width) and _valid_side(height):
        fields["width"], fields["height"] = width, height
    denoise = _number(parsed.get("Denoising strength"))
    if denoise is not None and 0.0 <= denoise <= 1.0:
        fields["denoising_strength"] = denoise
    clip_skip = parsed.get("Clip skip")
    if _is_int(clip_skip) and 1 <= clip_skip <= 12:  # type: ignore[operator]
        fields["clip_skip"] = clip_skip
    fields.update(_sampler_fields(parsed.get("Sampler"), parsed.get("Schedule type")))
    vae = parsed.get("VAE")
    if isinstance(vae, str) and vae.strip():
        fields["vae"] = vae.strip()
    checkpoint = _checkpoint(parsed.get("Model"), parsed.get("Model hash"))
    if checkpoint:
        fields["checkpoint"] = checkpoint
    fields.update(_variation_fields(parsed))
    fields.update(_hires_fields(parsed))
    fields.update(_refiner_fields(parsed))
    units = units_from_params(parsed)  # "ControlNet N" entries; their images are not in the text
    if units:
        fields["controlnet_units"] = units
    fields.update(_noise_and_emphasis_fields(parsed))
    return fields


def _noise_and_emphasis_fields(parsed: Mapping[str, object]) -> dict[str, object]:
    """A1111's "RNG", "ENSD" and "Emphasis". A text without "RNG" means A1111's default, the GPU, except one
    written by an Atelier version from before the setting, which drew on the CPU."""
    fields: dict[str, object] = {}
    rng = parsed.get("RNG")
    if isinstance(rng, str) and rng.strip() in ("GPU", "CPU", "NV"):
        fields["rng"] = rng.strip()
    elif rng is None:
        version = parsed.get("Version")
        fields["rng"] = "CPU" if isinstance(version, str) and version.startswith("atelier") else "GPU"
    ensd = parsed.get("ENSD")
    if _is_int(ensd) and 0 <= ensd <= MAX_SEED:  # type: ignore[operator]
        fields["eta_noise_seed_delta"] = ensd
    emphasis = parsed.get("Emphasis")
    if isinstance(emphasis, str) and emphasis.strip() in ("Original", "No norm", "None"):
        fields["emphasis"] = emphasis.strip()
    return fields


def _refiner_fields(parsed: Mapping[str, object]) -> dict[str, object]:
    """A1111 1.6's "Refiner: name [hash], Refiner switch at: 0.8" (a text without them: no refiner)."""
    name, switch_at = parsed.get("Refiner"), _number(parsed.get("Refiner switch at"))
    if not isinstance(name, str) or not name.strip():
        return {}
    fields: dict[str, object] = {"refiner_checkpoint": name.strip()}
    if switch_at is not None and 0.0 <= switch_at <= 1.0:
        fields["refiner_switch_at"] = switch_at
    return fields


def _variation_fields(parsed: Mapping[str, object]) -> dict[str, object]:
    fields: dict[str, object] = {}
    subseed, strength = parsed.get("Variation seed"), _number(parsed.get("Variation seed strength"))
    if _is_int(subseed) and 0 <= subseed <= MAX_SEED and strength is not None and 0.0 <= strength <= 1.0:  # type: ignore[operator]
        fields.update(subseed=subseed, subseed_strength=strength)
    width, height = parsed.get("Seed resize from-1"), parsed.get("Seed resize from-2")
    if _valid_side(width) and _valid_side(height):
        fields.update(seed_resize_from_w=width, seed_resize_from_h=height)
    return fields


def _hires_fields(parsed: Mapping[str, object]) -> dict[str, object]:
    """Hires fix is on when the text names its upscale, resize or upscaler, as A1111 reads it."""
    if not any(key in parsed for key in ("Hires upscale", "Hires resize", "Hires upscaler")):
        return {}
    fields: dict[str, object] = {"enable_hr": True}
    scale = _number(parsed.get("Hires upscale"))
    if scale is not None and 1.0 <= scale <= MAX_HR_SCALE:
        fields["hr_scale"] = scale
    width, height = parsed.get("Hires resize-1"), parsed.get("Hires resize-2")
    if _is_int(width) and _is_int(height) and 0 <= width <= MAX_SIDE and 0 <= height <= MAX_SIDE:  # type: ignore[operator]
        fields.update(hr_resize_x=width, hr_resize_y=height)
    steps = parsed.get("Hires steps")
    if _is_int(steps) and 0 <= steps <= MAX_STEPS:  # type: ignore[operator]
        fields["hr_second_pass_steps"] = steps
    for key, name in (("Hires upscaler", "hr_upscaler"), ("Hires prompt", "hr_prompt"),
                      ("Hires negative prompt", "hr_negative_prompt"), ("Hires checkpoint", "hr_checkpoint")):
        value = parsed.get(key)
        if isinstance(value, str) and (value.strip() or name != "hr_upscaler"):
            fields[name] = value
    sampler = _sampler_fields(parsed.get("Hires sampler"), parsed.get("Hires schedule type"))
    if sampler:
        fields["hr_sampler"] = sampler["sampler"]
        if "schedule_type" in sampler:
            fields["hr_schedule_type"] = sampler["schedule_type"]
    cfg = _number(parsed.get("Hires CFG Scale"))
    if cfg is not None and 0.0 <= cfg <= 30.0:
        fields["hr_cfg_scale"] = cfg
    return fields


def _sampler_fields(sampler: object, schedule: object) -> dict[str, object]:
    name = canonical_sampler_name(sampler) if isinstance(sampler, str) else None
    if name is None:
        return {}
    fields: dict[str, object] = {"sampler": name}
    if isinstance(schedule, str) and schedule in SCHEDULE_TYPES:
        try:
            resolve_sampler(name, schedule)
        except ValueError:  # e.g. Karras for a sampler that cannot do it: keep Automatic
            return fields
        fields["schedule_type"] = schedule
    return fields


def _checkpoint(model: object, model_hash: object) -> str | None:
    """The model's name (what the registry matches first), else its short hash."""
    for value in (model, model_hash):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def _valid_side(value: object) -> bool:
    return _is_int(value) and MIN_SIDE <= value <= MAX_SIDE and value % 8 == 0  # type: ignore[operator]
