"""The built-in demo ControlNet: does the shape land where the outline map puts it? Against no ControlNet.

Every shape × the nine named places of a 3×3 grid (``tools.demo_model.positions``) × seeds, 20 steps
of Euler a, CFG 7, 64×64, fp32 on the CPU, through plain diffusers (``StableDiffusionControlNetPipeline``
over the demo model's components; Atelier's engine is not involved). The prompt is "a {colour} {shape}
on a {bg} background", naming no place; colours cycle. The control image is one of two maps of the
scene at that place, white outlines on black:

- ``outline``: the shape's outline traced from the scene's geometry (1.5 px);
- ``canny``: ``cv2.Canny(picture, 100, 200)`` of the scene as drawn.

Each picture is judged by ``tools.demo_model.shapes``: its place is the grid place nearest its
foreground's centre of mass; colour and shape by ``classify``. The baseline is the same prompts and
seeds without a ControlNet, whose place is at chance (1/9, or the middle every time). Goal: position
accuracy ≥ 90%. Also checked: weight 0 gives the picture without ControlNet pixel for pixel, ending
control at half the steps changes the picture, and the time per picture.

    nice -n 10 .venv/bin/python -m benchmarks.demo_controlnet

``--controlnet FOLDER`` judges another folder (e.g. a trial run's); ``--seeds`` changes the count;
``--save-grid`` writes the pictures to benchmarks/_work/demo_controlnet/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import work_dir

# Idle OpenMP threads sleep instead of spinning (set before torch loads): on a shared 2-core machine
# spinning threads wait for a descheduled peer and every picture takes many times longer.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controlnet", type=Path, help="a diffusers ControlNet folder (default: the built-in one)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--save-grid", action="store_true")
    args = parser.parse_args()

    import torch

    from tools.demo_model import outlines, positions, shapes
    from tools.demo_model.demo_pipelines import (
        CONTROLNET_DIR,
        controlnet_pipeline,
        generate,
        load_controlnet,
        load_demo_components,
        plain_pipeline,
    )

    torch.set_num_threads(2)
    folder = args.controlnet or CONTROLNET_DIR
    weights = folder / "diffusion_pytorch_model.safetensors"
    components = load_demo_components()
    controlnet = load_controlnet(folder)
    print(f"ControlNet: {folder.name}, {sum(p.numel() for p in controlnet.parameters()) / 1e6:.2f} M parameters, "
          f"{weights.stat().st_size / 1e6:.2f} MB")
    with_cn = controlnet_pipeline(components, controlnet)
    without = plain_pipeline(components)

    colours = list(shapes.COLOURS)
    cases = []
    for si, shape in enumerate(shapes.SHAPES):
        for pi, place in enumerate(positions.GRID):
            for seed in range(args.seeds):
                fg = colours[(si * 9 + pi + seed) % len(colours)]
                bg = shapes.eval_background(fg, pi + seed)
                cases.append((positions.grid_scene(fg, shape, bg, place), seed))

    def maps(scene: shapes.Scene) -> dict[str, Image.Image]:
        return {"outline": outlines.to_rgb(outlines.outline_map(scene)),
                "canny": outlines.to_rgb(outlines.canny_map(shapes.draw(scene)))}

    methods = ["outline", "canny", "no ControlNet"]
    tallies: dict[str, Counter[str]] = {m: Counter() for m in methods}
    placed_at: dict[str, Counter[str]] = {m: Counter() for m in methods}
    times: dict[str, list[float]] = {"ControlNet": [], "no ControlNet": []}
    pictures: dict[str, list[Image.Image]] = {m: [] for m in methods}
    for scene, seed in cases:
        prompt = shapes.caption(shapes.Scene(scene.fg, scene.shape, scene.bg))  # names no place
        runs: dict[str, Image.Image] = {}
        for kind, control in maps(scene).items():
            began = time.perf_counter()
            runs[kind] = generate(with_cn, prompt, seed, control_image=control, steps=args.steps)
            times["ControlNet"].append(time.perf_counter() - began)
        began = time.perf_counter()
        runs["no ControlNet"] = generate(without, prompt, seed, steps=args.steps)
        times["no ControlNet"].append(time.perf_counter() - began)
        for method, picture in runs.items():
            place = positions.place_of(picture, scene.shape)
            bg, fg, shape = shapes.classify(picture)
            tally = tallies[method]
            tally["n"] += 1
            tally["position"] += place == scene.position
            tally["colour"] += fg == scene.fg
            tally["shape"] += shape == scene.shape
            tally["background"] += bg == scene.bg
            tally["all"] += place == scene.position and (bg, fg, shape) == (scene.bg, scene.fg, scene.shape)
            if scene.position == "in the top left":
                tally["top-left n"] += 1
                tally["top-left"] += place == scene.position
            placed_at[method][str(place) if place is not False else "nothing"] += 1
            pictures[method].append(picture)

    n = len(cases)
    print(f"\n{n} scenes ({len(shapes.SHAPES)} shapes × 9 places × {args.seeds} seeds), {args.steps} steps Euler a, "
          f"CFG 7, 64×64")
    print(f"{'control map':<15} {'position':>9} {'top left':>9} {'colour':>8} {'shape':>8} {'background':>11} "
          f"{'all four':>9}")
    for method in methods:
        t = tallies[method]
        print(f"{method:<15} {t['position'] / n:>9.1%} {t['top-left'] / t['top-left n']:>9.1%} "
              f"{t['colour'] / n:>8.1%} {t['shape'] / n:>8.1%} {t['background'] / n:>11.1%} {t['all'] / n:>9.1%}")
    print(f"chance of the right place: {1 / 9:.1%}; without ControlNet the pictures sat at: "
          + ", ".join(f"{k} {v}" for k, v in placed_at["no ControlNet"].most_common()))
    print(f"median time per picture: ControlNet {statistics.median(times['ControlNet']):.2f} s, "
          f"no ControlNet {statistics.median(times['no ControlNet']):.2f} s")

    # Weight 0 and the ending step, on a few scenes.
    equal, changed, largest = 0, [], 0.0
    checks = cases[:: max(1, n // 6)][:6]
    for scene, seed in checks:
        prompt = shapes.caption(shapes.Scene(scene.fg, scene.shape, scene.bg))
        control = maps(scene)["outline"]
        zero = generate(with_cn, prompt, seed, control_image=control, steps=args.steps,
                        controlnet_conditioning_scale=0.0)
        plain = generate(without, prompt, seed, steps=args.steps)
        equal += np.array_equal(np.asarray(zero), np.asarray(plain))
        full = np.asarray(generate(with_cn, prompt, seed, control_image=control, steps=args.steps), dtype=np.float32)
        half = np.asarray(generate(with_cn, prompt, seed, control_image=control, steps=args.steps,
                                   control_guidance_end=0.5), dtype=np.float32)
        changed.append(float(np.abs(full - half).mean()))
        largest = max(largest, float(np.abs(full - half).max()))
    print(f"weight 0 == no ControlNet pixel for pixel: {equal}/{len(checks)}; ending step 0.5 vs 1.0: mean "
          f"|difference| {statistics.mean(changed):.1f} of 255 (smallest {min(changed):.1f}), largest pixel "
          f"difference {largest:.0f}")

    if args.save_grid:
        out = work_dir("demo_controlnet")
        for method, images in pictures.items():
            grid = Image.new("RGB", (64 * 9 * args.seeds, 64 * len(shapes.SHAPES)))
            for i, picture in enumerate(images):
                grid.paste(picture, ((i % (9 * args.seeds)) * 64, (i // (9 * args.seeds)) * 64))
            path = out / f"{method.replace(' ', '_')}.png"
            grid.save(path)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
