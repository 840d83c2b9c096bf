"""Per-step cost of Atelier's own schedulers (KDiffusionScheduler, UniPCScheduler, PLMSScheduler) vs the diffusers
scheduler each sampler used before.

Same tiny SD 1.x weights, same StableDiffusionPipeline, same prompt, steps and seed; only the scheduler differs.
The cost of a call is divided by the model evaluations it made (a second-order sampler evaluates twice a step),
so the figure is per UNet call. Calls alternate between the two paths; the medians and the fastest runs are
compared. A tiny UNet makes the scheduler's share of a step as large as it gets: on a real model the ratio only
moves closer to 1.
Also printed: the scheduler's own cost per step (scale_model_input + step, no model), in microseconds, and the cost
of building it and setting its timesteps (once per job), in milliseconds.
Target: ratio <= 1.02 for every sampler.

``--unet sd15`` runs the same comparison on an SD 1.5-shaped checkpoint of random weights (the real UNet, CLIP-L and
VAE shapes: block_out_channels 320/640/1280/1280, cross-attention 768; ``random_checkpoints.write_random_sd15``,
~2 GB, written once into benchmarks/_work/), by default at 256x256 (a 32x32 latent), 3 steps, 3 repeats, so that
the real model's share of a step shows next to the tiny one's.

    python -m benchmarks.ksampler_overhead                      # tiny UNet, 20 steps at 128px, every sampler
    python -m benchmarks.ksampler_overhead --unet sd15 --samplers "DPM++ 2M SDE,Euler a"
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import make_context, work_dir

_LINSPACE = {"timestep_spacing": "linspace"}
_SIGMAS_OFF = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_DPM = {"solver_order": 2, "lower_order_final": True, "euler_at_final": False, "use_lu_lambdas": False}
# (A1111 sampler, schedule type, the diffusers scheduler and options Atelier built for it before)
PAIRS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("Euler a", "Automatic", "EulerAncestralDiscreteScheduler", _LINSPACE),  # the default sampler
    ("Euler", "Automatic", "EulerDiscreteScheduler", {**_LINSPACE, **_SIGMAS_OFF}),
    ("DPM++ 2M", "Karras", "DPMSolverMultistepScheduler",
     {**_LINSPACE, **_DPM, **_SIGMAS_OFF, "use_karras_sigmas": True, "algorithm_type": "dpmsolver++",
      "solver_type": "midpoint"}),
    ("DPM++ 2M SDE", "Exponential", "DPMSolverMultistepScheduler",
     {**_LINSPACE, **_DPM, **_SIGMAS_OFF, "use_exponential_sigmas": True, "algorithm_type": "sde-dpmsolver++",
      "solver_type": "midpoint"}),
    ("DPM++ SDE", "Karras", "DPMSolverSDEScheduler", {**_LINSPACE, **_SIGMAS_OFF, "use_karras_sigmas": True}),
    ("Heun", "Automatic", "HeunDiscreteScheduler", {**_LINSPACE, **_SIGMAS_OFF}),
    ("LMS", "Automatic", "LMSDiscreteScheduler", {**_LINSPACE, **_SIGMAS_OFF}),
    # A1111's timestep samplers that moved to Atelier's own schedulers (UniPCScheduler, PLMSScheduler)
    ("UniPC", "Automatic", "UniPCMultistepScheduler",
     {**_LINSPACE, **_SIGMAS_OFF, "solver_type": "bh1", "solver_order": 3, "lower_order_final": True,
      "predict_x0": True}),
    ("PLMS", "Automatic", "PNDMScheduler",
     {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False, "skip_prk_steps": True}),
]


CHECKPOINT_NAME = "bench"


def tiny_checkpoint() -> Path:
    """A models folder holding the tiny SD 1.x weights the tests use."""
    from tests.support.tiny_models import tiny_components, write_single_file

    models = work_dir("ksampler") / "models"
    write_single_file(models / "Stable-diffusion" / f"{CHECKPOINT_NAME}.safetensors", "sd1",
                      tiny_components("sd1", seed=0))
    return models


def sd15_checkpoint() -> Path:
    """A models folder holding an SD 1.5-shaped checkpoint of random weights (fp16 on disk, fp32 once loaded)."""
    from benchmarks.random_checkpoints import write_random_sd15

    models = work_dir("ksampler-sd15") / "models"
    write_random_sd15(models / "Stable-diffusion" / f"{CHECKPOINT_NAME}.safetensors", seed=0)
    return models


# --unet: (what the header says, the models folder's maker, default (steps, size, repeats))
UNETS: dict[str, tuple[str, Callable[[], Path], tuple[int, int, int]]] = {
    "tiny": ("tiny SD 1.x UNet", tiny_checkpoint, (20, 128, 7)),
    "sd15": ("SD 1.5-shaped UNet (random weights)", sd15_checkpoint, (3, 256, 3)),
}


def scheduler_only_us(make, steps: int, shape: tuple[int, ...]) -> float:
    """Median microseconds of scale_model_input + step per evaluation, with a fixed fake model output."""
    runs = []
    for _ in range(5):
        scheduler = make()
        scheduler.set_timesteps(steps)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        output = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.1
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        extra = {"generator": [torch.Generator().manual_seed(2)]} if takes_generator else {}
        start = time.perf_counter()
        for t in scheduler.timesteps:
            scheduler.scale_model_input(x, t)
            x = scheduler.step(output, t, x, **extra).prev_sample
        runs.append((time.perf_counter() - start) / len(scheduler.timesteps) * 1e6)
    return statistics.median(runs)


def setup_ms(make, steps: int) -> float:
    """Median milliseconds to build a scheduler and set its timesteps (once per job and pass)."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        make().set_timesteps(steps)
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--unet", choices=sorted(UNETS), default="tiny",
                        help="tiny SD 1.x weights (default) or an SD 1.5-shaped checkpoint of random weights")
    parser.add_argument("--steps", type=int, help="default: 20 (tiny), 3 (sd15)")
    parser.add_argument("--size", type=int, help="pixels; default: 128 (tiny), 256 (sd15)")
    parser.add_argument("--repeats", type=int, help="default: 7 (tiny), 3 (sd15)")
    parser.add_argument("--samplers", default="", help="comma-separated A1111 names (default: all)")
    args = parser.parse_args()
    label, checkpoint, defaults = UNETS[args.unet]
    args.steps, args.size, args.repeats = (given if given is not None else default for given, default
                                           in zip((args.steps, args.size, args.repeats), defaults, strict=True))
    import diffusers
    from diffusers import StableDiffusionPipeline

    from webui.pipelines.schedulers import make_scheduler
    from webui.samplers import resolve_sampler

    work = work_dir("ksampler")
    models = checkpoint()
    ctx = make_context(models, work / "outputs", precision="fp32")
    model = ctx.manager.load(CHECKPOINT_NAME)
    base = dict(model.components["scheduler"].config)
    pipe = StableDiffusionPipeline(**model.components, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    wanted = {s.strip() for s in args.samplers.split(",") if s.strip()}
    channels = int(model.components["unet"].config.in_channels)
    shape = (1, channels, args.size // 8, args.size // 8)
    print(f"{args.steps} steps at {args.size}px, {label}, fp32 CPU, median of {args.repeats}")
    print(f"{'sampler':<26} {'diffusers ms/eval':>17} {'k path ms/eval':>15} {'ratio':>6} {'min/min':>7}  "
          f"{'sched us/eval old':>17} {'new':>6}  {'setup ms old':>12} {'new':>6}")
    worst = worst_fastest = 0.0
    for name, schedule, cls_name, options in PAIRS:
        if wanted and name not in wanted:
            continue
        choice = resolve_sampler(name, schedule)

        def make_new(choice=choice):
            return make_scheduler(choice, base, noise_seeds=[1234])

        def make_old(cls_name=cls_name, options=options):
            return getattr(diffusers, cls_name).from_config(base, **options)

        def run(make) -> float:
            pipe.scheduler = make()
            start = time.perf_counter()
            with torch.inference_mode():
                pipe(prompt=["a red circle on a blue background"], negative_prompt=[""],
                     num_inference_steps=args.steps, guidance_scale=7.0, width=args.size, height=args.size,
                     generator=[torch.Generator().manual_seed(1234)], output_type="latent")
            return (time.perf_counter() - start) / len(pipe.scheduler.timesteps)

        run(make_old), run(make_new)  # warm-up
        old_times, new_times = [], []
        for _ in range(args.repeats):
            old_times.append(run(make_old))
            new_times.append(run(make_new))
        old, new = statistics.median(old_times), statistics.median(new_times)
        ratio = new / old
        fastest = min(new_times) / min(old_times)  # the fastest runs: least disturbed by other load
        worst = max(worst, ratio)
        worst_fastest = max(worst_fastest, fastest)
        label = f"{name} ({schedule})"
        print(f"{label:<26} {old * 1e3:>17.2f} {new * 1e3:>15.2f} {ratio:>6.3f} {fastest:>7.3f}  "
              f"{scheduler_only_us(make_old, args.steps, shape):>17.0f} "
              f"{scheduler_only_us(make_new, args.steps, shape):>6.0f}  "
              f"{setup_ms(make_old, args.steps):>12.2f} {setup_ms(make_new, args.steps):>6.2f}")
    print(f"worst ratio k path / diffusers = {worst:.3f} of medians, {worst_fastest:.3f} of the fastest runs "
          "(target <= 1.02)")
    ctx.close()


if __name__ == "__main__":
    main()
