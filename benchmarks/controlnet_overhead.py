"""ControlNet costs, each against its baseline in the same run:

1. step time of the engine with one ControlNet unit vs diffusers' own StableDiffusionControlNetPipeline over
   the same checkpoint components and the same loaded ControlNet (same sampler, seed, map, weight). Goal:
   <= 1.05x. The per-step time is the difference of two step counts, so encoding and decoding cancel out;
   the pixels must also be identical;
2. RSS with two ControlNets loaded beside the checkpoint, against the RAM cache's byte budget: the cache's
   bytes stay within the budget, and the process grows by about what the cache says it holds. With a budget
   for only one ControlNet, the second job evicts the first (least recently used), never the checkpoint.

    .venv/bin/python -m benchmarks.controlnet_overhead                 # SD 1.5 shapes, random weights, bf16
    .venv/bin/python -m benchmarks.controlnet_overhead --shape tiny    # the tests' tiny models (seconds)

The SD 1.5-shaped files (a 2 GB checkpoint, two 720 MB ControlNets, random weights) are written once to
benchmarks/_work/.
"""

from __future__ import annotations

import argparse
import gc
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

        same = np.array_equal(np.asarray(engine(args.low)), np.asarray(direct(args.low)))
        timings: dict[str, dict[int, float]] = {"engine": {}, "diffusers": {}}
        for _ in range(args.repeats):  # interleaved, so a busy neighbour slows both alike
            for name, fn in (("diffusers", direct), ("engine", engine)):
                for steps in (args.low, args.high):
                    start = time.perf_counter()
                    fn(steps)
                    elapsed = time.perf_counter() - start
                    timings[name][steps] = min(timings[name].get(steps, elapsed), elapsed)
    per_step = {name: (t[args.high] - t[args.low]) / (args.high - args.low) for name, t in timings.items()}
    print(f"step time at {args.size}x{args.size} ({args.precision}, CFG, one unit, best of {args.repeats}): "
          f"diffusers {per_step['diffusers']:.3f} s, engine {per_step['engine']:.3f} s")
    print(f"  ratio engine/diffusers = {per_step['engine'] / per_step['diffusers']:.3f} (goal <= 1.05); "
          f"whole {args.high}-step job {timings['engine'][args.high]:.2f} s vs {timings['diffusers'][args.high]:.2f} s;"
          f" identical pixels: {same}")
    ctx.close()


def memory(args, models, work) -> None:
    from webui.controlnet.units import ControlUnit
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest

    probe = make_context(models, work / "outputs", precision=args.precision, include_builtin=False)
    checkpoint = probe.manager.load("sd15").nbytes
    probe.close()
    del probe
    gc.collect()

    def job(ctx, *names: str) -> None:
        units = [ControlUnit(module="none", model=name, image=_map(args.size)) for name in names]
        generate(ctx.manager, GenerationRequest(prompt="a circle", steps=2, width=args.size, height=args.size,
                                                seed=1, save_images=False, controlnet_units=units))

    base = rss_bytes()
    for label, extra in (("two ControlNets fit", 2.2), ("room for one ControlNet", 1.5)):
        gc.collect()
        start = rss_bytes()
        probe_ctx = make_context(models, work / "outputs", precision=args.precision, include_builtin=False,
                                 ram_cache_bytes=10 * 2**40)
        job(probe_ctx, "cn_a")
        one = probe_ctx.manager.cache.total_bytes - checkpoint
        probe_ctx.close()
        del probe_ctx
        gc.collect()
        budget = checkpoint + int(extra * one)
        ctx = make_context(models, work / "outputs", precision=args.precision, include_builtin=False,
                           ram_cache_bytes=budget)
        if extra > 2:
            job(ctx, "cn_a", "cn_b")
        else:
            job(ctx, "cn_a")
            job(ctx, "cn_b")
        gc.collect()
        held = ctx.manager.cache.total_bytes
        grown = rss_bytes() - start
        loaded = [k.split("|")[0].removeprefix("ControlNet/") for k in ctx.manager.controlnets.loaded()]
        print(f"{label}: budget {gib(budget)} (checkpoint {gib(checkpoint)}, one ControlNet {gib(one)}); cache holds "
              f"{gib(held)} ({'within' if held <= budget else 'OVER'} budget), ControlNets in RAM: {loaded}; "
              f"process grew {gib(grown)} (RSS {gib(rss_bytes())}, {gib(base)} before)")
        ctx.close()
        del ctx
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--size", type=int, default=None, help="picture side (default 256 for sd15, 128 tiny)")
    parser.add_argument("--precision", default=None, help="fp32 / bf16 (default bf16 for sd15, fp32 tiny)")
    parser.add_argument("--low", type=int, default=3)
    parser.add_argument("--high", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.size = args.size or (256 if args.shape == "sd15" else 128)
    args.precision = args.precision or ("bf16" if args.shape == "sd15" else "fp32")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work, models = _files(args.shape)
    step_time(args, models, work)
    memory(args, models, work)


if __name__ == "__main__":
    main()
