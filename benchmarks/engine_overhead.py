"""Overhead benchmark: the engine's txt2img vs calling the diffusers pipeline directly with the same
components, sampler, steps and seed. Target: <= 1.05x, identical pixels.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import make_context, median_seconds, work_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from tests.support.tiny_models import tiny_components, write_single_file
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest
    from webui.pipelines.schedulers import make_scheduler
    from webui.samplers import resolve_sampler

    work = work_dir("overhead")
    models = work / "models"
    write_single_file(models / "Stable-diffusion" / "small.safetensors", "sd1", tiny_components("sd1", seed=0))
    ctx = make_context(models, work / "outputs", precision="fp32")
    model = ctx.manager.load("small")
    request = GenerationRequest(prompt="a red circle on a blue background", steps=args.steps, width=args.size,
                                height=args.size, seed=1234, save_images=False, sampler="Euler a")
    choice = resolve_sampler("Euler a")

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**model.components, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def direct():
        # Plain diffusers over the same components; a fresh scheduler per call, as any correct server needs.
        pipe.scheduler = make_scheduler(choice, model.components["scheduler"].config)
        with torch.inference_mode():
            return pipe(prompt=[request.prompt], negative_prompt=[""], num_inference_steps=args.steps,
                        guidance_scale=request.cfg_scale, width=args.size, height=args.size,
                        generator=[torch.Generator().manual_seed(1234)], output_type="pil").images[0]

    def engine():
        return generate(ctx.manager, request).images[0]

    same = np.array_equal(np.asarray(direct()), np.asarray(engine()))
    t_direct = median_seconds(direct, args.repeats)
    t_engine = median_seconds(engine, args.repeats)
    print(f"direct diffusers: {t_direct:.3f} s, engine: {t_engine:.3f} s (median of {args.repeats}, "
          f"{args.steps} steps at {args.size}px)")
    print(f"ratio engine/direct = {t_engine / t_direct:.3f} (target <= 1.05); identical pixels: {same}")
    ctx.close()


if __name__ == "__main__":
    main()
