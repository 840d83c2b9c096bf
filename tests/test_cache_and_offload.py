"""Cache policy (bytes, LRU, pins) and the offload decision, tested as pure logic."""

from __future__ import annotations

import pytest

from webui.models.cache import ModelCache
from webui.models.offload import GiB, MemoryNeeds, OffloadMode, choose_offload, step_up


def test_lru_eviction_by_bytes():
    evicted = []
    cache: ModelCache[str] = ModelCache(10, on_evict=lambda k, v: evicted.append(k))
    cache.put("a", "A", 4)
    cache.put("b", "B", 4)
    assert cache.get("a") == "A"  # a is now most recent
    cache.put("c", "C", 4)  # 12 > 10: evict least recently used = b
    assert evicted == ["b"] and cache.keys() == ["a", "c"]
    assert cache.total_bytes == 8


def test_make_room_before_a_load():
    cache: ModelCache[str] = ModelCache(10)
    cache.put("a", "A", 4)
    cache.put("b", "B", 4)
    cache.make_room(6)
    assert cache.keys() == ["b"]


def test_pinned_entries_are_never_evicted():
    cache: ModelCache[str] = ModelCache(5)
    cache.put("a", "A", 4)
    with cache.use("a"):
        cache.put("b", "B", 4)
        assert "a" in cache and "b" in cache  # over budget, but a is in use and b was just loaded
        assert not cache.evict("a")
    cache.make_room(1)
    assert "a" not in cache


def test_an_oversized_newcomer_stays():
    cache: ModelCache[str] = ModelCache(3)
    cache.put("big", "X", 10)
    assert cache.keys() == ["big"]


def test_budget_can_shrink():
    cache: ModelCache[str] = ModelCache(100)
    for key in "abc":
        cache.put(key, key, 30)
    cache.set_budget(60)
    assert cache.keys() == ["b", "c"]


SD15 = MemoryNeeds(model_bytes=int(2.0 * GiB), largest_component_bytes=int(1.6 * GiB), width=512, height=512,
                  batch_size=1)
SDXL = MemoryNeeds(model_bytes=int(6.5 * GiB), largest_component_bytes=int(4.8 * GiB), width=1024, height=1024,
                   batch_size=1)


@pytest.mark.parametrize(
    "needs, free_gib, mode",
    [
        (SD15, 24, OffloadMode.NONE),
        (SD15, 6, OffloadMode.NONE),
        (SD15, 3.0, OffloadMode.MODEL),
        (SD15, 1.5, OffloadMode.SEQUENTIAL),
        (SDXL, 24, OffloadMode.NONE),
        (SDXL, 8, OffloadMode.MODEL),
        (SDXL, 4, OffloadMode.SEQUENTIAL),
    ],
)
def test_offload_follows_free_vram(needs, free_gib, mode):
    assert choose_offload(needs, int(free_gib * GiB)).mode is mode


def test_no_accelerator_means_no_offload():
    assert choose_offload(SD15, None).mode is OffloadMode.NONE


def test_user_override_and_a1111_flags():
    assert choose_offload(SD15, 24 * GiB, "medvram").mode is OffloadMode.MODEL
    assert choose_offload(SD15, 24 * GiB, "lowvram").mode is OffloadMode.SEQUENTIAL
    assert choose_offload(SD15, 1 * GiB, "none").mode is OffloadMode.NONE


def test_large_images_tile_the_vae():
    big = MemoryNeeds(int(2 * GiB), int(1.6 * GiB), 2048, 2048, 1)
    assert choose_offload(big, 80 * GiB).vae_tiling
    assert not choose_offload(SD15, 24 * GiB).vae_tiling


def test_step_up_after_oom_goes_to_the_next_mode_and_ends():
    plan = choose_offload(SD15, 24 * GiB)
    seen = [plan.mode]
    while (plan := step_up(plan)) is not None:
        seen.append(plan.mode)
        assert plan.vae_tiling
    assert seen[-1] is OffloadMode.SEQUENTIAL and OffloadMode.MODEL in seen
