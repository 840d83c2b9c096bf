"""Hires fix overhead: the engine's txt2img with hires fix (Latent, 2x) vs doing the same two passes by hand
with diffusers (txt2img to latents, interpolate, img2img on the same weights). Target: <= 1.05x.

    python -m benchmarks.hires_overhead [--size 128] [--steps 12] [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import make_context, median_seconds, work_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=128, help="first-pass side; the picture is twice that")
    parser.add_argument("--strength", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from tests.support.tiny_models import tiny_components, write_single_file
    from webui.pipelines.generate import generate
    from webui.pipelines.hires import upscale_latents
    from webui.pipelines.request import GenerationRequest
    from webui.pipelines.schedulers import make_scheduler
    from webui.samplers import resolve_sampler

    work = work_dir("hires")
    models = work / "models"
    write_single_file(models / "Stable-diffusion" / "small.safetensors", "sd1", tiny_components("sd1", seed=0))
    ctx = make_context(models, work / "outputs", precision="fp32")
    model = ctx.manager.load("small")
    prompt, seed = "a red circle on a blue background", 1234
    request = GenerationRequest(prompt=prompt, steps=args.steps, width=args.size, height=args.size, seed=seed,
                                save_images=False, sampler="Euler", enable_hr=True, hr_upscaler="Latent",
                                denoising_strength=args.strength)
    choice = resolve_sampler("Euler")
    factor = 2 ** (len(model.components["vae"].config.block_out_channels) - 1)
    first = StableDiffusionPipeline(**model.components, safety_checker=None, feature_extractor=None,
                                    image_encoder=None, requires_safety_checker=False)
    second = StableDiffusionImg2ImgPipeline.from_pipe(first, torch_dtype=model.dtype)
    for pipe in (first, second):
        pipe.set_progress_bar_config(disable=True)

    def by_hand():
        common = {"prompt": [prompt], "negative_prompt": [""], "num_inference_steps": args.steps,
                  "guidance_scale": request.cfg_scale}
        with torch.inference_mode():
            first.scheduler = make_scheduler(choice, model.components["scheduler"].config)
            latents = first(**common, width=args.size, height=args.size, output_type="latent",
                            generator=[torch.Generator().manual_seed(seed)]).images
            latents = upscale_latents(latents, "Latent", 2 * args.size, 2 * args.size, factor)
            second.scheduler = make_scheduler(choice, model.components["scheduler"].config)
            return second(**common, image=latents, strength=args.strength, output_type="pil",
                          generator=[torch.Generator().manual_seed(seed)]).images[0]

    def engine():
        return generate(ctx.manager, request).images[0]

    same = np.array_equal(np.asarray(by_hand()), np.asarray(engine()))
    times = {"by hand": [], "engine": []}
    for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
        times["by hand"].append(median_seconds(by_hand, 1))
        times["engine"].append(median_seconds(engine, 1))
    t_hand, t_engine = (float(np.median(times[k])) for k in ("by hand", "engine"))
    print(f"hires fix 2x, {args.steps} steps at {args.size}px -> {2 * args.size}px, strength {args.strength}, "
          f"median of {args.repeats}")
    print(f"by hand with diffusers: {t_hand:.3f} s, engine: {t_engine:.3f} s")
    print(f"ratio engine/by hand = {t_engine / t_hand:.3f} (target <= 1.05); identical pixels: {same}")
    ctx.close()


if __name__ == "__main__":
    main()
