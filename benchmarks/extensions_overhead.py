"""Extension overhead, against a baseline measured in the same run:

1. start-up of a fresh process (imports, context, extension loading, building the UI, starting the server)
   with 20 no-op extensions vs none (target <= 1.10x);
2. a 20-step generation on the built-in demo model with 10 no-op ``on_step`` hooks vs none
   (target <= 1.01x per step).

    .venv/bin/python -m benchmarks.extensions_overhead
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
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


def serve_and_exit(extensions: Path) -> None:
    """The child process: start the app as `python -m webui` would (no browser), then stop."""
    from webui.context import AppContext
    from webui.ui.app import launch

    work = work_dir("extensions")
    ctx = AppContext.create(settings_for(work, extensions).replace(port=0))
    demo = launch(ctx, server_port=None, prevent_thread_lock=True, quiet=True)
    demo.close()
    ctx.close()


def startup_once(extensions: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmarks.extensions_overhead", "--serve-and-exit", str(extensions)],
                   check=True, capture_output=True, cwd=Path(__file__).resolve().parent.parent)
    return time.perf_counter() - start


def interleaved(a, b, rounds: int) -> tuple[float, float]:
    """Medians of a() and b() run alternately, so drift in the machine's speed hits both alike."""
    times_a, times_b = [], []
    for _ in range(rounds):
        times_a.append(a())
        times_b.append(b())
    return statistics.median(times_a), statistics.median(times_b)


def generation_pair(work: Path, hooks_folder: Path, rounds: int) -> tuple[float, float, float]:
    """One context (one model copy); its 10 on_step hooks switched off for the baseline runs."""
    from webui.context import AppContext, builtin_checkpoints
    from webui.extensions.api import StepState
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest

    ctx = AppContext.create(settings_for(work, hooks_folder))
    request = GenerationRequest(prompt="a red circle on a blue background", checkpoint=builtin_checkpoints()[0].name,
                                steps=20, width=64, height=64, seed=1, save_images=False)
    registered = list(ctx.hooks.hooks["on_step"])

    def run(with_hooks: bool) -> float:
        ctx.hooks.hooks["on_step"] = registered if with_hooks else []
        start = time.perf_counter()
        generate(ctx.manager, request, hooks=ctx.hooks)
        return time.perf_counter() - start

    run(True)  # warm-up
    without, with_hooks = interleaved(lambda: run(False), lambda: run(True), rounds)
    ctx.hooks.hooks["on_step"] = registered
    state = StepState("bench", 1, 20, 0, None)
    start = time.perf_counter()
    for _ in range(1000):
        ctx.hooks.on_step(state)
    per_call = (time.perf_counter() - start) / 1000
    ctx.close()
    return without, with_hooks, per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve-and-exit", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_and_exit:
        serve_and_exit(args.serve_and_exit)
        return
    work = work_dir("extensions")
    none, twenty, ten = work / "ext-none", work / "ext-20", work / "ext-10"
    write_noop_extensions(none, 0)
    none.mkdir(parents=True, exist_ok=True)
    write_noop_extensions(twenty, 20)
    write_noop_extensions(ten, 10)
    startup_once(none)  # warm-up: file caches
    base_start, with_start = interleaved(lambda: startup_once(none), lambda: startup_once(twenty), args.repeats)
    print(f"start-up: {base_start:.3f} s without extensions, {with_start:.3f} s with 20 no-op extensions "
          f"-> {with_start / base_start:.3f}x (target <= 1.10)")
    without, with_hooks, per_call = generation_pair(work, ten, args.repeats * 2)
    print(f"20-step picture: {without * 1000:.1f} ms without hooks, {with_hooks * 1000:.1f} ms with 10 no-op on_step "
          f"hooks -> {with_hooks / without:.3f}x (target <= 1.01); the hooks' own cost is "
          f"{per_call * 1e6:.1f} us per step = {per_call * 20 / without * 100:.3f}% of the picture")


if __name__ == "__main__":
    main()
