"""The job queue with real engines: several in-process workers (``--devices cpu,cpu``), fair turns, cancel,
model affinity, and the same pixels on every worker as in-process. Tiny real models on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_models_dir
from webui.pipelines.request import GenerationRequest
from webui.queue.service import Owner


def request(seed: int = 1, steps: int = 3, checkpoint: str = "sd1.safetensors", **fields) -> GenerationRequest:
    given = {"save_images": False, **fields}
    return GenerationRequest(prompt=f"job {seed}", checkpoint=checkpoint, steps=steps, width=64, height=64, seed=seed,
                             sampler="Euler a", **given)


def user(name: str) -> Owner:
    return Owner(f"user:{name}", (f"user:{name}",))


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, tiny_files):
    """One head with two in-process CPU workers, each with its own pipeline manager."""
    from webui.config import load_settings
    from webui.context import AppContext

    root = tmp_path_factory.mktemp("workers")
    models = make_models_dir(root, tiny_files, ["sd1", "sd1b"])
    settings = load_settings({"settings_file": root / "settings.json", "models_dir": models,
                              "outputs_dir": root / "outputs", "extensions_dir": root / "extensions", "device": "cpu",
                              "precision": "fp32", "include_builtin": False, "devices": "cpu,cpu",
                              "ram_cache_bytes": 2**30}, env={})
    ctx = AppContext.create(settings)
    yield ctx
    ctx.close()


@pytest.mark.slow
def test_two_users_jobs_run_on_different_workers_at_the_same_time(two_workers):
    ctx = two_workers
    assert [w.name for w in ctx.jobs.workers()] == ["cpu#0", "cpu#1"]
    alice = ctx.submit(request(1, steps=40), user("alice"))
    bob = ctx.submit(request(2, steps=40), user("bob"))
    a, b = alice.result(120), bob.result(120)
    assert {alice.worker, bob.worker} == {"cpu#0", "cpu#1"}
    assert alice.started < bob.finished and bob.started < alice.finished, "the two jobs overlapped in time"
    assert a.seeds == [1] and b.seeds == [2] and "Seed: 1," in a.infotexts[0]


@pytest.mark.slow
def test_every_worker_makes_the_in_process_pixels(two_workers):
    from webui.pipelines.generate import generate

    ctx = two_workers
    same = request(7, steps=4)
    jobs = [ctx.submit(same, user("alice")), ctx.submit(same, user("bob"))]
    results = [job.result(120) for job in jobs]
    assert {job.worker for job in jobs} == {"cpu#0", "cpu#1"}
    reference = np.asarray(generate(ctx.manager, same).images[0])
    for result in results:
        assert np.array_equal(np.asarray(result.images[0]), reference)
        assert result.infotexts[0] == results[0].infotexts[0]


@pytest.mark.slow
def test_a_job_goes_to_the_worker_that_has_its_checkpoint_loaded(two_workers):
    ctx = two_workers
    for worker_name in ("cpu#0", "cpu#1"):  # each worker holds a different model
        wanted = "sd1.safetensors" if worker_name == "cpu#0" else "sd1b.safetensors"
        manager = ctx.jobs.worker(worker_name).manager  # type: ignore[union-attr]
        manager.cache.clear()
        manager.load(wanted)
    for _ in range(2):
        for checkpoint, expected in (("sd1b.safetensors", "cpu#1"), ("sd1.safetensors", "cpu#0")):
            job = ctx.submit(request(3, checkpoint=checkpoint), user("carol"))
            assert job.result(120).model_name == checkpoint.removesuffix(".safetensors")
            assert job.worker == expected, (checkpoint, job.worker)


@pytest.mark.slow
def test_fair_turns_and_a_cancelled_job_never_runs(make_context):
    ctx = make_context(["sd1"])  # the default: one in-process worker
    outputs = ctx.settings.outputs_dir / "txt2img-images"
    first = ctx.submit(request(100, steps=30, save_images=True), user("alice"))
    alice = [first] + [ctx.submit(request(101 + i, save_images=True), user("alice")) for i in range(9)]
    bob = ctx.submit(request(200, save_images=True), user("bob"))
    doomed = alice[5]
    assert ctx.jobs.cancel(doomed.id, "user:alice")
    results = [job.result(300) for job in alice + [bob]]
    assert bob.started <= alice[1].started, "Bob's one job started no later than Alice's second"
    assert results[5].interrupted and results[5].images == [] and "Cancelled" in results[5].warnings[0]
    seeds = sorted(int(p.stem.split("-")[1]) for p in outputs.rglob("*.png"))
    assert seeds == sorted([100 + i for i in range(10) if i != 5] + [200]), "the cancelled job saved nothing"


def test_devices_flag_starts_one_worker_per_device():
    from webui.cli import _serve_parser, settings_from_args

    args = _serve_parser().parse_args(["--devices", "cpu,cpu", "--ray-workers", "3", "--worker-threads", "1"])
    settings = settings_from_args(args)
    assert (settings.devices, settings.ray, settings.ray_workers, settings.worker_threads) == ("cpu,cpu", "", 3, 1)
    assert settings_from_args(_serve_parser().parse_args(["--ray"])).ray == "auto"
    assert settings_from_args(_serve_parser().parse_args(["--ray", "10.0.0.2:6379"])).ray == "10.0.0.2:6379"
