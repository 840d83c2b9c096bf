"""What only a GPU shows, in one run on an SD 1.5-shaped checkpoint of random weights (values do not
matter for time and memory; shapes, dtypes and layout do):

1. 512x512, 20 steps Euler a, fp16: seconds and peak VRAM with offload none / model / sequential, and fp32.
2. LoRAs under each offload mode: the image changes with a LoRA and is pixel-identical to the base
   image after it is removed.
3. LoRA apply+remove and 3-chunk prompt encoding relative to one UNet step (benchmarks.networks_overhead).
4. A forced out-of-memory: the process limited to 3.5 GiB of VRAM, a 2048x2048 job, then a 512x512 job.
5. The SDE samplers' Brownian noise for CUDA latents equals the CPU latents' noise bit for bit (the trees draw
   on the CPU, as A1111's replacement of torchsde's draw does), where a tree on the GPU draws other numbers.

    python -m benchmarks.gpu_check --out gpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import make_context, work_dir
from benchmarks.random_checkpoints import write_random_lora, write_random_sd15

PROMPT = "a lighthouse on a cliff at sunset, oil painting"


def request(**kw):
    from webui.pipelines.request import GenerationRequest

    base = {"prompt": PROMPT, "steps": 20, "width": 512, "height": 512, "seed": 1, "save_images": False,
            "sampler": "Euler a"}
    return GenerationRequest(**{**base, **kw})


def run_mode(models: Path, out: Path, offload: str, precision: str = "fp16", repeats: int = 3) -> dict:
    from webui.pipelines.generate import generate

    ctx = make_context(models, out, device="cuda", precision=precision, offload=offload)
    try:
        generate(ctx.manager, request(steps=2))  # warm-up: load, place, kernels
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            base = generate(ctx.manager, request())
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = sorted(times)[len(times) // 2]
        peak = torch.cuda.max_memory_allocated()
        figures = {"seconds_20_steps": round(seconds, 3), "it_per_s": round(20 / seconds, 2),
                   "peak_vram_gib": round(peak / 2**30, 3), "warnings": base.warnings}
        image = np.asarray(base.images[0])
        figures["image_std"] = float(image.std())
        lora = generate(ctx.manager, request(steps=6, prompt=PROMPT + " <lora:random-0:1> <lora:random-1:0.7>"))
        plain = generate(ctx.manager, request(steps=6))
        again = generate(ctx.manager, request(steps=6))
        figures["lora_changes_image"] = bool(not np.array_equal(np.asarray(lora.images[0]),
                                                                np.asarray(plain.images[0])))
        before = generate(ctx.manager, request(steps=6, seed=2))
        generate(ctx.manager, request(steps=6, seed=2, prompt=PROMPT + " <lora:random-0:1>"))
        after = generate(ctx.manager, request(steps=6, seed=2))
        figures["lora_removed_pixel_identical"] = bool(np.array_equal(np.asarray(before.images[0]),
                                                                      np.asarray(after.images[0])))
        figures["repeat_pixel_identical"] = bool(np.array_equal(np.asarray(plain.images[0]),
                                                                np.asarray(again.images[0])))
        figures["lora_warnings"] = lora.warnings
        return figures
    finally:
        ctx.close()
        del ctx
        gc.collect()
        torch.cuda.empty_cache()


def forced_oom(models: Path, out: Path, limit_gib: float = 3.5) -> dict:
    from webui.pipelines.generate import generate

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(limit_gib * 2**30 / total)
    ctx = make_context(models, out, device="cuda", precision="fp16", offload="none")
    figures: dict = {"limit_gib": limit_gib}
    try:
        start = time.perf_counter()
        try:
            big = generate(ctx.manager, request(steps=4, width=2048, height=2048))
            figures["big"] = {"ok": True, "warnings": big.warnings, "image_std": float(np.asarray(big.images[0]).std()),
                              "seconds": round(time.perf_counter() - start, 2)}
        except Exception as exc:  # what a user would see
            figures["big"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        torch.cuda.reset_peak_memory_stats()
        small = generate(ctx.manager, request(steps=8))
        figures["small_after"] = {"ok": True, "warnings": small.warnings,
                                  "image_std": float(np.asarray(small.images[0]).std()),
                                  "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    finally:
        ctx.close()
        torch.cuda.set_per_process_memory_fraction(1.0)
    return figures


def brownian_cuda_vs_cpu(steps: int = 20, device: str = "cuda") -> dict:
    """BrownianNoise for a 64x64 latent batch on ``device`` against the same on the CPU, every step of an Exponential
    schedule and DPM++ SDE's half steps; and whether a torchsde tree on the device would have drawn other numbers."""
    import torchsde

    from webui.pipelines.kscheduler import BrownianNoise
    from webui.pipelines.ksigmas import ModelSigmas, alphas_cumprod_from_config, schedule_sigmas

    config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "trained_betas": None, "rescale_betas_zero_snr": False}
    sigmas = schedule_sigmas("Exponential", steps, ModelSigmas(alphas_cumprod_from_config(config)))
    low, high, seeds, shape = sigmas[sigmas > 0].min(), sigmas.max(), [1234, 5678], (4, 64, 64)
    on_device = BrownianNoise(torch.zeros((2, *shape), device=device), low, high, seeds)
    on_cpu = BrownianNoise(torch.zeros((2, *shape)), low, high, seeds)
    device_tree = torchsde.BrownianTree(low, torch.zeros(shape, device=device), high, entropy=seeds[0])
    cpu_tree = torchsde.BrownianTree(low, torch.zeros(shape), high, entropy=seeds[0])
    queries = list(zip(sigmas[:-2], sigmas[1:-1], strict=True))
    queries += [(s, (s * t).sqrt()) for s, t in queries]
    equal, worst, devices, tree_differs = True, 0.0, set(), True
    for sigma, sigma_next in queries:
        noise, cpu_noise = on_device(sigma, sigma_next), on_cpu(sigma, sigma_next)
        devices.add(str(noise.device))
        equal = equal and torch.equal(noise.cpu(), cpu_noise)
        worst = max(worst, float((noise.cpu() - cpu_noise).abs().max()))
        t0, t1 = min(float(sigma), float(sigma_next)), max(float(sigma), float(sigma_next))
        tree_differs = tree_differs and not torch.equal(device_tree(t0, t1).cpu(), cpu_tree(t0, t1))
    fresh = BrownianNoise(torch.zeros((2, *shape), device=device), low, high, seeds)  # nothing cached yet
    start = time.perf_counter()
    for sigma, sigma_next in queries[:steps - 1]:
        fresh(sigma, sigma_next)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"queries": len(queries), "device_equals_cpu_bitwise": bool(equal), "max_abs_diff": worst,
            "noise_devices": sorted(devices), "a_tree_on_the_device_draws_other_numbers": bool(tree_differs),
            "ms_per_step_batch_2_64x64": round((time.perf_counter() - start) / (steps - 1) * 1e3, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--only", nargs="*", help="run only sections whose names start with these")
    args = parser.parse_args()
    work = work_dir("gpu")
    models = work / "models"
    outputs = work / "outputs"
    results: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1))

    def section(name: str, fn) -> None:
        if args.only and name != "write_files" and not name.startswith(tuple(args.only)):
            return
        start = time.perf_counter()
        try:
            results[name] = fn()
        except Exception:
            results[name] = {"error": traceback.format_exc()[-2000:]}
        results[name + "_wall_s"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(results[name]), flush=True)
        save()

    section("write_files", lambda: {
        "checkpoint": str(write_random_sd15(models / "Stable-diffusion" / "random-0.safetensors", seed=0)),
        "loras": [str(write_random_lora(models / "Lora" / f"random-{i}.safetensors", seed=i)) for i in range(2)]})
    for mode in ("none", "model", "sequential"):
        section(f"fp16_offload_{mode}", lambda mode=mode: run_mode(models, outputs, mode, repeats=1 if mode ==
                                                                  "sequential" else 3))
    section("fp32_offload_none", lambda: run_mode(models, outputs, "none", "fp32"))

    def overhead() -> dict:
        from benchmarks.networks_overhead import measure

        ctx = make_context(models, outputs, device="cuda", precision="fp16", offload="none")
        try:
            return measure(ctx, repeats=5)
        finally:
            ctx.close()

    section("networks_overhead_fp16", overhead)
    section("forced_oom_3_5gib", lambda: forced_oom(models, outputs))
    section("brownian_cuda_vs_cpu", brownian_cuda_vs_cpu)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
