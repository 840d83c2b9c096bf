"""How many steps img2img, inpainting and the hires pass run, and from which noise level, as A1111 counts them.

A1111 (``setup_img2img_steps``) takes ``t_enc = int(min(strength, 0.999) * steps)`` of a ``steps``-step schedule;
with its img2img_fix_steps option, and always for the hires pass (which asks for its own step count), it stretches
the schedule to ``int(steps / min(strength, 0.999))`` steps and takes ``t_enc = steps - 1``. Its k-diffusion
samplers then run ``t_enc + 1`` steps on ``sigmas[total - t_enc - 1:]`` from the picture + noise * that first
sigma; its timestep samplers (DDIM, PLMS, UniPC) run the ``t_enc`` lowest timesteps of the schedule. diffusers'
pipelines run ``int(num_inference_steps * strength)`` steps instead, so ``pipeline_call`` says what to pass them
for A1111's count: with the k-diffusion samplers and UniPC the scheduler holds the run (``img2img_steps`` of
KDiffusionScheduler and UniPCScheduler) and the pipeline is told a count and strength that skip its one padding
entry; never strength 1, so inpainting always starts from the picture plus noise, as A1111 does.

Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..samplers import (
    K_DIFFUSION,
    OWN_SCHEDULERS,
    SAMPLERS,
    SamplerChoice,
    canonical_sampler_name,
    split_legacy_sampler_name,
)

TIMESTEP_SAMPLERS = frozenset({"DDIM", "PLMS", "UniPC"})  # A1111's sd_samplers_timesteps


def a1111_steps(steps: int, strength: float, fixed: bool) -> tuple[int, int]:
    """A1111's (schedule length, t_enc). ``fixed``: img2img_fix_steps on, or the hires pass. At strength 0 the
    stretched schedule would have no steps (A1111 then fails); the plain count applies."""
    capped = min(strength, 0.999)
    if fixed and strength > 0:
        return int(steps / capped), steps - 1
    return steps, int(capped * steps)


@dataclass(frozen=True)
class Img2ImgPlan:
    """One img2img pass of ``steps`` at ``strength`` for a sampler, in A1111's count."""

    total: int  # the schedule's length, A1111's ``steps`` after setup_img2img_steps
    t_enc: int
    kind: str  # "k-diffusion", "timesteps" (DDIM, PLMS, UniPC) or "diffusers" (LCM: diffusers' own count)
    strength: float  # as asked, for the diffusers kind
    held: bool = False  # the scheduler holds the run behind one padding entry (Atelier's own schedulers)

    @property
    def steps_run(self) -> int:
        if self.kind == "k-diffusion":
            return self.t_enc + 1
        if self.kind == "timesteps":
            return max(self.t_enc, 1)  # A1111 would run none at t_enc 0 and return the noised picture
        return min(self.total, int(self.total * self.strength))

    def pipeline_call(self) -> tuple[int, float]:
        """(num_inference_steps, strength) for a diffusers img2img / inpaint pipeline that make it run this plan:
        ``int(n * strength)`` steps are kept, so the strength sits half a step above the count wanted."""
        run = self.steps_run
        if self.held:  # the scheduler's timesteps: one padding entry, then the run
            return run + 1, (run + 0.5) / (run + 1)
        if self.kind == "timesteps":
            return self.total, min(1.0, (run + 0.5) / self.total)
        return self.total, self.strength


def plan_img2img(choice: SamplerChoice, steps: int, strength: float, fixed: bool) -> Img2ImgPlan:
    return _plan(choice.name, choice.scheduler_class, steps, strength, fixed)


def steps_run(sampler: str, steps: int, strength: float, fixed: bool) -> int | None:
    """The steps an img2img pass of the named sampler runs (None: not a sampler; its own check says so)."""
    name = canonical_sampler_name(split_legacy_sampler_name(sampler)[0]) if isinstance(sampler, str) else None
    if name is None:
        return None
    return _plan(name, SAMPLERS[name].scheduler_class, steps, strength, fixed).steps_run


def _plan(name: str, scheduler_class: str, steps: int, strength: float, fixed: bool) -> Img2ImgPlan:
    if scheduler_class == K_DIFFUSION:
        kind = "k-diffusion"
    elif name in TIMESTEP_SAMPLERS:
        kind = "timesteps"
    else:
        return Img2ImgPlan(steps, 0, "diffusers", strength)
    total, t_enc = a1111_steps(steps, strength, fixed)
    return Img2ImgPlan(total, t_enc, kind, strength, scheduler_class in OWN_SCHEDULERS)


def too_few_steps(sampler: str, steps: int, strength: float, fixed: bool) -> str | None:
    """Why an img2img pass of the named sampler cannot run (None: it can): no step at all, or DPM fast or adaptive
    with one step (its solver needs a range to cover; A1111 fails there too)."""
    run = steps_run(sampler, steps, strength, fixed)
    if run == 0:
        return f"too low for {steps} steps: no denoising step would run"
    name = canonical_sampler_name(split_legacy_sampler_name(sampler)[0])
    if run == 1 and name in ("DPM fast", "DPM adaptive"):
        return f"too low for {steps} steps with {name}, which needs at least two steps to run"
    return None
