"""Extension overhead, against a baseline measured in the same run:

1. start-up (context creation, extension loading and building the UI) with 20 no-op extensions vs none
   (target <= 1.10x);
2. a 20-step generation on the built-in demo model with 10 no-op ``on_step`` hooks vs none
   (target <= 1.01x per step).

    .venv/bin/python -m benchmarks.extensions_overhead
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common import work_dir

NOOP = """
def setup(api):
    @api.on_step
    def step(state):
        pass
"""


def write_noop_extensions(folder: Path, count: int) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(count):
        ext = folder / f"noop-{i:02d}"
        ext.mkdir(parents=True)
        (ext / "extension.toml").write_text(f'id = "noop-{i:02d}"\nname = "No-op {i}"\nversion = "1.0"\n'
                                            'api = ">=1,<2"\nentry = "main:setup"\n')
        (ext / "main.py").write_text(NOOP)


def settings_for(work: Path, extensions: Path):
    from webui.config import load_settings

    (work / "models" / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    return load_settings({"settings_file": work / "settings.json", "models_dir": work / "models",
                          "outputs_dir": work / "outputs", "extensions_dir": extensions, "device": "cpu",
                          "precision": "fp32", "autolaunch": False}, env={})


def startup_seconds(settings, repeats: int) -> float:
    from webui.context import AppContext
    from webui.ui.app import build

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ctx = AppContext.create(settings)
        build(ctx)
        times.append(time.perf_counter() - start)
        ctx.close()
    return statistics.median(times)


def generation_seconds(settings, repeats: int) -> float:
    from webui.context import AppContext, builtin_checkpoints
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest

    ctx = AppContext.create(settings)
    request = GenerationRequest(prompt="a red circle on a blue background", checkpoint=builtin_checkpoints()[0].name,
                                steps=20, width=64, height=64, seed=1, save_images=False)
    generate(ctx.manager, request, hooks=ctx.hooks)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(ctx.manager, request, hooks=ctx.hooks)
        times.append(time.perf_counter() - start)
    hooks = len(ctx.hooks.hooks["on_step"])
    ctx.close()
    print(f"  {hooks} on_step hooks: {statistics.median(times) * 1000:.1f} ms per 20-step picture")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = work_dir("extensions")
    none, twenty, ten = work / "ext-none", work / "ext-20", work / "ext-10"
    write_noop_extensions(none, 0)
    none.mkdir(parents=True, exist_ok=True)
    write_noop_extensions(twenty, 20)
    write_noop_extensions(ten, 10)
    # Interleaved so drift in the machine's speed affects both sides alike.
    base_start = startup_seconds(settings_for(work, none), args.repeats)
    with_start = startup_seconds(settings_for(work, twenty), args.repeats)
    print(f"start-up: {base_start:.3f} s without extensions, {with_start:.3f} s with 20 no-op extensions "
          f"-> {with_start / base_start:.3f}x (target <= 1.10)")
    base_gen = generation_seconds(settings_for(work, none), args.repeats)
    with_gen = generation_seconds(settings_for(work, ten), args.repeats)
    print(f"generation: {with_gen / base_gen:.3f}x with 10 no-op on_step hooks (target <= 1.01)")


if __name__ == "__main__":
    main()
