"""A1111 API requests -> the engine's GenerationRequest, and GenerationResult -> A1111's response.

Everything a request can get wrong is checked here, before the job waits in the queue, and reported
as an ApiError naming the A1111 field. Features Atelier does not have are either refused (scripts,
which would change what is made) or noted in ``info["warnings"]`` (hires fix, variation seeds...),
so a client always gets pictures it can trust and a reason when something was left out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..controlnet.units import ControlUnit, decode_image_data
from ..errors import AtelierError, Cause
from ..models.vae import VaeNotFoundError, resolve_vae
from ..pipelines.manager import NoCheckpointError
from ..pipelines.request import GenerationRequest, InpaintArea, MaskedContent, RequestError, ResizeMode
from .errors import ApiError, invalid
from .images import decode_image, encode_png
from .schemas import Img2ImgRequest, Txt2ImgRequest

if TYPE_CHECKING:
    from ..context import AppContext
    from ..styles import StyleStore

# GenerationRequest field -> the A1111 request field (or option) a client sent it as.
API_FIELDS = {
    "batch_count": "n_iter",
    "sampler": "sampler_name",
    "schedule_type": "scheduler",
    "clip_skip": "CLIP_stop_at_last_layers",
    "vae": "sd_vae",
    "checkpoint": "sd_model_checkpoint",
    "init_image": "init_images",
    "masked_content": "inpainting_fill",
    "inpaint_area": "inpaint_full_res",
    "inpaint_padding": "inpaint_full_res_padding",
    "mask_invert": "inpainting_mask_invert",
    "hr_sampler": "hr_sampler_name",
    "hr_schedule_type": "hr_scheduler",
    "hr_cfg_scale": "hr_cfg",
    "hr_checkpoint": "hr_checkpoint_name",
    **{f"outpaint_{side}": "script_args" for side in ("left", "right", "top", "bottom")},
}

RESIZE_MODES = {0: ResizeMode.JUST_RESIZE, 1: ResizeMode.CROP_AND_RESIZE, 2: ResizeMode.RESIZE_AND_FILL,
                3: ResizeMode.JUST_RESIZE}  # 3 is A1111's "just resize (latent upscale)"
FILLS = {0: MaskedContent.FILL, 1: MaskedContent.ORIGINAL, 2: MaskedContent.LATENT_NOISE,
         3: MaskedContent.LATENT_NOTHING}
# A1111's UniPC options: request fields and settings of the same names
UNI_PC_OPTIONS = ("uni_pc_variant", "uni_pc_skip_type", "uni_pc_order", "uni_pc_lower_order_final")
# Options a request may override for itself (override_settings).
OVERRIDABLE = ("sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae", "emphasis", "randn_source",
               "eta_noise_seed_delta", "img2img_fix_steps", *UNI_PC_OPTIONS)


@dataclass
class ApiJob:
    """One API generation: the engine request and what the response needs besides the result."""

    request: GenerationRequest
    parameters: dict[str, Any]  # the A1111 request echoed back, as A1111 does
    send_images: bool = True
    task_id: str | None = None
    restore_checkpoint: bool = False  # put the current model back after the job (override_settings)
    keep_options: dict[str, Any] = field(default_factory=dict)  # settings changed for good (no restore)
    warnings: list[str] = field(default_factory=list)


def engine_error(exc: AtelierError) -> ApiError:
    """An Atelier error as the API reports it: the status from its cause, the field under A1111's name."""
    field = _api_field(exc.field) if exc.field else None
    if exc.cause is Cause.STORAGE:
        return ApiError(507, field, str(exc), "save_failed")
    if exc.cause is Cause.EXTENSION:  # an extension broke this job; it is switched off, the next job runs
        return ApiError(500, field, str(exc), "extension_failed")
    return invalid(field, exc.message if isinstance(exc, RequestError) else str(exc))


def txt2img_job(body: Txt2ImgRequest, ctx: AppContext, styles: StyleStore) -> ApiJob:
    if body.script_name:
        raise invalid("script_name", f"script {body.script_name!r} is not available in Atelier")
    job, given = _common(body, ctx, styles)
    return _built(job, given, ctx)


def img2img_job(body: Img2ImgRequest, ctx: AppContext, styles: StyleStore) -> ApiJob:
    outpaint = _outpainting_script(body)
    job, given = _common(body, ctx, styles)
    if not body.init_images:
        raise invalid("init_images", "img2img needs at least one init image (base64)")
    if len(body.init_images) > 1:
        job.warnings.append("only the first of init_images was used")
    if body.resize_mode not in RESIZE_MODES:
        raise invalid("resize_mode", "must be 0 (just resize), 1 (crop and resize), 2 (resize and fill) or 3")
    given.update(init_image=decode_image(body.init_images[0], "init_images").convert("RGB"),
                 denoising_strength=body.denoising_strength, resize_mode=RESIZE_MODES[body.resize_mode])
    if body.mask:
        if body.inpainting_fill not in FILLS:
            raise invalid("inpainting_fill", "must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)")
        given.update(
            mask=decode_image(body.mask, "mask"),
            mask_blur=body.mask_blur if body.mask_blur is not None else max(body.mask_blur_x, body.mask_blur_y),
            masked_content=FILLS[body.inpainting_fill],
            inpaint_area=InpaintArea.ONLY_MASKED if body.inpaint_full_res else InpaintArea.WHOLE_PICTURE,
            inpaint_padding=body.inpaint_full_res_padding,
            mask_invert=bool(body.inpainting_mask_invert),
        )
        if body.mask_blur is None and body.mask_blur_x != body.mask_blur_y:
            job.warnings.append("mask_blur_x and mask_blur_y differ: both were blurred by the larger")
    given.update(outpaint)
    if not body.include_init_images:
        job.parameters.update(init_images=None, mask=None)
    return _built(job, given, ctx)


OUTPAINT_SCRIPTS = ("poor man's outpainting", "outpainting mk2")
_SIDES = {"left": "outpaint_left", "right": "outpaint_right", "up": "outpaint_top", "down": "outpaint_bottom"}


def _outpainting_script(body: Img2ImgRequest) -> dict[str, Any]:
    """A1111's outpainting scripts as request fields: "Poor man's outpainting" takes script_args [pixels,
    mask_blur, inpainting_fill, directions], "Outpainting mk2" [info, pixels, mask_blur, directions, ...]."""
    if not body.script_name:
        return {}
    name = body.script_name.strip().lower()
    if name not in OUTPAINT_SCRIPTS:
        raise invalid("script_name", f"script {body.script_name!r} is not available in Atelier "
                                     "(img2img takes \"Poor man's outpainting\" and \"Outpainting mk2\")")
    args = list(body.script_args)
    if name == "outpainting mk2":
        args = args[1:]
    try:
        pixels, blur, directions = int(args[0]), int(args[1]), args[3 if name == "poor man's outpainting" else 2]
    except (IndexError, TypeError, ValueError):
        raise invalid("script_args", "expected [pixels, mask_blur, inpainting_fill, [directions]]") from None
    if isinstance(directions, str):
        directions = [directions]
    unknown = [d for d in directions if str(d).lower() not in _SIDES]
    if unknown or not directions:
        raise invalid("script_args", f"directions must be some of left, right, up, down (got {directions!r})")
    fields: dict[str, Any] = {_SIDES[str(d).lower()]: (pixels + 7) // 8 * 8 for d in directions}
    fields["mask_blur"] = blur
    if name == "poor man's outpainting" and len(args) > 2 and args[2] in FILLS:
        fields["masked_content"] = FILLS[args[2]]
    return fields


def _built(job: ApiJob, given: dict[str, Any], ctx: AppContext) -> ApiJob:
    """The job with its checked request; what is wrong with it is a 422 naming the A1111 field."""
    try:
        job.request = ctx.new_request(given)
    except AtelierError as exc:
        raise engine_error(exc) from exc
    # The echoed parameters show what the defaults became, as A1111's do.
    req = job.request
    used = {"steps": req.steps, "sampler_name": req.sampler, "scheduler": req.schedule_type, "width": req.width,
            "height": req.height}
    if req.init_image is not None:
        used["denoising_strength"] = req.denoising_strength
    job.parameters.update({k: v for k, v in used.items() if job.parameters.get(k) is None})
    return job


def _common(body: Txt2ImgRequest, ctx: AppContext, styles: StyleStore) -> tuple[ApiJob, dict[str, Any]]:
    """The job and the request fields txt2img and img2img share (None: the settings' default)."""
    units = controlnet_units(body.alwayson_scripts or {})
    warnings = _unsupported(body)
    overrides, restore = dict(body.override_settings or {}), body.override_settings_restore_afterwards
    unknown = sorted(k for k in overrides if k not in OVERRIDABLE)
    if unknown:
        warnings.append(f"override_settings ignored (not per-request options here): {', '.join(unknown)}")
    checkpoint = find_checkpoint(ctx, overrides.get("sd_model_checkpoint"))
    clip_skip: Any = overrides.get("CLIP_stop_at_last_layers")
    whole = isinstance(clip_skip, float) and clip_skip.is_integer()
    if whole or (isinstance(clip_skip, str) and clip_skip.isdigit()):
        clip_skip = int(clip_skip)  # options arrive as JSON numbers or, from some clients, strings
    vae = overrides.get("sd_vae")
    check_vae(ctx, vae)
    prompt, negative = styles.apply(list(body.styles or []), body.prompt, body.negative_prompt)
    given: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative,
        "checkpoint": checkpoint,
        "sampler": body.sampler_name or body.sampler_index,
        "schedule_type": body.scheduler,
        "steps": body.steps,
        "cfg_scale": body.cfg_scale,
        "width": body.width,
        "height": body.height,
        "seed": body.seed,
        "batch_count": body.n_iter,
        "batch_size": body.batch_size,
        "clip_skip": clip_skip,
        "vae": vae or None,
        "emphasis": overrides.get("emphasis"),
        "rng": overrides.get("randn_source"),
        "eta_noise_seed_delta": overrides.get("eta_noise_seed_delta"),
        "img2img_fix_steps": overrides.get("img2img_fix_steps"),
        **{name: _uni_pc_value(name, overrides.get(name)) for name in UNI_PC_OPTIONS},
        "save_images": body.save_images,
        "subseed": body.subseed,
        "subseed_strength": body.subseed_strength,
        "seed_resize_from_w": max(body.seed_resize_from_w, 0),
        "seed_resize_from_h": max(body.seed_resize_from_h, 0),
        "refiner_checkpoint": second_checkpoint(body.refiner_checkpoint),
        "refiner_switch_at": body.refiner_switch_at,
        "controlnet_units": units,
    }
    if body.enable_hr:
        given.update(_hires_fields(body))
    keep: dict[str, Any] = {} if restore else \
        {k: overrides[k] for k in ("CLIP_stop_at_last_layers", "sd_vae") if k in overrides}
    job = ApiJob(GenerationRequest(), body.model_dump(), body.send_images, body.force_task_id,
                 restore_checkpoint=restore and checkpoint is not None, keep_options=keep, warnings=warnings)
    return job, given


def _uni_pc_value(name: str, value: Any) -> Any:
    """A UniPC override as the request field takes it: A1111 keeps whole-number options as floats (3.0), and some
    clients send strings; anything else goes to the request's check, which names the option."""
    if name == "uni_pc_order" and (isinstance(value, float) and value.is_integer()
                                   or isinstance(value, str) and value.strip().isdigit()):
        return int(value)
    return value


def _hires_fields(body: Txt2ImgRequest) -> dict[str, Any]:
    """A1111's hires-fix fields as request fields; firstphase_width/height (A1111's old API) set the first pass."""
    fields: dict[str, Any] = {
        "enable_hr": True,
        "hr_scale": body.hr_scale,
        "hr_resize_x": body.hr_resize_x,
        "hr_resize_y": body.hr_resize_y,
        "hr_upscaler": body.hr_upscaler or None,
        "hr_second_pass_steps": body.hr_second_pass_steps,
        "hr_sampler": body.hr_sampler_name or None,
        "hr_schedule_type": body.hr_scheduler or None,
        "hr_prompt": body.hr_prompt,
        "hr_negative_prompt": body.hr_negative_prompt,
        "hr_cfg_scale": body.hr_cfg,
        "hr_checkpoint": second_checkpoint(body.hr_checkpoint_name),
        "denoising_strength": body.denoising_strength,
    }
    if body.firstphase_width and body.firstphase_height:
        fields.update(width=body.firstphase_width, height=body.firstphase_height, hr_resize_x=body.width or 0,
                      hr_resize_y=body.height or 0)
    return fields


def _unsupported(body: Txt2ImgRequest) -> list[str]:
    notes = []
    if body.restore_faces:
        notes.append("face restoration is not available: ignored")
    if body.tiling:
        notes.append("tiling is not available: ignored")
    return notes


CONTROLNET_SCRIPT = "controlnet"  # sd-webui-controlnet's always-on script, named in any case by clients
UNITS_FIELD = "alwayson_scripts.controlnet.args"


def controlnet_units(scripts: dict[str, Any]) -> list[ControlUnit] | None:
    """The ControlNet units of ``alwayson_scripts`` (the extension's ``{"controlnet": {"args": [unit, ...]}}``);
    any other always-on script is refused by name. Images are decoded with the API's limits."""
    others = sorted(name for name in scripts if name.lower() != CONTROLNET_SCRIPT)
    if others:
        raise invalid("alwayson_scripts", f"always-on scripts not available in Atelier: {', '.join(others)} "
                                          "(only ControlNet is)")
    script = next((value for name, value in scripts.items() if name.lower() == CONTROLNET_SCRIPT), None)
    if script is None:
        return None
    args = script.get("args") if isinstance(script, dict) else script
    if not isinstance(args, list):
        raise invalid(UNITS_FIELD, "must be a list of ControlNet units")

    def decode(value: Any, field_name: str) -> Any:
        return decode_image(value, _api_field(field_name)) if isinstance(value, str) else \
            decode_image_data(value, field_name)

    try:
        return [ControlUnit.from_dict(unit, index, decode) for index, unit in enumerate(args)]
    except AtelierError as exc:
        raise engine_error(exc) from exc


def _api_field(field_name: str) -> str:
    """controlnet_units[0].weight -> alwayson_scripts.controlnet.args[0].weight, as the client sent it."""
    return UNITS_FIELD + field_name[len("controlnet_units"):] if field_name.startswith("controlnet_units") \
        else API_FIELDS.get(field_name, field_name)


def second_checkpoint(name: str | None) -> str | None:
    """A refiner or hires checkpoint as A1111 clients send it ("None" and "Use same checkpoint": none)."""
    if name is None or name.strip() in ("", "None", "Use same checkpoint"):
        return None
    return name


def find_checkpoint(ctx: AppContext, query: Any) -> str | None:
    """The registry name for an override's checkpoint (title, file name, stem or hash); None = current."""
    if query is None or query == "":
        return None
    if not isinstance(query, str):
        raise invalid("sd_model_checkpoint", "must be a checkpoint title such as 'model.safetensors [abcdef1234]'")
    try:
        return ctx.manager.resolve(query).name
    except NoCheckpointError as exc:
        titles = ", ".join(e.title for e in ctx.registry.entries()) or "none"
        raise invalid("sd_model_checkpoint", f"checkpoint {query!r} not found (available: {titles})") from exc


def check_vae(ctx: AppContext, choice: Any) -> None:
    if choice is None:
        return
    if not isinstance(choice, str):
        raise invalid("sd_vae", 'must be "Automatic", "None" or a file name in models/VAE')
    try:
        resolve_vae(choice, ctx.settings.models_dir / "VAE", Path("/nonexistent"))
    except VaeNotFoundError as exc:
        raise invalid("sd_vae", str(exc)) from exc


def response(job: ApiJob, result: Any) -> dict[str, Any]:
    """A1111's TextToImageResponse / ImageToImageResponse for a finished job."""
    images = [encode_png(image, text) for image, text in zip(result.images, result.infotexts, strict=True)] \
        if job.send_images else []
    return {"images": images, "parameters": job.parameters, "info": json.dumps(info(job, result))}


def info(job: ApiJob, result: Any) -> dict[str, Any]:
    """A1111's ``info`` object: the engine's, plus the keys A1111 clients read that it does not have."""
    data = dict(result.info)
    req = result.request
    count = len(result.seeds)
    data.update(
        all_subseeds=list(result.subseeds),
        subseed=result.subseeds[0] if result.subseeds else req.subseed,
        subseed_strength=req.subseed_strength,
        seed_resize_from_w=req.seed_resize_from_w or -1,
        seed_resize_from_h=req.seed_resize_from_h or -1,
        styles=job.parameters.get("styles") or [],
        index_of_first_image=0,
        job_timestamp=time.strftime("%Y%m%d%H%M%S"),
        restore_faces=False,
        face_restoration_model=None,
        is_using_inpainting_conditioning=req.task.value == "inpaint",
        extra_generation_params={},
        sd_vae_name=None if req.vae in ("Automatic", "None") else req.vae,
        task_id=job.task_id,
    )
    data["all_prompts"] = [req.prompt] * count
    data["all_negative_prompts"] = [req.negative_prompt] * count
    data["warnings"] = list(data.get("warnings") or []) + job.warnings
    return data
