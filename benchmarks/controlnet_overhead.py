"""ControlNet costs, each against its baseline in the same run:

1. RSS with two ControlNets loaded beside the checkpoint, against the RAM cache's byte budget: the cache's
   bytes stay within the budget, and the process holds about what the cache says above the bare process.
   With a budget for only one ControlNet, the second job evicts the first (least recently used), never the
   checkpoint in use;
2. step time of the engine with one ControlNet unit vs diffusers' own StableDiffusionControlNetPipeline over
   the same checkpoint components and the same loaded ControlNet (same sampler, seed, map, weight). Goal:
   <= 1.05x. A step is the gap between the starts of two UNet calls (the median over all steps), so it
   includes the ControlNet either way and leaves encoding and decoding out; the pixels must be identical.

    .venv/bin/python -m benchmarks.controlnet_overhead                 # SD 1.5 shapes, random weights, bf16
    .venv/bin/python -m benchmarks.controlnet_overhead --shape tiny    # the tests' tiny models (seconds)

The SD 1.5-shaped files (a 2 GB checkpoint, two 720 MB ControlNets, random weights) are written once to
benchmarks/_work/.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks.common import gib, make_context, rss_bytes, work_dir


def _files(shape: str):
    work = work_dir(f"controlnet-{shape}")
    models = work / "models"
    if shape == "sd15":
        from benchmarks.random_checkpoints import write_random_sd15, write_random_sd15_controlnet

        write_random_sd15(models / "Stable-diffusion" / "sd15.safetensors")
        for seed, name in ((1, "cn_a"), (2, "cn_b")):
            write_random_sd15_controlnet(models / "ControlNet" / f"{name}.safetensors", seed=seed)
    else:
        from tests.support.controlnet_files import tiny_controlnet, write_original
        from tests.support.tiny_models import tiny_components, write_single_file

        parts = tiny_components("sd1", seed=0)
        write_single_file(models / "Stable-diffusion" / "sd15.safetensors", "sd1", parts)
        for seed, name in ((1, "cn_a"), (2, "cn_b")):
            write_original(models / "ControlNet" / f"{name}.safetensors", tiny_controlnet(parts["unet"], seed=seed))
    return work, models


def _map(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).rectangle((size // 8, size // 8, size // 2, size // 2), outline="white", width=3)
    return image


class StepClock:
    """Timestamps at the start of every UNet call (a pre-hook registered before the ControlNet's): the gaps
    are whole denoising steps, ControlNet and scheduler included, whichever way the ControlNet is called."""

    def __init__(self, unet) -> None:
        self.stamps: list[float] = []
        self.handle = unet.register_forward_pre_hook(lambda module, args: self.stamps.append(time.perf_counter()))

    def steps(self) -> list[float]:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        self.stamps = []
        return gaps


def step_time(args, models, work) -> None:
    from diffusers import StableDiffusionControlNetPipeline

    from webui.controlnet.units import ControlResizeMode, ControlUnit
    from webui.pipelines.conditioning import PromptEncoder, build_conditioning
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest
    from webui.pipelines.schedulers import make_scheduler
    from webui.samplers import resolve_sampler

    ctx = make_context(models, work / "outputs", precision=args.precision, include_builtin=False)
    manager = ctx.manager
    model = manager.load("sd15")
    control_map = _map(args.size)
    unit = ControlUnit(module="none", model="cn_a", image=control_map, weight=0.8,
                       resize_mode=ControlResizeMode.JUST_RESIZE)
    prompt = "a red circle on a blue background"

    def engine(steps: int) -> Image.Image:
        request = GenerationRequest(prompt=prompt, steps=steps, width=args.size, height=args.size, seed=7,
                                    sampler="Euler", save_images=False, controlnet_units=[unit])
        return generate(manager, request).images[0]

    entry = manager.controlnets.find("cn_a")
    assert entry is not None
    clock = StepClock(model.components["unet"])
    with manager.controlnets.use(entry, dict(model.components["unet"].config), manager.dtype) as loaded:
        c = model.components
        pipe = StableDiffusionControlNetPipeline(c["vae"], c["text_encoder"], c["tokenizer"], c["unet"],
                                                 loaded.model, c["scheduler"], None, None,
                                                 requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        encoder = PromptEncoder(c, False, 1, manager.device, {})

        def direct(steps: int) -> Image.Image:
            # What any caller of diffusers does per job: encode the prompt, a fresh scheduler, the pipeline.
            positive, negative = build_conditioning(encoder, prompt, "", steps).at(1)
            pipe.scheduler = make_scheduler(resolve_sampler("Euler", "Automatic"), c["scheduler"].config,
                                            noise_seeds=[7])
            with torch.inference_mode():
                return pipe(prompt_embeds=positive.embeds, negative_prompt_embeds=negative.embeds, image=control_map,
                            num_inference_steps=steps, guidance_scale=7.0, width=args.size, height=args.size,
                            generator=[torch.Generator("cpu").manual_seed(7)],
                            controlnet_conditioning_scale=0.8).images[0]

        same = np.array_equal(np.asarray(engine(2)), np.asarray(direct(2)))
        clock.steps()
        gaps: dict[str, list[float]] = {"engine": [], "diffusers": []}
        jobs: dict[str, list[float]] = {"engine": [], "diffusers": []}
        order = [("diffusers", direct), ("engine", engine)]
        for repeat in range(args.repeats):  # interleaved, in turn first, so a busy neighbour slows both alike
            for name, fn in order if repeat % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                fn(args.steps)
                jobs[name].append(time.perf_counter() - start)
                gaps[name].extend(clock.steps())
    clock.handle.remove()
    per_step = {name: statistics.median(values) for name, values in gaps.items()}
    whole = {name: statistics.median(values) for name, values in jobs.items()}
    print(f"step time at {args.size}x{args.size} ({args.precision}, CFG, one unit; median of "
          f"{len(gaps['engine'])} steps each): diffusers {per_step['diffusers']:.3f} s, "
          f"engine {per_step['engine']:.3f} s", flush=True)
    print(f"  ratio engine/diffusers = {per_step['engine'] / per_step['diffusers']:.3f} (goal <= 1.05); "
          f"whole {args.steps}-step job (median) {whole['engine']:.2f} s vs {whole['diffusers']:.2f} s; "
          f"identical pixels: {same}", flush=True)
    ctx.close()


def _release_memory() -> None:
    gc.collect()
    try:  # glibc keeps freed pages; give them back so RSS shows what is really held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def memory(args, models, work) -> None:
    from webui.controlnet.library import estimate_nbytes
    from webui.controlnet.units import ControlUnit
    from webui.models.loader import estimate_nbytes as checkpoint_nbytes
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest

    def job(ctx, *names: str) -> None:
        units = [ControlUnit(module="none", model=name, image=_map(args.size)) for name in names]
        generate(ctx.manager, GenerationRequest(prompt="a circle", steps=2, width=args.size, height=args.size,
                                                seed=1, save_images=False, controlnet_units=units))

    _release_memory()
    base = rss_bytes()  # the process with its libraries, before any model
    for label, room, order in (("two ControlNets loaded", 2.2, [("cn_a", "cn_b")]),
                               ("room for one ControlNet", 1.5, [("cn_a",), ("cn_b",)])):
        ctx = make_context(models, work / "outputs", precision=args.precision, include_builtin=False)
        checkpoint = checkpoint_nbytes(ctx.registry.find("sd15"), ctx.manager.dtype) or 0
        one = estimate_nbytes(ctx.manager.controlnets.find("cn_a"), ctx.manager.dtype)
        budget = checkpoint + int(room * one)
        ctx.manager.cache.set_budget(budget)
        peak = 0
        for names in order:
            job(ctx, *names)
            _release_memory()
            peak = max(peak, rss_bytes())
        held = ctx.manager.cache.total_bytes
        loaded = [k.split("|")[0].removeprefix("ControlNet/") for k in ctx.manager.controlnets.loaded()]
        print(f"{label}: budget {gib(budget)} (checkpoint {gib(checkpoint)} + {room} x ControlNet {gib(one)}); "
              f"cache holds {gib(held)} ({'within' if held <= budget else 'OVER'} budget), ControlNets in RAM "
              f"{loaded}; RSS over the bare process {gib(peak - base)} (bare {gib(base)})", flush=True)
        ctx.close()
        del ctx
        _release_memory()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--size", type=int, default=None, help="picture side (default 256 for sd15, 128 tiny)")
    parser.add_argument("--precision", default=None, help="fp32 / bf16 (default bf16 for sd15, fp32 tiny)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--only", choices=("memory", "steps"), default=None)
    args = parser.parse_args()
    args.size = args.size or (256 if args.shape == "sd15" else 128)
    args.precision = args.precision or ("bf16" if args.shape == "sd15" else "fp32")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work, models = _files(args.shape)
    if args.only != "steps":
        memory(args, models, work)  # first: the bare process's RSS is its baseline
    if args.only != "memory":
        step_time(args, models, work)


if __name__ == "__main__":
    main()
