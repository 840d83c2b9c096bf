"""Checkpoint swaps do not leak (issue 8, item 15): swaps among three SD 1.5-shaped checkpoints with a RAM
budget of two leave RSS within 5% of where it was after swap 5.

The checkpoints are full-size (random weights, ~2 GB each in fp16), written once into benchmarks/_work/memory
(the same files ``benchmarks.engine_memory`` uses; only shapes and layout matter, so later runs reuse them
instead of spending half a minute writing 6 GB). The budget is two and a half files' worth, so two loaded
checkpoints fit and a third never does, without a probe load to measure one first. Every swap here is a cold
load (the cycle of three always evicts the next one), so 15 loads after the baseline show a leak of even 1% of
a checkpoint per load; the 50-swap run is ``benchmarks.engine_memory --cycles 50``.
"""

from __future__ import annotations

import gc

import pytest

from benchmarks.common import make_context, rss_bytes, work_dir
from benchmarks.random_checkpoints import write_random_sd15

pytestmark = pytest.mark.slow

SWAPS = 20


@pytest.fixture(scope="module")
def three_checkpoints():
    models = work_dir("memory") / "models"
    for i in range(3):
        write_random_sd15(models / "Stable-diffusion" / f"random-{i}.safetensors", seed=i)
    return models


def test_twenty_swaps_with_a_budget_of_two_do_not_grow_memory(three_checkpoints, tmp_path):
    one_file = (three_checkpoints / "Stable-diffusion" / "random-0.safetensors").stat().st_size
    gc.collect()
    budget = int(2.5 * one_file)
    ctx = make_context(three_checkpoints, tmp_path / "outputs", precision="fp16", ram_cache_bytes=budget)
    names = ["random-0", "random-1", "random-2"]
    after: dict[int, int] = {}
    for swap in range(1, SWAPS + 1):
        ctx.manager.load(names[swap % 3])
        assert len(ctx.manager.cache.keys()) == min(swap, 2), "the budget holds two checkpoints, not three"
        after[swap] = rss_bytes()
    growth = (after[SWAPS] - after[5]) / after[5]
    print(f"RSS after swap 5: {after[5] / 2**30:.2f} GiB, after swap {SWAPS}: {after[SWAPS] / 2**30:.2f} GiB "
          f"({growth * 100:+.2f}%)")
    assert growth <= 0.05
    ctx.close()
