"""Build a fresh diffusers scheduler for one job from the model's scheduler config.

Schedulers keep per-run state (timesteps, step index, noise samplers) and are not
thread-safe, so every job gets its own object; nothing here is cached or shared.
"""

from __future__ import annotations

import copy
import inspect
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from ..samplers import K_DIFFUSION, PLMS, UNIPC, SamplerChoice
from .kscheduler import KDiffusionScheduler
from .plms import PLMSScheduler
from .unipc import UniPCScheduler

_building = threading.local()


class _QuietWhileBuilding(logging.Filter):
    """The model's config carries keys of the checkpoint's own scheduler class (PNDM's skip_prk_steps, ...),
    which diffusers keeps for converting back. A class that does not know them (LCM) makes `from_config`
    warn "not expected and will be ignored" on every job; while this module builds a scheduler that is
    expected, so it is not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_building, "active", False)


logging.getLogger("diffusers.configuration_utils").addFilter(_QuietWhileBuilding())


def make_scheduler(
    choice: SamplerChoice,
    base_config: Mapping[str, object],
    noise_seeds: Sequence[int] | None = None,
    sdxl: bool = False,
    img2img: tuple[int, int] | None = None,
    philox: tuple[Sequence[int], int] | None = None,
) -> SchedulerMixin:
    """A new scheduler of `choice`'s class: the model's noise schedule plus the sampler's overrides.

    diffusers' `from_config` keeps the keys the class takes and lets the class's own defaults apply
    to keys the config only holds because its class defaulted them. `noise_seeds`, one per image of
    the batch, seed the SDE samplers' Brownian noise as A1111 does, so its pictures follow the seed; other
    samplers take their noise from the pipeline. `sdxl` picks SDXL's Align Your Steps sigmas. `img2img`: A1111's
    (schedule length, t_enc) of an img2img pass, which a k-diffusion sampler, UniPC or PLMS then runs
    (`strength.Img2ImgPlan`).
    `philox`: (seeds, offset) of the NV source's per-image generators for the ancestral samplers' noise.
    """
    own = {K_DIFFUSION: KDiffusionScheduler, UNIPC: UniPCScheduler, PLMS: PLMSScheduler}
    cls = own.get(choice.scheduler_class) or getattr(diffusers, choice.scheduler_class)
    overrides = dict(choice.kwargs)
    if choice.scheduler_class in own and img2img is not None:
        overrides["img2img_steps"], overrides["img2img_t_enc"] = img2img
    if cls is KDiffusionScheduler:
        overrides["sdxl_schedule"] = sdxl
        if philox is not None:
            overrides["philox_noise_seeds"] = [int(s) for s in philox[0]]
            overrides["philox_noise_offset"] = int(philox[1])
    if noise_seeds is not None and "noise_sampler_seed" in inspect.signature(cls.__init__).parameters:
        overrides["noise_sampler_seed"] = [int(s) for s in noise_seeds]
    _building.active = True
    try:
        # Copies, so no list in one job's scheduler is shared with the model's config or another job's.
        return cls.from_config(copy.deepcopy(dict(base_config)), **copy.deepcopy(overrides))
    finally:
        _building.active = False


def use_start_noise(scheduler: SchedulerMixin, noise: Any) -> None:
    """Make img2img and inpainting noise the picture with ``noise`` (variation seeds) instead of what the pipeline
    draws from each image's seed: diffusers' img2img pipelines only ever apply their starting noise through the
    scheduler's ``add_noise``, so this job's own scheduler substitutes it there."""
    add_noise = scheduler.add_noise  # type: ignore[attr-defined]

    def add_given_noise(original_samples: Any, _drawn: Any, timesteps: Any) -> Any:
        return add_noise(original_samples, noise.to(original_samples.device, original_samples.dtype), timesteps)

    scheduler.add_noise = add_given_noise  # type: ignore[attr-defined]


def use_a1111_ddim_start(scheduler: SchedulerMixin, total_steps: int) -> None:
    """A1111's DDIM img2img noises the picture to the timestep one grid step above the first one it evaluates
    (``alphas_cumprod[timesteps[t_enc]]`` while sampling ``timesteps[:t_enc]``); diffusers noises it to the first
    one. Only the starting noise moves up; inpainting's later blends keep diffusers' levels."""
    add_noise = scheduler.add_noise  # type: ignore[attr-defined]
    train_steps = int(scheduler.config["num_train_timesteps"])  # type: ignore[attr-defined]
    ratio = train_steps // max(total_steps, 1)
    started = False

    def add_noise_one_step_up(original_samples: Any, noise: Any, timesteps: Any) -> Any:
        nonlocal started
        if not started:
            started = True
            timesteps = (timesteps + ratio).clamp(max=train_steps - 1)
        return add_noise(original_samples, noise, timesteps)

    scheduler.add_noise = add_noise_one_step_up  # type: ignore[attr-defined]
