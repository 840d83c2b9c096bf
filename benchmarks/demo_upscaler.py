"""The built-in demo upscaler (×2) against Lanczos, on the demo world and on the demo model's pictures.

1. Drawn scenes (fresh ones, a seed the training never used): each scene drawn at 128×128 is the
   truth; the input is the same picture at 64×64 in three kinds: the scene as drawn at 64 (area
   downscale, shape in the same place as in the truth), a bicubic downscale, and the drawing passed
   through the demo model's VAE (how its decoder renders it). Both methods enlarge it ×2; printed:
   mean PSNR against the truth, and how often ``shapes.classify`` still names the scene's background,
   foreground colour and shape (the truth drawing's own figure is the classifier's ceiling).
2. The demo model's own 64×64 pictures (20 steps Euler a, CFG 7, fp32, through the engine) have no
   truth at 128: printed is how often the verdict of ``classify`` on the ×2 picture is the verdict on
   the 64 picture (kept), and how often it matches the prompt.
Also the median time of one ×2 of each method. Goal: the upscaler beats Lanczos on PSNR for every
input kind and keeps the classifier's verdicts at least as often.

    nice -n 10 .venv/bin/python -m benchmarks.demo_upscaler

``--upscaler PATH`` judges another file (e.g. a trial run's), ``--scenes``/``--seeds`` change the counts.
Needs ``spandrel`` importable (it needs torchvision).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import make_context, work_dir

EVAL_SEED = 777  # not the training's seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upscaler", type=Path, help="a .safetensors upscaler (default: the built-in one)")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=2, help="demo-model pictures per colour × shape")
    args = parser.parse_args()

    import spandrel
    import torch

    from tools.demo_model import shapes
    from tools.demo_model.train_upscaler import OUTPUT, drawn_pair, lanczos, load_demo_vae, psnr, vae_roundtrip

    torch.set_num_threads(2)
    path = args.upscaler or OUTPUT
    descriptor = spandrel.ModelLoader().load_from_file(path)
    descriptor.model.eval()
    print(f"upscaler: {path.name}, {descriptor.architecture.name} ×{descriptor.scale}, "
          f"{path.stat().st_size / 1e6:.2f} MB")

    @torch.no_grad()
    def ours(image: Image.Image) -> Image.Image:
        tensor = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255.0
        out = descriptor(tensor)[0].permute(1, 2, 0).mul(255.0).round().byte().numpy()
        return Image.fromarray(out)

    methods: dict[str, Callable[[Image.Image], Image.Image]] = {"upscaler": ours, "lanczos": lanczos}

    # ---- 1. drawn scenes with a truth at 128
    rng = np.random.default_rng(EVAL_SEED)
    scenes = [shapes.random_scene(rng) for _ in range(args.scenes)]
    pairs = [drawn_pair(scene) for scene in scenes]
    truths = [high for _, high in pairs]
    drawn = [low for low, _ in pairs]
    inputs = {
        "drawn at 64": drawn,
        "bicubic downscale": [high.resize(low.size, Image.Resampling.BICUBIC) for low, high in pairs],
        "demo VAE roundtrip": vae_roundtrip(load_demo_vae(), drawn),
    }

    def verdict_ok(image: Image.Image, scene: shapes.Scene) -> bool:
        return shapes.classify(image) == (scene.bg, scene.fg, scene.shape)

    ceiling = statistics.mean(verdict_ok(t, s) for t, s in zip(truths, scenes, strict=True))
    print(f"\n1. {args.scenes} drawn scenes (seed {EVAL_SEED}); classify() right on the 128 truth itself: "
          f"{ceiling:.1%}")
    print(f"{'input':<20} {'PSNR upscaler':>14} {'PSNR Lanczos':>13} {'gain':>8} "
          f"{'classify upscaler':>18} {'classify Lanczos':>17}")
    for kind, lows in inputs.items():
        result: dict[str, tuple[float, float]] = {}
        for name, method in methods.items():
            outs = [method(low) for low in lows]
            result[name] = (
                statistics.mean(psnr(o, t) for o, t in zip(outs, truths, strict=True)),
                statistics.mean(verdict_ok(o, s) for o, s in zip(outs, scenes, strict=True)),
            )
        (p_up, c_up), (p_la, c_la) = result["upscaler"], result["lanczos"]
        print(f"{kind:<20} {p_up:>11.2f} dB {p_la:>10.2f} dB {p_up - p_la:>+5.2f} dB {c_up:>18.1%} {c_la:>17.1%}")

    times = {}
    for name, method in methods.items():
        method(drawn[0])  # warm-up
        start = time.perf_counter()
        for low in drawn[:50]:
            method(low)
        times[name] = (time.perf_counter() - start) / 50
    print(f"time per ×2 of a 64×64 picture: upscaler {times['upscaler'] * 1e3:.1f} ms, "
          f"Lanczos {times['lanczos'] * 1e3:.2f} ms ({times['upscaler'] / times['lanczos']:.0f}× Lanczos)")

    # ---- 2. the demo model's own pictures
    from webui.context import builtin_checkpoints
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest

    work = work_dir("demo_upscaler")
    shutil.rmtree(work / "models", ignore_errors=True)
    (work / "models" / "Stable-diffusion").mkdir(parents=True)
    checkpoint = next(e.name for e in builtin_checkpoints() if e.path.name == "atelier-demo.safetensors")
    ctx = make_context(work / "models", work / "outputs", precision="fp32")
    kept = {name: 0 for name in methods}
    right = {name: 0 for name in [*methods, "64 picture"]}
    n = 0
    try:
        for ci, colour in enumerate(shapes.COLOURS):
            for si, shape in enumerate(shapes.SHAPES):
                bg = shapes.eval_background(colour, ci + si)
                prompt = f"{shapes.with_article(colour + ' ' + shape)} on {shapes.with_article(bg)} background"
                for seed in range(args.seeds):
                    request = GenerationRequest(prompt=prompt, steps=20, width=64, height=64, seed=seed,
                                                sampler="Euler a", cfg_scale=7.0, checkpoint=checkpoint,
                                                save_images=False)
                    picture = generate(ctx.manager, request).images[0]
                    base = shapes.classify(picture)
                    right["64 picture"] += base == (bg, colour, shape)
                    for name, method in methods.items():
                        got = shapes.classify(method(picture))
                        kept[name] += got == base
                        right[name] += got == (bg, colour, shape)
                    n += 1
    finally:
        ctx.close()
    print(f"\n2. {n} demo-model pictures (64×64, 20 steps Euler a, CFG 7), enlarged ×2")
    print(f"classify() verdict kept from the 64 picture: upscaler {kept['upscaler'] / n:.1%}, "
          f"Lanczos {kept['lanczos'] / n:.1%}")
    print(f"verdict matches the prompt: 64 picture {right['64 picture'] / n:.1%}, upscaler "
          f"{right['upscaler'] / n:.1%}, Lanczos {right['lanczos'] / n:.1%}")


if __name__ == "__main__":
    main()
