"""Dispatch overhead per job: the same short job on the built-in demo model run by the engine directly, through
the job queue on the in-process worker, and through the queue on a Ray worker (a local one-actor cluster),
all with one torch thread so the arithmetic is the same (the pixels are compared). Target: <= 50 ms per job.

Then the head's own work per picture that comes back from a remote worker, at the sizes people make: the
worker's PNG encoding, the bytes that travel, the head's decoding and saving. These are the figures the
capacity table in docs/scaling.md is computed from.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from benchmarks.common import make_context, work_dir


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def _picture(side: int) -> Image.Image:
    """A picture with the smooth areas and fine detail of a generated one (noise alone compresses worse)."""
    rng = np.random.default_rng(side)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(4 * (x + y))], axis=-1)
    pixels = (base * 90 + 128 + rng.normal(0, 12, (side, side, 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def head_costs(repeats: int) -> None:
    from webui.outputs import encode_image, save_encoded
    from webui.queue.remote import _decode

    folder = work_dir("queue") / "saved"
    text = "a red circle on a blue background\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 512x512, Model: x"
    print(f"\nhead's work per picture from a remote worker (median of {repeats}):")
    print(f"{'size':>10} {'PNG bytes':>10} {'encode (worker)':>16} {'decode (head)':>14} {'save (head)':>12}")
    for side in (512, 768, 1024, 2048):
        image = _picture(side)
        encode, decode, save = [], [], []
        data = b""
        for _ in range(repeats):
            start = time.perf_counter()
            data = encode_image(image, text)
            encode.append(time.perf_counter() - start)
            start = time.perf_counter()
            _decode(data)
            decode.append(time.perf_counter() - start)
            start = time.perf_counter()
            save_encoded(data, folder, 1)
            save.append(time.perf_counter() - start)
        print(f"{side:>5}x{side:<4} {len(data) / 2**20:>8.2f} MB {_median_ms(encode):>13.1f} ms "
              f"{_median_ms(decode):>11.1f} ms {_median_ms(save):>9.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4, help="short jobs, so the overhead shows")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-ray", action="store_true", help="only the in-process worker")
    args = parser.parse_args()

    import torch

    from webui.context import builtin_checkpoints
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest

    torch.set_num_threads(1)
    work = work_dir("queue")
    models = work / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    demo = builtin_checkpoints()[0].name
    request = GenerationRequest(prompt="a red circle on a blue background", checkpoint=demo, steps=args.steps,
                                width=64, height=64, seed=5, sampler="Euler a", save_images=False)
    local = make_context(models, work / "outputs", precision="fp32")
    runs = {"engine": lambda: generate(local.manager, request), "queue, in-process": lambda: local.run_job(request)}
    remote = None
    if not args.no_ray:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="atelier-bench")
        remote = make_context(models, work / "outputs", precision="fp32", ray="auto", ray_workers=1,
                              worker_threads=1)
        deadline = time.monotonic() + 300
        while remote.jobs.generation_workers() < 1:
            assert time.monotonic() < deadline, "the Ray worker did not start"
            time.sleep(0.5)
        runs["queue, Ray worker"] = lambda: remote.run_job(request)
    try:
        firsts = {name: np.asarray(run().images[0]) for name, run in runs.items()}  # warm up (loads the model)
        same = all(np.array_equal(firsts["engine"], pixels) for pixels in firsts.values())
        times: dict[str, list[float]] = {name: [] for name in runs}
        overheads: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved, so machine noise hits every side alike
            for name, run in runs.items():
                start = time.perf_counter()
                result = run()
                wall = time.perf_counter() - start
                times[name].append(wall)
                # The engine times itself wherever it runs (result.seconds): the rest of the wall time is what
                # the path adds (queue, threads, Ray calls, PNG encoding and decoding), free of the compute's noise.
                overheads[name].append(wall - result.seconds)
        print(f"{args.steps} steps of the demo model at 64x64, 1 torch thread, median of {args.repeats}:")
        for name in runs:
            p90 = sorted(overheads[name])[int(0.9 * args.repeats)] * 1000
            print(f"  {name:<18} wall {_median_ms(times[name]):7.1f} ms   added to the engine's own time: "
                  f"{_median_ms(overheads[name]):6.1f} ms (p90 {p90:.1f})")
        extra = {n: _median_ms(overheads[n]) - _median_ms(overheads["engine"]) for n in runs if n != "engine"}
        print("  dispatch overhead per job vs in-process engine: " +
              ", ".join(f"{n}: {v:+.1f} ms" for n, v in extra.items()) + " (target <= 50 ms)")
        print(f"  identical pixels on every path: {same}")
    finally:
        local.close()
        if remote is not None:
            remote.close()
            import ray

            ray.shutdown()
    head_costs(max(3, args.repeats // 3))


if __name__ == "__main__":
    main()
