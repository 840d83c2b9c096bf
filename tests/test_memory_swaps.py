"""Checkpoint swaps do not leak (issue 8, item 15): 50 swaps among three SD 1.5-shaped checkpoints with a
RAM budget of two leave RSS within 5% of where it was after swap 5.

The checkpoints are full-size (random weights, ~2 GB each in fp16), written once per test run.
"""

from __future__ import annotations

import gc

import pytest

from benchmarks.common import make_context, rss_bytes
from benchmarks.random_checkpoints import write_random_sd15

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    models = tmp_path_factory.mktemp("sd15-shaped") / "models"
    for i in range(3):
        write_random_sd15(models / "Stable-diffusion" / f"random-{i}.safetensors", seed=i)
    return models


def test_fifty_swaps_with_a_budget_of_two_do_not_grow_memory(three_checkpoints, tmp_path):
    probe = make_context(three_checkpoints, tmp_path / "outputs", precision="fp16")
    one = probe.manager.load("random-0").nbytes
    probe.close()
    del probe
    gc.collect()
    ctx = make_context(three_checkpoints, tmp_path / "outputs", precision="fp16", ram_cache_bytes=2 * one)
    names = ["random-0", "random-1", "random-2"]
    after: dict[int, int] = {}
    for swap in range(1, 51):
        ctx.manager.load(names[swap % 3])
        assert len(ctx.manager.cache.keys()) <= 2, "the budget holds two checkpoints"
        after[swap] = rss_bytes()
    growth = (after[50] - after[5]) / after[5]
    print(f"RSS after swap 5: {after[5] / 2**30:.2f} GiB, after swap 50: {after[50] / 2**30:.2f} GiB "
          f"({growth * 100:+.2f}%)")
    assert growth <= 0.05
    ctx.close()
