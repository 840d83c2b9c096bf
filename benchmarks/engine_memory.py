"""Memory benchmark: peak RSS while cycling 30 times through 3 full-size SD 1.5-shaped checkpoints
with a RAM cache budget of 2 checkpoints.

Pass: peak < baseline + budget + 1.1 x one checkpoint, and RSS at cycle 30 within 5% of cycle 5.
"""

from __future__ import annotations

import argparse
import gc

from benchmarks.common import PeakRss, gib, make_context, rss_bytes, work_dir
from benchmarks.random_checkpoints import write_random_sd15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    args = parser.parse_args()
    work = work_dir("memory")
    models = work / "models"
    names = [f"random-{i}" for i in range(3)]
    for i, name in enumerate(names):
        write_random_sd15(models / "Stable-diffusion" / f"{name}.safetensors", seed=i)

    # The size of one loaded checkpoint as the cache counts it (parameters and buffers).
    probe = make_context(models, work / "outputs", precision=args.precision)
    one = probe.manager.load(names[0]).nbytes
    probe.manager.cache.clear()
    probe.close()
    del probe
    budget = 2 * one
    ctx = make_context(models, work / "outputs", precision=args.precision, ram_cache_bytes=budget)
    gc.collect()
    baseline = rss_bytes()
    print(f"one checkpoint = {gib(one)} as {ctx.manager.dtype}; budget = {gib(budget)}; baseline RSS = {gib(baseline)}")
    per_cycle = []
    with PeakRss() as peak:
        for cycle in range(1, args.cycles + 1):
            for name in names:
                ctx.manager.load(name)
            per_cycle.append(rss_bytes())
            if cycle in (1, 5, 10, 20, 30) or cycle == args.cycles:
                print(f"cycle {cycle:2d}: RSS {gib(per_cycle[-1])}, peak so far {gib(peak.peak)}")
    limit = baseline + budget + 1.1 * one
    growth = (per_cycle[-1] - per_cycle[4]) / per_cycle[4] if len(per_cycle) >= 5 else 0.0
    print(f"peak RSS {gib(peak.peak)} vs limit {gib(limit)} -> {'PASS' if peak.peak < limit else 'FAIL'}")
    print(f"growth cycle 5 -> {args.cycles}: {growth * 100:+.2f}% -> {'PASS' if growth <= 0.05 else 'FAIL'}")
    ctx.close()


if __name__ == "__main__":
    main()
