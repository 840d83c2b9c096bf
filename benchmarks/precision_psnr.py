"""bf16 vs fp32 on the CPU: PSNR between the two pictures for the same seeds, and the speed of each.

The engine picks bf16 on CPUs with native bf16 (AVX-512 BF16 / AMX) only if pictures stay close to
fp32; this prints the evidence. Default model: the built-in demo model if present, else a tiny one.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import make_context, work_dir


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="a .safetensors checkpoint (default: built-in demo or tiny)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--size", type=int, default=0, help="default: the model's native size")
    args = parser.parse_args()
    from webui.context import builtin_checkpoints
    from webui.devices import cpu_has_native_bf16
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest

    work = work_dir("precision")
    ckpts = work / "models" / "Stable-diffusion"
    shutil.rmtree(ckpts, ignore_errors=True)
    ckpts.mkdir(parents=True)
    source = args.model or next((e.path for e in builtin_checkpoints()), None)
    if source is None:
        from tests.support.tiny_models import tiny_components, write_single_file

        source = write_single_file(work / "tiny.safetensors", "sd1", tiny_components("sd1", seed=0))
    shutil.copy2(source, ckpts / "model.safetensors")
    print(f"model {source.name}; CPU has native bf16: {cpu_has_native_bf16()}")
    prompts = ["a red circle on a blue background", "a yellow star on a green background",
               "a white square on a black background", "a purple triangle on an orange background"]
    results: dict[str, list[np.ndarray]] = {}
    for precision in ("fp32", "bf16"):
        ctx = make_context(work / "models", work / "outputs", precision=precision)
        size = args.size or ctx.manager.load("model").native_size
        images, start = [], time.perf_counter()
        for seed in range(args.seeds):
            request = GenerationRequest(prompt=prompts[seed % len(prompts)], steps=args.steps, width=size,
                                        height=size, seed=seed, save_images=False)
            images.append(np.asarray(generate(ctx.manager, request).images[0]))
        per_image = (time.perf_counter() - start) / args.seeds
        results[precision] = images
        print(f"{precision}: {per_image:.2f} s per image ({args.steps} steps, {size}px)")
        ctx.close()
    values = [psnr(a, b) for a, b in zip(results["fp32"], results["bf16"], strict=True)]
    print("PSNR bf16 vs fp32 per image: " + ", ".join(f"{v:.1f} dB" for v in values))
    print(f"mean PSNR: {np.mean([min(v, 99.0) for v in values]):.1f} dB")


if __name__ == "__main__":
    main()
