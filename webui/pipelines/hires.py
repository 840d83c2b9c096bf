"""Hires fix: what the second pass of a txt2img job is, with AUTOMATIC1111's names and semantics.

The first pass makes the picture at its base size; it is then enlarged, in latent space ("Latent ..."
upscalers: the latents are interpolated) or as pixels (Lanczos, Nearest, None or an upscaler model, and the
VAE encodes the result), and a second pass denoises it as img2img at the target size with its own steps,
sampler, prompt and CFG scale. ``generate`` runs both passes; this module says what they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .request import GenerationRequest
from .strength import steps_run

# A1111's latent upscalers: torch interpolation mode and antialiasing.
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


@dataclass(frozen=True)
class SecondPass:
    request: GenerationRequest  # the pass as a request: target size, its steps, sampler, prompts and CFG
    upscaler: str
    latent: bool  # enlarged in latent space (no decode / encode between the passes)
    crop: tuple[int, int]  # pixels to trim in width and height (hr_resize_x and _y with another aspect ratio)

    @property
    def steps_run(self) -> int:
        """Denoising steps the second pass runs: A1111 asks its img2img for exactly its steps (a longer schedule)."""
        req = self.request
        return steps_run(req.sampler, req.steps, req.denoising_strength, True) or 0


def second_pass(req: GenerationRequest) -> SecondPass:
    """The second pass of a hires-fix request (``req.hires`` must be true)."""
    width, height = req.hr_size
    crop = req.hr_crop
    request = req.replace(
        width=width - crop[0], height=height - crop[1],
        steps=req.hr_second_pass_steps or req.steps,
        sampler=req.hr_sampler or req.sampler,
        schedule_type=req.hr_schedule_type or req.schedule_type,
        cfg_scale=req.cfg_scale if req.hr_cfg_scale is None else req.hr_cfg_scale,
        prompt=req.hr_prompt or req.prompt,
        negative_prompt=req.hr_negative_prompt or req.negative_prompt,
        enable_hr=False,
    )
    return SecondPass(request, req.hr_upscaler, req.hr_upscaler in LATENT_UPSCALERS, crop)


def upscale_latents(latents: torch.Tensor, upscaler: str, width: int, height: int, factor: int) -> torch.Tensor:
    """Latents interpolated to the size of a width x height picture (``factor``: pixels per latent, 8 for SD),
    as the named latent upscaler does."""
    mode, antialias = LATENT_UPSCALERS[upscaler]
    size = (height // factor, width // factor)
    return torch.nn.functional.interpolate(latents, size=size, mode=mode, antialias=antialias)


def crop_latents(latents: torch.Tensor, crop: tuple[int, int], factor: int) -> torch.Tensor:
    """Trim ``crop`` pixels (width, height) evenly from both sides, the odd latent from the end (as A1111 does)."""
    cols, rows = crop[0] // factor, crop[1] // factor
    return latents[:, :, rows // 2:latents.shape[2] - (rows + 1) // 2, cols // 2:latents.shape[3] - (cols + 1) // 2]


def infotext_params(req: GenerationRequest) -> dict[str, Any]:
    """The infotext fields A1111 writes for a hires-fix job (None: not written)."""
    if not req.hires:
        return {}
    resized = bool(req.hr_resize_x or req.hr_resize_y)
    return {
        "Denoising strength": req.denoising_strength,
        "Hires upscale": None if resized else req.hr_scale,
        "Hires resize": f"{req.hr_resize_x}x{req.hr_resize_y}" if resized else None,
        "Hires steps": req.hr_second_pass_steps or None,
        "Hires upscaler": req.hr_upscaler,
        "Hires sampler": req.hr_sampler if req.hr_sampler and req.hr_sampler != req.sampler else None,
        "Hires schedule type": req.hr_schedule_type
        if req.hr_schedule_type and req.hr_schedule_type != req.schedule_type else None,
        "Hires prompt": req.hr_prompt if req.hr_prompt and req.hr_prompt != req.prompt else None,
        "Hires negative prompt": req.hr_negative_prompt
        if req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt else None,
        "Hires CFG Scale": req.hr_cfg_scale
        if req.hr_cfg_scale is not None and req.hr_cfg_scale != req.cfg_scale else None,
    }


def crop_image(image: Image.Image, crop: tuple[int, int], factor: int) -> Image.Image:
    """``crop_latents`` for a picture: the same trim, in whole latents of ``factor`` pixels."""
    cols, rows = crop[0] // factor, crop[1] // factor
    if not cols and not rows:
        return image
    left, top = cols // 2 * factor, rows // 2 * factor
    return image.crop((left, top, image.width - (cols + 1) // 2 * factor, image.height - (rows + 1) // 2 * factor))
