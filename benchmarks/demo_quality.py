"""Quality and speed of the built-in demo model, judged by a classifier that knows nothing of it.

Every colour × shape, 4 seeds, 20 steps of Euler a at the native size (64×64), CFG 7, fp32 on
the CPU, through the engine (``generate``). The prompt is "a {colour} {shape} on a {bg}
background" with the background cycling through the other colours. Each picture is classified
by ``tools.demo_model.shapes.classify`` (background = border colour, foreground = what differs
from it, colour by mean hue, shape by fill of the bounding box) and compared with the prompt.
Goals: foreground colour ≥ 90%, shape ≥ 75%, background colour ≥ 85%, median < 2 s per picture.

    nice -n 10 .venv/bin/python -m benchmarks.demo_quality

``--model PATH`` judges another file (e.g. a training snapshot); ``--save-grid`` writes all
pictures to benchmarks/_work/demo_quality/grid.png.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import make_context, work_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a .safetensors file (default: the built-in demo model)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--save-grid", action="store_true")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from tools.demo_model import shapes
    from webui.context import builtin_checkpoints
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest

    torch.set_num_threads(2)
    work = work_dir("demo_quality")
    ckpts = work / "models" / "Stable-diffusion"
    shutil.rmtree(ckpts, ignore_errors=True)
    ckpts.mkdir(parents=True)
    if args.model is not None:
        shutil.copy2(args.model, ckpts / args.model.name)
        checkpoint = args.model.name
    else:
        builtin = [e for e in builtin_checkpoints() if e.path.name == "atelier-demo.safetensors"]
        if not builtin:
            raise SystemExit("no built-in demo model; run python -m tools.demo_model.train first")
        checkpoint = builtin[0].name
    ctx = make_context(work / "models", work / "outputs", precision="fp32")
    try:
        model = ctx.manager.load(checkpoint)
        size = model.detection.native_size
        cases = []
        for ci, colour in enumerate(shapes.COLOURS):
            for si, shape in enumerate(shapes.SHAPES):
                bg = shapes.eval_background(colour, ci + si)
                for seed in range(args.seeds):
                    cases.append((colour, shape, bg, seed))

        # One untimed picture first, so the median is not charged with warm-up.
        generate(ctx.manager, GenerationRequest(prompt="a red circle", steps=args.steps, width=size, height=size,
                                                seed=0, sampler=args.sampler, checkpoint=checkpoint,
                                                save_images=False))
        hits = Counter()
        times: list[float] = []
        confusions: Counter[str] = Counter()
        pictures: list[Image.Image] = []
        for colour, shape, bg, seed in cases:
            prompt = f"{shapes.with_article(colour + ' ' + shape)} on {shapes.with_article(bg)} background"
            request = GenerationRequest(prompt=prompt, steps=args.steps, width=size, height=size, seed=seed,
                                        sampler=args.sampler, cfg_scale=args.cfg, checkpoint=checkpoint,
                                        save_images=False)
            start = time.perf_counter()
            image = generate(ctx.manager, request).images[0]
            times.append(time.perf_counter() - start)
            pictures.append(image)
            got_bg, got_fg, got_shape = shapes.classify(image)
            hits["fg"] += got_fg == colour
            hits["shape"] += got_shape == shape
            hits["bg"] += got_bg == bg
            if got_shape != shape:
                confusions[f"{shape}->{got_shape}"] += 1
            if got_fg != colour:
                confusions[f"{colour}->{got_fg}"] += 1
    finally:
        ctx.close()

    n = len(cases)
    print(f"model: {checkpoint} ({size}x{size}), {n} pictures, {args.steps} steps {args.sampler}, CFG {args.cfg}")
    print(f"foreground colour: {hits['fg'] / n:6.1%}  (goal >= 90%)")
    print(f"shape:             {hits['shape'] / n:6.1%}  (goal >= 75%)")
    print(f"background colour: {hits['bg'] / n:6.1%}  (goal >= 85%)")
    print(f"median seconds per picture: {statistics.median(times):.3f}  (goal < 2 s)")
    print("most common misses:", ", ".join(f"{k} ×{v}" for k, v in confusions.most_common(8)) or "none")
    if args.save_grid:
        columns = len(shapes.SHAPES) * args.seeds
        grid = Image.new("RGB", (columns * size, (n // columns) * size))
        for i, picture in enumerate(pictures):
            grid.paste(picture, ((i % columns) * size, (i // columns) * size))
        path = work / "grid.png"
        grid.save(path)
        print(f"grid: {path}")


if __name__ == "__main__":
    main()
