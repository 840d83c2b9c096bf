"""Throughput in pictures per minute with 1 and 2 workers on this machine's cores: the built-in demo model,
two users each queueing the same number of jobs at once, all through the job queue.

    in-process  one worker on --device (torch on every core), or --devices cpu,cpu (one core each)
    Ray         one actor with every core, or two actors with one core each (a local cluster)

On a CPU the two-worker gain comes from running two jobs' small kernels side by side instead of splitting
each one across threads; on GPUs each worker has its own device, which is where the scaling is (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import make_context, work_dir


def _run(ctx, jobs: int, steps: int) -> float:
    from webui.context import builtin_checkpoints
    from webui.pipelines.request import GenerationRequest
    from webui.queue.service import Owner

    demo = builtin_checkpoints()[0].name
    users = [Owner("user:a", ("user:a",)), Owner("user:b", ("user:b",))]

    def job(seed: int) -> GenerationRequest:
        return GenerationRequest(prompt="a red circle on a blue background", checkpoint=demo, steps=steps, width=64,
                                 height=64, seed=seed, sampler="Euler a", save_images=False)

    for worker in range(ctx.jobs.generation_workers()):  # warm every worker up (model loaded)
        ctx.submit(job(worker), users[worker % 2])
    for warm in ctx.jobs.jobs_of("user:a") + ctx.jobs.jobs_of("user:b"):
        warm.result(600)
    start = time.perf_counter()
    queued = [ctx.submit(job(100 + n), users[n % 2]) for n in range(jobs)]
    for item in queued:
        item.result(3600)
    return jobs / ((time.perf_counter() - start) / 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    import torch

    cores = os.cpu_count() or 2
    work = work_dir("queue-throughput")
    models = work / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}

    def in_process(label: str, devices: str, threads: int) -> None:
        torch.set_num_threads(threads)
        ctx = make_context(models, work / "outputs", precision="fp32", devices=devices)
        try:
            results[label] = _run(ctx, args.jobs, args.steps)
        finally:
            ctx.close()
        print(f"{label:<36} {results[label]:6.1f} pictures/min", flush=True)

    in_process(f"in-process, 1 worker x {cores} threads", "", cores)
    in_process("in-process, 2 workers x 1 thread", "cpu,cpu", 1)
    if not args.no_ray:
        import ray

        for workers, threads in ((1, cores), (2, max(1, cores // 2))):
            ray.init(address="local", num_cpus=max(2, workers), include_dashboard=False, log_to_driver=False,
                     namespace="atelier-bench")
            ctx = make_context(models, work / "outputs", precision="fp32", ray="auto", ray_workers=workers,
                               worker_threads=threads)
            try:
                deadline = time.monotonic() + 300
                while ctx.jobs.generation_workers() < workers:
                    assert time.monotonic() < deadline, "the Ray workers did not start"
                    time.sleep(0.5)
                label = f"Ray, {workers} worker{'s' if workers > 1 else ''} x {threads} " + \
                    ("threads" if threads > 1 else "thread")
                results[label] = _run(ctx, args.jobs, args.steps)
                print(f"{label:<36} {results[label]:6.1f} pictures/min", flush=True)
            finally:
                ctx.close()
                ray.shutdown()
    pairs = (("in-process", f"in-process, 1 worker x {cores} threads", "in-process, 2 workers x 1 thread"),
             ("Ray", f"Ray, 1 worker x {cores} threads", f"Ray, 2 workers x {max(1, cores // 2)} thread"))
    ratios = [f"{kind}: {results[two] / results[one]:.2f}" for kind, one, two in pairs
              if one in results and two in results]
    print(f"\n{args.jobs} jobs of {args.steps} steps at 64x64 from 2 users, {cores} cores; ratio 2 workers / 1 "
          f"worker: {', '.join(ratios)}")


if __name__ == "__main__":
    main()
