"""Several people at once (issue 8, items 12 and 14), on loopback, bounded in count and time:

- 8 clients x 3 jobs, half through the REST API and half through the page's Gradio endpoint, on two
  checkpoints: all 24 finish, each with its own prompt, seed and model in its infotext; model lists,
  progress and PNG Info answer while jobs run.
- A checkpoint switch asked for while a job runs: the job finishes on its own model, the switch after.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import statistics
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import make_models_dir

pytestmark = pytest.mark.slow  # live servers under load from 8 clients


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    from webui.config import load_settings
    from webui.context import AppContext
    from webui.ui.app import launch

    root = tmp_path_factory.mktemp("load")
    models = make_models_dir(root, tiny_files, ["sd1", "sd1b"])
    settings = load_settings({"settings_file": root / "settings.json", "models_dir": models,
                              "outputs_dir": root / "outputs", "extensions_dir": root / "extensions",
                              "device": "cpu", "precision": "fp32", "include_builtin": False, "autolaunch": False,
                              "port": 0}, env={})
    ctx = AppContext.create(settings)
    demo = launch(ctx, api=True, server_port=None, prevent_thread_lock=True, quiet=True)
    yield ctx, demo.local_url.rstrip("/")
    demo.close()
    ctx.close()


def _api_job(url: str, prompt: str, seed: int, checkpoint: str) -> tuple[str, str]:
    with httpx.Client(base_url=url + "/sdapi/v1", timeout=600) as api:
        reply = api.post("/txt2img", json={"prompt": prompt, "seed": seed, "steps": 6, "width": 64, "height": 64,
                                            "override_settings": {"sd_model_checkpoint": checkpoint}})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
        return image.info["parameters"], json.loads(body["info"])["infotexts"][0]


def _ui_job(url: str, prompt: str, seed: int, checkpoint: str) -> tuple[str, str]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    gallery, info, *_ = client.predict(checkpoint, prompt, "", "Euler a", "Automatic", 6, 64, 64, 1, 1, 7.0, seed, 1,
                                       [], "Automatic", api_name="/txt2img")
    shown = html.unescape(re.sub(r"<[^>]+>", "", info))  # the page shows the infotext as escaped HTML
    return Image.open(gallery[0]["image"]).info["parameters"], shown


def test_eight_clients_three_jobs_each_get_their_own_pictures(server):
    ctx, url = server
    results: dict[tuple[int, int], tuple[str, str]] = {}
    errors: list[BaseException] = []
    latencies: list[float] = []
    answered_mid_job = []
    stop = threading.Event()

    def client(number: int) -> None:
        try:
            for job in range(3):
                prompt, seed = f"client {number} job {job}", 1000 * number + job
                checkpoint = "sd1.safetensors" if (number + job) % 2 else "sd1b.safetensors"
                run = _api_job if number % 2 else _ui_job
                results[(number, job)] = run(url, prompt, seed, checkpoint)
        except BaseException as exc:  # reported below with the others
            errors.append(exc)

    def poll() -> None:
        png = io.BytesIO()
        Image.new("RGB", (8, 8)).save(png, "PNG")
        png_b64 = base64.b64encode(png.getvalue()).decode()
        with httpx.Client(base_url=url + "/sdapi/v1", timeout=60) as api:
            while not stop.is_set():
                for method, path, body in (("GET", "/sd-models", None), ("GET", "/progress", None),
                                           ("POST", "/png-info", {"image": png_b64})):
                    start = time.perf_counter()
                    reply = api.request(method, path, json=body)
                    latencies.append(time.perf_counter() - start)
                    assert reply.status_code == 200
                    if path == "/progress" and reply.json()["state"]["job_count"] > 0:
                        answered_mid_job.append(True)
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    poller = threading.Thread(target=poll)
    poller.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    stop.set()
    poller.join()
    assert not errors, errors
    assert len(results) == 24
    for (number, job), (stored, shown) in results.items():
        checkpoint = "sd1" if (number + job) % 2 else "sd1b"
        assert stored == shown, "the PNG carries the infotext the client was shown"
        assert stored.startswith(f"client {number} job {job}\n"), stored
        assert f"Seed: {1000 * number + job}," in stored and f"Model: {checkpoint}," in stored
    assert answered_mid_job, "status requests were answered while jobs ran, not after them"
    latencies.sort()
    print(f"\n{len(latencies)} status / model-list / PNG-Info requests during the jobs: "
          f"median {statistics.median(latencies) * 1000:.0f} ms, p95 {latencies[int(len(latencies) * 0.95)] * 1000:.0f}"
          f" ms, max {latencies[-1] * 1000:.0f} ms (goal 500 ms)")


def test_a_checkpoint_switch_during_a_job_waits_for_it(server):
    _, url = server
    with httpx.Client(base_url=url + "/sdapi/v1", timeout=600) as api:
        assert api.post("/options", json={"sd_model_checkpoint": "sd1.safetensors"}).status_code == 200
        outcome: dict[str, dict] = {}

        def long_job() -> None:
            reply = api.post("/txt2img", json={"prompt": "long", "steps": 150, "width": 64, "height": 64})
            outcome["info"] = json.loads(reply.json()["info"])

        job = threading.Thread(target=long_job)
        job.start()
        while api.get("/progress").json()["state"]["sampling_step"] < 1:
            time.sleep(0.05)
        with httpx.Client(base_url=url + "/sdapi/v1", timeout=600) as other:
            switched = other.post("/options", json={"sd_model_checkpoint": "sd1b.safetensors"})
        assert switched.status_code == 200
        job.join()
        assert outcome["info"]["sd_model_name"] == "sd1", "the running job kept its model"
        assert api.get("/options").json()["sd_model_checkpoint"].startswith("sd1b.safetensors")
