"""One generation job, as numbered steps. Shared by the UI, the CLI and the REST API.

1. check the request and resolve sampler and seeds
2. take the model (loading it if needed) and the device for the whole job
3. prepare the init image and mask (img2img / inpainting)
4. per batch: a fresh scheduler, one generator per image (seed + i), denoise with step callbacks
   for progress, previews, interrupt and skip
5. inpainting: paste the result into the original through the blurred mask
6. write infotext and save the files
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import devices
from ..controlnet.infotext import infotext_params as controlnet_infotext
from ..controlnet.session import ControlSession, attach_controls, control_session, resolve_units
from ..errors import AtelierError, Cause
from ..extensions.api import ImageInfo, StepState
from ..infotext import format_infotext
from ..jobs import JobControl
from ..models.loader import LoadedModel
from ..models.offload import step_up
from ..outputs import OutputLayout, prompt_words, save_image
from ..samplers import UNIPC, SamplerChoice, resolve_sampler
from . import composable
from . import images as imgs
from .conditioning import PromptEncoder, ScheduledConditioning, build_conditioning
from .hires import LATENT_UPSCALERS, SecondPass, crop_image, crop_latents, second_pass, upscale_latents
from .hires import infotext_params as hires_infotext
from .manager import NoCheckpointError, PipelineManager
from .model_switch import Refiner, RefinerTurn, check_refiner, check_same_latent_space, switch_step
from .networks import JobNetworks, resolve_networks
from .noise import philox_step_noise, step_generators, variation_noise
from .previews import LatentPreviewer
from .request import GenerationRequest, InpaintArea, MaskedContent, RequestError, Task
from .rng import effective_source, fallback_warning
from .schedulers import make_scheduler, use_a1111_ddim_start, use_start_noise
from .strength import Img2ImgPlan, plan_img2img

log = logging.getLogger(__name__)

VERSION = "atelier-0.1.0"


class SaveError(AtelierError, OSError):
    """A finished picture could not be written (disk full, no permission); the message says where and why."""

    cause = Cause.STORAGE


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    model_name: str = ""
    model_hash: str | None = None
    seconds: float = 0.0
    vae_decoder: str | None = None  # "TAESD" when the final pictures were decoded by TAESD, not the VAE

    @property
    def info(self) -> dict[str, Any]:
        """What A1111's API returns as `info` (before JSON encoding)."""
        req = self.request
        return {
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "all_prompts": [req.prompt] * len(self.images),
            "all_negative_prompts": [req.negative_prompt] * len(self.images),
            "seed": self.seeds[0] if self.seeds else req.seed,
            "all_seeds": self.seeds,
            "width": req.width,
            "height": req.height,
            "sampler_name": req.sampler,
            "scheduler": req.schedule_type,
            "cfg_scale": req.cfg_scale,
            "steps": req.steps,
            "batch_size": req.batch_size,
            "clip_skip": req.clip_skip,
            "denoising_strength": req.denoising_strength if req.task is not Task.TXT2IMG else None,
            "sd_model_name": self.model_name,
            "sd_model_hash": self.model_hash,
            "infotexts": self.infotexts,
            "interrupted": self.interrupted,
            "warnings": self.warnings,
            "version": VERSION,
        }


def resolve_seed(seed: int) -> int:
    """-1 means a random seed in A1111's range [0, 4294967294)."""
    return secrets.randbelow(4294967294) if seed == -1 else seed


@dataclass
class _Prepared:
    """Step 3's output: what the pipeline gets, and how to put its output back."""

    source: Image.Image | None = None  # image given to img2img/inpaint (already at width × height)
    mask: Image.Image | None = None  # blurred mask given to the pipeline
    original: Image.Image | None = None  # the picture the result is pasted into
    paste_mask: Image.Image | None = None  # blurred mask at the original's size
    crop: imgs.CropBox | None = None


def _prepare_inputs(req: GenerationRequest, model: LoadedModel, first_seed: int) -> _Prepared:
    width, height = req.width, req.height
    if req.task is Task.TXT2IMG:
        if model.detection.is_inpaint:  # an inpainting UNet always needs an image and a mask
            return _Prepared(Image.new("RGB", (width, height), (127, 127, 127)), Image.new("L", (width, height), 255))
        return _Prepared()
    assert req.init_image is not None
    if req.task is Task.IMG2IMG:
        source = imgs.fit_image(req.init_image, width, height, req.resize_mode)
        if model.detection.is_inpaint:
            return _Prepared(source, Image.new("L", (width, height), 255))
        return _Prepared(source)

    assert req.mask is not None
    if req.inpaint_area is InpaintArea.ONLY_MASKED:
        original = req.init_image.convert("RGB")
        hard, blurred = imgs.prepare_mask(req.mask, original.size, req.mask_invert, req.mask_blur)
        crop = imgs.masked_region(hard, req.inpaint_padding, width, height)
        if crop is None:
            raise RequestError("mask", "the mask is empty: paint the area to repaint")
        source = original.crop(crop.as_tuple()).resize((width, height), Image.Resampling.LANCZOS)
        crop_hard = hard.crop(crop.as_tuple()).resize((width, height), Image.Resampling.NEAREST)
        crop_blur = blurred.crop(crop.as_tuple()).resize((width, height), Image.Resampling.BILINEAR)
        source = imgs.fill_masked(source, crop_hard, req.masked_content, first_seed)
        return _Prepared(source, crop_blur, original, blurred, crop)
    original = imgs.fit_image(req.init_image, width, height, req.resize_mode)
    hard, blurred = imgs.prepare_mask(req.mask, original.size, req.mask_invert, req.mask_blur)
    if hard.getbbox() is None:
        raise RequestError("mask", "the mask is empty: paint the area to repaint")
    source = imgs.fill_masked(original, hard, req.masked_content, first_seed)
    return _Prepared(source, blurred, original, blurred)


OUTPAINT_SEAM = 16  # pixels of the old picture repainted along each extended side, so old and new join


def _outpainting(req: GenerationRequest) -> GenerationRequest:
    """An outpainting request as the inpainting request it is: the picture (fitted to width x height) on the
    larger canvas, the new area (and any painted mask) to repaint, over the whole picture."""
    fitted = imgs.fit_image(req.init_image, req.width, req.height, req.resize_mode)  # type: ignore[arg-type]
    mask = None
    if req.mask is not None:
        mask, _ = imgs.prepare_mask(req.mask, fitted.size, req.mask_invert, 0)
    canvas, repaint = imgs.extend_canvas(fitted, mask, req.outpaint, OUTPAINT_SEAM)
    return req.replace(init_image=canvas, mask=repaint, width=canvas.width, height=canvas.height, mask_invert=False,
                       inpaint_area=InpaintArea.WHOLE_PICTURE, outpaint_left=0, outpaint_right=0, outpaint_top=0,
                       outpaint_bottom=0)


def _pipeline_task(req: GenerationRequest, model: LoadedModel) -> Task:
    return Task.INPAINT if model.detection.is_inpaint else req.task


def _infotext(req: GenerationRequest, choice: SamplerChoice, seed: int, subseed: int, model_name: str,
              model_hash: str | None, vae_name: str | None = None, vae_hash: str | None = None,
              extra: dict[str, Any] | None = None) -> str:
    params: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": choice.name,
        "Schedule type": choice.schedule_type,
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae_hash,
        "VAE": vae_name,
        "Denoising strength": req.denoising_strength if req.task is not Task.TXT2IMG else None,
        "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
        # A1111 writes these when not its defaults (RNG: GPU, Emphasis: Original, ENSD: 0)
        "RNG": req.rng if req.rng != "GPU" else None,
        "ENSD": req.eta_noise_seed_delta or None,
        "Emphasis": req.emphasis if req.emphasis != "Original" else None,
    }
    if req.subseed_strength:
        params["Variation seed"] = subseed
        params["Variation seed strength"] = req.subseed_strength
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
    params.update(hires_infotext(req))
    params.update(controlnet_infotext(req.controlnet_units))
    if req.task is Task.INPAINT:
        params["Mask blur"] = req.mask_blur
        if req.inpaint_area is InpaintArea.ONLY_MASKED:
            params["Inpaint area"] = req.inpaint_area.value
            params["Masked area padding"] = req.inpaint_padding
    if req.task is not Task.TXT2IMG and req.resize_mode.value != "Just resize":
        params["Resize mode"] = req.resize_mode.value
    params.update(extra or {})
    params["Version"] = VERSION
    return format_infotext(req.prompt, req.negative_prompt, params)


class _StoppedEarly(Exception):
    """Interrupt or Skip during a pipeline call: the latents after the last step run."""

    def __init__(self, latents: torch.Tensor) -> None:
        super().__init__("stopped early")
        self.latents = latents


class _StepCallback:
    """Progress, previews, interrupt, skip and extensions' on_step hooks, called by diffusers after every
    denoising step."""

    def __init__(self, control: JobControl, is_sdxl: bool, hooks: Any = None,
                 previews: LatentPreviewer | None = None) -> None:
        self.control = control
        self.previews = previews or LatentPreviewer(None)
        self.is_sdxl = is_sdxl
        self.hooks = hooks
        # Set per pipeline call: the prompt schedule, how many images the call makes, and where its steps
        # sit in the batch's progress: after ``offset`` steps of earlier passes, before ``later`` ones.
        self.conditioning: ScheduledConditioning | None = None
        self.count = 1
        self.offset = 0
        self.later = 0
        self.ran = 0  # steps the current call has run
        self.refiner_turn: RefinerTurn | None = None  # set for the pass a refiner finishes
        self.composed: composable.ComposableUNet | None = None  # set while an AND prompt is sampled

    def next_pass(self, later: int = 0) -> None:
        """The batch goes on with another pass (hires fix) after the steps run so far."""
        self.offset, self.later, self.ran = self.offset + self.ran, later, 0

    def new_batch(self, later: int = 0) -> None:
        self.offset, self.later, self.ran = 0, later, 0

    def tensor_inputs(self) -> list[str]:
        """What the step callback reads and may replace; every SD / SDXL pipeline of diffusers passes these."""
        return ["latents", "prompt_embeds"] + (["add_text_embeds"] if self.is_sdxl else [])

    def _switch_prompts(self, pipe: Any, step: int, force: bool = False) -> dict[str, Any]:
        """Prompt editing: the embeddings for the next step, when they differ from this step's (``force``: in
        any case, as after the refiner took over with its own text encoders)."""
        schedule = self.conditioning
        if schedule is None or not (schedule.changes or force):
            return {}
        upcoming, current = schedule.at(step + 2), schedule.at(step + 1)
        if upcoming[0] is current[0] and upcoming[1] is current[1] and not force:
            return {}
        positive, negative = upcoming
        guided = bool(getattr(pipe, "do_classifier_free_guidance", True))
        embeds = [positive.embeds] * self.count
        if guided:
            embeds = [negative.embeds] * self.count + embeds
        out = {"prompt_embeds": torch.cat(embeds)}
        if self.is_sdxl and positive.pooled is not None and negative.pooled is not None:
            pooled = [positive.pooled] * self.count
            if guided:
                pooled = [negative.pooled] * self.count + pooled
            out["add_text_embeds"] = torch.cat(pooled)
        return out

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        control = self.control
        self.ran = step + 1
        done = self.offset + self.ran
        finished = bool(getattr(pipe.scheduler, "run_finished", False))  # an adaptive sampler's run ended
        planned = self.ran if finished else _planned_evaluations(pipe)
        total = self.offset + planned + self.later
        changes: dict[str, Any] = {"step": done, "steps": total}
        every = control.preview_every
        if every > 0 and done % every == 0 and "latents" in kwargs and done < total:
            changes["preview"] = self.previews.preview(pipe.vae, kwargs["latents"], self.is_sdxl)
        control.update(**changes)
        if self.hooks is not None and self.hooks.has("on_step"):
            latents = kwargs.get("latents")
            self.hooks.on_step(StepState(control.job_id, done, total, control.progress.batch,
                                         None if latents is None else latents.detach().clone()), control)
        if control.interrupted or control.skipped or finished:
            raise _StoppedEarly(kwargs["latents"])  # _call_pipeline decodes what the steps so far made
        if self.composed is not None:
            self.composed.step = step + 2  # the AND parts' prompts for the next step
        turn = self.refiner_turn
        if turn is not None and not turn.switched:
            at = switch_step(turn.refiner.switch_at, planned)
            if at is not None and self.ran >= at:
                turn.take_over(pipe)
                self.conditioning = turn.conditioning
                return self._switch_prompts(pipe, step, force=True)
        return self._switch_prompts(pipe, step)


def _planned_evaluations(pipe: Any) -> int:
    """The UNet calls the pipeline's run makes: its timesteps, or an adaptive sampler's expectation so far (its
    timesteps only leave room)."""
    expected = getattr(pipe.scheduler, "expected_evaluations", None)
    return int(expected) if expected else int(pipe.num_timesteps)


def _image_seeds(req: GenerationRequest, batch: int) -> tuple[list[int], list[int]]:
    """Seeds and variation seeds of a batch's images, as A1111 counts them: with a variation strength every
    image keeps the seed and the variation seeds count up; without one the seeds count up."""
    first = batch * req.batch_size
    indices = range(first, first + req.batch_size)
    return ([req.seed + (0 if req.subseed_strength else k) for k in indices], [req.subseed + k for k in indices])


def _starting_noise(req: GenerationRequest, model: LoadedModel, choice: SamplerChoice, seeds: list[int],
                    subseeds: list[int]) -> torch.Tensor | None:
    """The starting noise when variation seeds or "resize seed from" change it (None: the pipeline draws it from
    each image's seed, as always). txt2img starts from it; img2img and inpainting noise the picture with it."""
    resize = (req.seed_resize_from_w, req.seed_resize_from_h)
    resized = min(resize) > 0 and resize != (req.width, req.height)
    # Drawn here, not by the pipeline, also for another RNG source and for an eta noise seed delta (the pipeline's
    # generators then give only the per-step noise).
    if not (req.subseed_strength or resized or req.rng != "CPU" or req.eta_noise_seed_delta):
        return None
    vae = model.components["vae"]
    factor = latent_factor(vae)
    shape = (int(vae.config.latent_channels), req.height // factor, req.width // factor)
    # img2img and inpainting sample the picture's latents from the generator first, except an inpainting UNet
    # starting from pure noise, which never encodes the picture before drawing its noise.
    encodes_first = req.task is not Task.TXT2IMG and not (model.detection.is_inpaint
                                                          and starts_from_pure_noise(req, choice))
    noise = [variation_noise(shape, seed, subseed, req.subseed_strength, resize if resized else None, model.dtype,
                             factor, after_encode=encodes_first, source=req.rng)
             for seed, subseed in zip(seeds, subseeds, strict=True)]
    return torch.stack(noise)


def latent_factor(vae: Any) -> int:
    """Pixels per latent (8 for SD's VAE; the demo model's smaller VAE has 4), as diffusers computes it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _decode_latents(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Pictures from a pass that stopped in latent space (a hires-fix first pass interrupted or skipped)."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))  # SDXL's fp16 VAE
    if upcast:
        vae.to(torch.float32)
    try:
        with torch.inference_mode():
            decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(torch.float16)
    return list(pipe.image_processor.postprocess(decoded, output_type="pil"))


@dataclass
class _SecondPassRun:
    """A job's hires-fix pass with what it needs ready: its model (the job's, or the hires checkpoint) and VAE,
    sampler, prompts (and their LoRAs and embeddings), encoder, pipeline task and offload plan at the target
    size."""

    pass_: SecondPass
    model: LoadedModel
    vae: Any
    choice: SamplerChoice
    task: Task
    networks: JobNetworks
    encoder: PromptEncoder
    plan: Any
    checkpoint_title: str | None = None  # the hires checkpoint, when it is another model

    @property
    def steps_run(self) -> int:
        return self.pass_.steps_run

    @classmethod
    def prepare(cls, manager: PipelineManager, model: LoadedModel, vae: Any, req: GenerationRequest,
                hires: SecondPass, choice: SamplerChoice, networks: JobNetworks, encoder: PromptEncoder,
                result: GenerationResult, stack: ExitStack) -> _SecondPassRun:
        """``stack`` holds the hires checkpoint for the job, when it is another model."""
        hr = hires.request
        if not hires.latent and manager.upscalers.find(hires.upscaler) is None:
            known = ", ".join([*LATENT_UPSCALERS, *manager.upscalers.names()])
            raise RequestError("hr_upscaler", f"unknown upscaler {hires.upscaler!r} (available: {known})")
        title = None
        hr_model = model
        if req.hr_checkpoint and _resolve(manager, req.hr_checkpoint, "hr_checkpoint") != model.name:
            hr_model = stack.enter_context(manager.hold(req.hr_checkpoint))
            check_same_latent_space(model, hr_model, "hr_checkpoint")
            title = _title(manager, hr_model)
            vae, _ = manager.vae_for(hr_model, req.vae)
        if hr_model is not model or (hr.prompt, hr.negative_prompt) != (req.prompt, req.negative_prompt):
            networks = resolve_networks(hr.prompt, hr.negative_prompt, hr_model.components, manager.loras,
                                        manager.embeddings)
            result.warnings.extend(w for w in networks.warnings if w not in result.warnings)
            encoder = PromptEncoder(hr_model.components, hr_model.is_sdxl, req.clip_skip, manager.execution_device,
                                    networks.embeddings, req.emphasis)
        task = Task.INPAINT if hr_model.detection.is_inpaint else Task.IMG2IMG
        if task is Task.INPAINT and hires.latent:  # an inpainting UNet takes pictures, not latents
            result.warnings.append(f"{hires.upscaler} needs a non-inpainting model: the hires pass upscaled "
                                   "with Lanczos")
            hires = SecondPass(hr, "Lanczos", False, hires.crop)
        plan = manager.plan_offload(hr_model, hr.width, hr.height, req.batch_size)
        return cls(hires, hr_model, vae, choice, task, networks, encoder, plan, title)

    def run(self, manager: PipelineManager, first: Any, seeds: list[int], callback: _StepCallback,
            result: GenerationResult, refiner: Refiner | None,
            controls: ControlSession | None = None) -> list[Image.Image]:
        """The second pass over a first pass's output (latents, or pictures)."""
        hires, hr = self.pass_, self.pass_.request
        width, height = hr.width + hires.crop[0], hr.height + hires.crop[1]
        factor = latent_factor(self.vae)
        if hires.latent:
            source: Any = crop_latents(upscale_latents(first, hires.upscaler, width, height, factor), hires.crop,
                                       factor)
        else:
            source = [crop_image(manager.upscalers.upscale(picture, width, height, hires.upscaler, "hr_upscaler"),
                                 hires.crop, factor) for picture in first]
        prepared = _Prepared(mask=Image.new("L", (hr.width, hr.height), 255)) if self.task is Task.INPAINT \
            else _Prepared()
        images, self.plan, _ = _run_batch(manager, self.model, self.task, hr, self.choice, prepared, seeds, callback,
                                          self.plan, result, self.vae, self.encoder, self.networks, images=source,
                                          refiner=refiner, controls=controls)
        return images


def _resolve(manager: PipelineManager, query: str, field_name: str) -> str:
    """A second checkpoint's registry name; a name that matches none is that field's error."""
    try:
        return manager.resolve(query).name
    except NoCheckpointError as exc:
        raise RequestError(field_name, str(exc)) from exc


def _title(manager: PipelineManager, model: LoadedModel) -> str:
    """A checkpoint as A1111's infotext names a second model: "name [short hash]"."""
    digest = manager.short_hash(model)
    return f"{model.display_name} [{digest}]" if digest else model.display_name


def _refiner(manager: PipelineManager, model: LoadedModel, req: GenerationRequest, stack: ExitStack,
             ) -> Refiner | None:
    """The job's refiner, held for the job (None: none asked for, the job's own model, or a switch at 1)."""
    if not req.refiner_checkpoint or req.refiner_switch_at >= 1.0:
        return None
    if _resolve(manager, req.refiner_checkpoint, "refiner_checkpoint") == model.name:
        return None
    refiner = stack.enter_context(manager.hold(req.refiner_checkpoint))
    check_refiner(model, refiner)
    prompt = req.hr_prompt if req.hires and req.hr_prompt else req.prompt
    negative = req.hr_negative_prompt if req.hires and req.hr_negative_prompt else req.negative_prompt
    networks = resolve_networks(prompt, negative, refiner.components, manager.loras, manager.embeddings)
    encoder = PromptEncoder(refiner.components, refiner.is_sdxl, req.clip_skip, manager.execution_device,
                            networks.embeddings, req.emphasis)
    return Refiner(refiner, req.refiner_switch_at, encoder, networks, _title(manager, refiner), manager.device)


def generate(
    manager: PipelineManager,
    request: GenerationRequest,
    outputs: OutputLayout | None = None,
    control: JobControl | None = None,
    save_format: str = "png",
    hooks: Any = None,
) -> GenerationResult:
    """``hooks``: the extensions' registry (webui.extensions.hooks.Registry), or None."""
    control = control or JobControl()
    start = time.perf_counter()
    # 1. extensions may change the request; check it and resolve sampler and seeds
    if hooks is not None:
        request = hooks.before_generate(request)
    request.validate()
    if any(request.outpaint):
        request = _outpainting(request)
    choice = resolve_sampler(request.sampler, request.schedule_type)
    first_seed = resolve_seed(request.seed)
    req = request.replace(seed=first_seed, subseed=resolve_seed(request.subseed), sampler=choice.name,
                          schedule_type=choice.schedule_type)
    used = effective_source(req.rng, manager.device.type)  # "GPU" without CUDA: the NV generator
    req = req.replace(rng=used)
    req = req.replace(controlnet_units=resolve_units(manager.controlnets, req.controlnet_units))  # titles, defaults
    hires = second_pass(req) if req.hires else None
    hr_choice = resolve_sampler(hires.request.sampler, hires.request.schedule_type) if hires else None
    result = GenerationResult(req)
    rng_note = fallback_warning(request.rng, used)
    if rng_note:
        result.warnings.append(rng_note)
    if control.interrupted:
        result.interrupted = True
        control.update(state="interrupted")
        return result

    # 2. take the model and the device for the whole job
    control.update(state="loading", batches=req.batch_count, steps=req.steps)
    with manager.use(req.checkpoint) as model, ExitStack() as second_models, \
            control_session(manager, model, req, first_seed) as controls:
        result.model_name = model.display_name
        result.warnings.extend(controls.warnings)
        control.update(state="running", started=time.monotonic())
        # 3. prepare the init image and mask (once; "latent noise" fill is redone per seed below)
        vae, vae_file = manager.vae_for(model, req.vae)
        networks = resolve_networks(req.prompt, req.negative_prompt, model.components, manager.loras,
                                    manager.embeddings)
        result.warnings.extend(networks.warnings)
        # Prompts are encoded once per job (each distinct prompt of an editing schedule once) and reused by every batch.
        encoder = PromptEncoder(model.components, model.is_sdxl, req.clip_skip, manager.execution_device,
                                networks.embeddings, req.emphasis)
        prepared = _prepare_inputs(req, model, first_seed)
        task = _pipeline_task(req, model)
        plan = manager.plan_offload(model, req.width, req.height, req.batch_size)
        second = _SecondPassRun.prepare(manager, model, vae, req, hires, hr_choice, networks, encoder, result,
                                        second_models) if hires is not None and hr_choice is not None else None
        refiner = _refiner(manager, model, req, second_models)  # it finishes the last pass
        extra = networks.infotext_params()
        if second is not None and second.checkpoint_title:
            extra["Hires checkpoint"] = second.checkpoint_title
        if refiner is not None:
            extra.update(refiner.infotext_params())

        # 4. per batch: fresh scheduler, one generator per image, denoise (then the hires pass)
        callback = _StepCallback(control, model.is_sdxl, hooks, manager.previews)
        for batch in range(req.batch_count):
            if control.interrupted:
                result.interrupted = True
                break
            control.clear_skip()
            control.update(batch=batch, step=0)
            seeds, subseeds = _image_seeds(req, batch)
            # Exact mode denoises the images of a batch one by one: batched kernels round differently,
            # and image i must equal a single run with seed + i. Fast mode makes one batched call.
            indices = [[i] for i in range(len(seeds))] if manager.exact_batches else [list(range(len(seeds)))]
            for members in indices:
                if control.interrupted or control.skipped:
                    break
                group, subgroup = [seeds[i] for i in members], [subseeds[i] for i in members]
                if req.masked_content is MaskedContent.LATENT_NOISE and req.task is Task.INPAINT:
                    prepared = _prepare_inputs(req, model, group[0])  # noise drawn from this image's seed
                callback.new_batch(later=second.steps_run if second else 0)
                noise = _starting_noise(req, model, choice, group, subgroup)
                latent_out = second is not None and second.pass_.latent
                output, plan, pipe = _run_batch(manager, model, task, req, choice, prepared, group, callback, plan,
                                                result, vae, encoder, networks, latents=noise,
                                                output_type="latent" if latent_out else "pil",
                                                refiner=refiner if second is None else None, controls=controls)
                if second is not None and not (control.interrupted or control.skipped):
                    if req.save_first_pass and req.save_images and outputs is not None:
                        firsts = _decode_latents(pipe, output) if latent_out else output
                        for image, seed, subseed in zip(firsts, group, subgroup, strict=True):
                            text = _infotext(req.replace(enable_hr=False), choice, seed, subseed, model.display_name,
                                             manager.short_hash(model, wait=0), extra=networks.infotext_params())
                            _save(outputs, req, image, seed, text, save_format, model.display_name,
                                  "-before-highres-fix")
                    callback.next_pass()
                    images = second.run(manager, output, group, callback, result, refiner, controls)
                else:
                    images = _decode_latents(pipe, output) if latent_out else output
                # 5. inpainting: paste into the original through the blurred mask
                original, paste_mask = prepared.original, prepared.paste_mask
                if req.task is Task.INPAINT and original is not None and paste_mask is not None:
                    images = [imgs.paste_back(original, im, paste_mask, prepared.crop)
                              for im in images]
                images = controls.paste_unmasked(images)  # ControlNet inpaint_only's own paste-back
                result.images.extend(images)
                result.seeds.extend(group)
                result.subseeds.extend(subgroup)
            if control.interrupted:
                result.interrupted = True

        # 6. infotext and files
        result.model_hash = manager.short_hash(model)
        vae_name = vae_file.name if vae_file is not None else None
        vae_hash = manager.vae_hash(vae_file) if vae_file is not None else None
        if result.vae_decoder:  # A1111 names a decode method other than the full VAE this way
            extra = {**extra, "VAE Decoder": result.vae_decoder}
        for index, (image, seed, subseed) in enumerate(zip(result.images, result.seeds, result.subseeds,
                                                           strict=True)):
            text = _infotext(req, choice, seed, subseed, result.model_name, result.model_hash, vae_name, vae_hash,
                             extra)
            if hooks is not None:
                info = ImageInfo(text, seed, index, req)
                hooks.after_image(image, info)
                if req.save_images and outputs is not None:
                    text = hooks.before_save(image, info).infotext
            result.infotexts.append(text)
            if req.save_images and outputs is not None:
                result.paths.append(_save(outputs, req, image, seed, text, save_format, result.model_name))
    result.seconds = time.perf_counter() - start
    control.update(state="interrupted" if result.interrupted else "done")
    return result


def _save(outputs: OutputLayout, req: GenerationRequest, image: Image.Image, seed: int, text: str, save_format: str,
          model_name: str, suffix: str = "") -> Path:
    folder = outputs.folder_for(req.task.value, user=req.user)
    fields = {"prompt_words": prompt_words(req.prompt), "model_name": model_name,
              "date": datetime.date.today().isoformat()}
    try:
        return save_image(image, folder, seed, text, save_format, outputs.pattern + suffix, fields, owner=req.user)
    except OSError as exc:
        raise SaveError(f"Could not save the picture in {folder}: {exc.strerror or exc}. Nothing was "
                        "written there; free some space or choose another output folder.") from exc


def _run_batch(
    manager: PipelineManager,
    model: LoadedModel,
    task: Task,
    req: GenerationRequest,
    choice: SamplerChoice,
    prepared: _Prepared,
    seeds: list[int],
    callback: _StepCallback,
    plan: Any,
    result: GenerationResult,
    vae: Any,
    encoder: PromptEncoder,
    networks: JobNetworks,
    images: Any = None,
    latents: torch.Tensor | None = None,
    output_type: str = "pil",
    refiner: Refiner | None = None,
    controls: ControlSession | None = None,
) -> tuple[Any, Any, Any]:
    """One pass over a batch: (its pictures, or latents when ``output_type`` is "latent"; the offload plan it
    ended with; the pipeline). ``images`` replaces the prepared source (a hires pass: one per image);
    ``latents`` is the starting noise (variation seeds); ``refiner`` finishes the pass. On out-of-memory, free
    memory, step the offload plan up and retry until no more frugal plan is left; then a clear error instead of
    the allocator's."""
    # The vae_decode_method setting: a TAESD decoder turns the final latents into pictures instead of the VAE.
    fast = manager.final_decoder(vae, model.is_sdxl) if output_type == "pil" else None
    while True:
        img2img = _img2img_plan(req, images, choice)
        philox = philox_step_noise(seeds, req.rng, req.eta_noise_seed_delta)
        scheduler = make_scheduler(with_unipc_options(choice, req), model.components["scheduler"].config,
                                   noise_seeds=seeds, sdxl=model.is_sdxl, philox=philox,
                                   img2img=(img2img.total, img2img.t_enc) if img2img is not None else None)
        if latents is not None and images is None and req.task is not Task.TXT2IMG:
            use_start_noise(scheduler, latents)
        if img2img is not None and img2img.kind == "timesteps" and choice.name == "DDIM":
            use_a1111_ddim_start(scheduler, img2img.total)
        pipe = manager.pipeline(model, task, scheduler, vae)
        try:
            warnings = manager.place(model, pipe, plan, networks.loras)
            if refiner is not None:
                warnings += manager.apply_loras(refiner.model, refiner.networks.loras)
            result.warnings.extend(w for w in warnings if w not in result.warnings)
            with attach_controls(controls, pipe, req.width, req.height, len(seeds), plan, images is not None,
                                 prepared.crop, prepared.original):
                output = _call_pipeline(pipe, task, req, choice, prepared, seeds, callback, encoder, networks,
                                        images=images,
                                        latents=latents, output_type="latent" if fast is not None else output_type,
                                        refiner=refiner)
            if fast is not None:
                decoded = manager.previews.taesd_decode(fast, output)
                output = list(pipe.image_processor.postprocess(decoded, output_type="pil"))
                result.vae_decoder = "TAESD"
            return output, plan, pipe
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not devices.is_out_of_memory(exc):
                raise
        # Freed only here: inside the except block the traceback still holds the failed step's tensors.
        devices.release_memory(manager.device)
        bigger = step_up(plan)
        if bigger is None:
            what = "the hires fix pass" if images is not None else "a batch"
            raise RequestError("width", f"out of GPU memory at {req.width}x{req.height} ({what} of {len(seeds)}) "
                               "even with sequential offload and VAE tiling: choose a smaller size or batch")
        message = f"Out of GPU memory; retried with {bigger.mode.value} offload and VAE tiling"
        log.warning(message)
        result.warnings.append(message)
        plan = bigger


def with_unipc_options(choice: SamplerChoice, req: GenerationRequest) -> SamplerChoice:
    """``choice`` with the job's A1111 UniPC options (uni_pc_variant, ...) when it is UniPC; a copy, as the
    sampler table's kwargs are shared by every job."""
    if choice.scheduler_class != UNIPC:
        return choice
    return dataclasses.replace(choice, kwargs={**choice.kwargs, "variant": req.uni_pc_variant,
                                               "skip_type": req.uni_pc_skip_type, "solver_order": req.uni_pc_order,
                                               "lower_order_final": req.uni_pc_lower_order_final})


def _img2img_plan(req: GenerationRequest, images: Any, choice: SamplerChoice) -> Img2ImgPlan | None:
    """A1111's step count for an img2img / inpainting job or a hires pass (``images`` given); None for txt2img
    (also on an inpainting model, which gets a blank image and full mask and runs at strength 1)."""
    if req.task is Task.TXT2IMG and images is None:
        return None
    return plan_img2img(choice, req.steps, req.denoising_strength, images is not None or req.img2img_fix_steps)


def _pipeline_steps(req: GenerationRequest, plan: Img2ImgPlan | None) -> tuple[int, float]:
    """(num_inference_steps, strength) the pipeline is called with."""
    return plan.pipeline_call() if plan is not None else (req.steps, 1.0)


def starts_from_pure_noise(req: GenerationRequest, choice: SamplerChoice) -> bool:
    """Whether an inpainting pipeline starts from noise alone (strength 1, no picture encoded first): only
    txt2img on an inpainting model, or the samplers that keep diffusers' count at full strength."""
    _, strength = _pipeline_steps(req, _img2img_plan(req, None, choice))
    return strength >= 1.0


def _call_pipeline(
    pipe: Any, task: Task, req: GenerationRequest, choice: SamplerChoice, prepared: _Prepared, seeds: list[int],
    callback: _StepCallback,
    encoder: PromptEncoder,
    networks: JobNetworks,
    images: Any = None,
    latents: torch.Tensor | None = None,
    output_type: str = "pil",
    refiner: Refiner | None = None,
) -> Any:
    count = len(seeds)
    # One generator per image (on the CPU unless the RNG source says otherwise): image i of a batch equals a single
    # run with seed + i. When the starting noise was drawn outside the pipeline, they continue after it.
    plan = _img2img_plan(req, images, choice)
    num_steps, strength = _pipeline_steps(req, plan)
    given_latents = latents is not None and (req.task is Task.TXT2IMG or (task is Task.INPAINT and strength >= 1.0))
    drawn = tuple(latents.shape[1:]) if given_latents and latents is not None else None
    generators = step_generators(seeds, req.rng, req.eta_noise_seed_delta, drawn,
                                 latents.dtype if latents is not None else torch.float32)
    steps_run = plan.steps_run if plan is not None else req.steps
    zero_empty = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    schedule = build_conditioning(encoder, networks.prompt, networks.negative_prompt, steps_run,
                                  zero_empty_negative=zero_empty)
    turn = None
    if refiner is not None:
        refined = build_conditioning(refiner.encoder, refiner.networks.prompt, refiner.networks.negative_prompt,
                                     steps_run, zero_empty_negative=zero_empty)
        turn = RefinerTurn(refiner, refined, pipe.unet)
        if switch_step(refiner.switch_at, steps_run) == 0:  # the refiner runs the whole pass
            turn.take_over(pipe)
            schedule = refined
    positive, negative = schedule.at(1)
    callback.conditioning, callback.count, callback.refiner_turn = schedule, count, turn
    kwargs: dict[str, Any] = {
        "prompt_embeds": positive.embeds.repeat(count, 1, 1),
        "negative_prompt_embeds": negative.embeds.repeat(count, 1, 1),
        "num_inference_steps": num_steps,
        "guidance_scale": req.cfg_scale,
        "generator": generators,
        "callback_on_step_end": callback,
        "callback_on_step_end_tensor_inputs": callback.tensor_inputs(),
        "output_type": output_type,
    }
    if positive.pooled is not None and negative.pooled is not None:
        kwargs["pooled_prompt_embeds"] = positive.pooled.repeat(count, 1)
        kwargs["negative_pooled_prompt_embeds"] = negative.pooled.repeat(count, 1)
    if task is not Task.IMG2IMG:  # img2img takes its size from the (already fitted) init image
        kwargs.update(width=req.width, height=req.height)
    if task is not Task.TXT2IMG:
        kwargs["image"] = images if images is not None else [prepared.source] * count
        kwargs["strength"] = strength
    if task is Task.INPAINT:
        kwargs["mask_image"] = [prepared.mask] * count
    # img2img's noise goes through the scheduler (use_start_noise); inpainting at full strength starts from it.
    if given_latents:
        kwargs["latents"] = latents
    callback.composed = composable.install(pipe, schedule, count)  # AND: each part's guidance, weighted
    try:
        with torch.inference_mode():
            output = pipe(**kwargs)
    except _StoppedEarly as stopped:
        return stopped.latents if output_type == "latent" else _decode_latents(pipe, stopped.latents)
    finally:
        composable.uninstall(pipe, callback.composed)
        callback.composed = None
        if turn is not None:
            turn.give_back(pipe)
        callback.refiner_turn = None
    return output.images if output_type == "latent" else list(output.images)
