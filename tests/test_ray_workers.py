"""Workers on a Ray cluster that the tests start themselves: 2 CPU workers with 1 torch thread each, on the
built-in demo model. Each worker is a Ray actor (its own process) with its own pipeline manager; pictures come
back as PNG bytes and the head saves them. The cluster starts once for the module (about 30 s)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from tests.conftest import make_models_dir
from webui.context import BUILTIN_DIR
from webui.pipelines.request import GenerationRequest
from webui.queue.service import Owner

ray = pytest.importorskip("ray")

DEMO = BUILTIN_DIR / "atelier-demo.safetensors"
DEMO_NAME = "builtin/atelier-demo.safetensors"
SHAPES = "a red circle on a blue background"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DEMO.exists(), reason="built-in demo model not built")]


def request(seed: int, steps: int = 8, **fields) -> GenerationRequest:
    given = {"save_images": False, "checkpoint": DEMO_NAME, **fields}
    return GenerationRequest(prompt=SHAPES, steps=steps, width=64, height=64, seed=seed, sampler="Euler a", **given)


def user(name: str) -> Owner:
    return Owner(f"user:{name}", (f"user:{name}",))


def _until(predicate, timeout: float, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_files):
    """A local Ray cluster with two CPUs, and a head whose generations all run on two Ray workers."""
    from webui.config import load_settings
    from webui.context import AppContext

    root = tmp_path_factory.mktemp("ray")
    models = make_models_dir(root, tiny_files, ["sd1"])
    # address="local": a new cluster of our own, even when `ray start` left one (or its address file) behind
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="atelier-tests", log_to_driver=False)
    settings = load_settings({"settings_file": root / "settings.json", "models_dir": models,
                              "outputs_dir": root / "outputs", "extensions_dir": root / "extensions", "device": "cpu",
                              "precision": "fp32", "ram_cache_bytes": 2**30, "ray": "auto", "ray_workers": 2,
                              "worker_threads": 1, "preview_every_n_steps": 2}, env={})
    ctx = AppContext.create(settings)
    try:
        _until(lambda: ctx.jobs.generation_workers() == 2, timeout=240, every=0.5)
        yield ctx
    finally:
        ctx.close()
        ray.shutdown()


def _worker(ctx, name):
    return ctx.jobs.worker(name)


def test_the_pixels_are_those_of_the_in_process_engine(cluster):
    import torch

    from webui.pipelines.generate import generate

    ctx = cluster
    same = request(3)
    remote = ctx.run_job(same, owner=user("alice"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as many as each worker has: the same arithmetic
    try:
        local = generate(ctx.manager, same)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.asarray(remote.images[0]), np.asarray(local.images[0]))
    assert remote.infotexts == local.infotexts and remote.seeds == [3]


def test_two_users_jobs_run_on_different_workers_at_the_same_time(cluster):
    ctx = cluster
    alice = ctx.submit(request(11, steps=60), user("alice"))
    bob = ctx.submit(request(12, steps=60), user("bob"))
    a, b = alice.result(300), bob.result(300)
    assert alice.worker != bob.worker and {alice.worker, bob.worker} <= {"ray-0", "ray-1", "ray-2", "ray-3"}
    assert alice.started < bob.finished and bob.started < alice.finished, "the two jobs overlapped in time"
    assert a.seeds == [11] and b.seeds == [12]


def test_interrupt_and_previews_reach_a_remote_job(cluster):
    ctx = cluster
    job = ctx.submit(request(21, steps=150, batch_count=3), user("alice"))
    _until(lambda: job.progress.step >= 4, timeout=120)
    _until(lambda: job.progress.preview is not None, timeout=60)  # relayed from the actor, every 2 steps
    started = time.monotonic()
    assert ctx.jobs.interrupt("user:alice")
    result = job.result(120)
    assert time.monotonic() - started < 10, "stopped within a few steps, not after 450"
    assert result.interrupted and len(result.images) <= 1 and job.progress.state == "interrupted"


def test_a_job_for_the_checkpoint_loaded_on_a_worker_goes_to_that_worker(cluster):
    ctx = cluster
    load = ctx.submit_load("sd1.safetensors", user("carol"))
    assert load.result(120) == "sd1"
    loaded_on = load.worker
    assert "sd1.safetensors" in _worker(ctx, loaded_on).inventory().loaded
    for seed in (31, 32):
        job = ctx.submit(request(seed, steps=2, checkpoint="sd1.safetensors"), user("carol"))
        assert job.result(120).model_name == "sd1" and job.worker == loaded_on


def test_killing_a_worker_mid_job_finishes_the_job_on_the_other_with_one_picture(cluster):
    ctx = cluster
    job = ctx.submit(request(77, steps=120, save_images=True), user("dave"))
    _until(lambda: job.state == "running" and job.progress.step >= 3, timeout=120)
    doomed = job.worker
    os.kill(_worker(ctx, doomed).pid, signal.SIGKILL)
    result = job.result(300)
    assert job.worker != doomed and job.attempts == 2
    assert any(f"{doomed} was lost" in w for w in result.warnings), result.warnings
    saved = list((ctx.settings.outputs_dir / "txt2img-images").rglob("*-77.png"))
    assert len(saved) == 1 and result.paths == saved, "one picture, saved once, by the head"
    # The pool replaces the lost worker, which joins while the studio serves.
    _until(lambda: ctx.jobs.generation_workers() == 2 and doomed not in [w.name for w in ctx.jobs.workers()],
           timeout=240, every=0.5)
