"""REST API overhead: /sdapi/v1/txt2img over HTTP on the built-in demo model vs the engine called in-process
with the same request (same pixels), and /progress latency while a job runs.

Targets: API/engine <= 1.10x; progress p95 <= 100 ms. The server is the real one (Gradio app with the API
mounted, jobs through the UI's queue) in this process; the two sides alternate so machine noise hits both.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import threading
import time

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import make_context, work_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="the demo model's native size")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--polls", type=int, default=300, help="progress requests timed while a job runs")
    args = parser.parse_args()

    from webui.context import builtin_checkpoints
    from webui.pipelines.generate import generate
    from webui.pipelines.request import GenerationRequest
    from webui.ui.app import launch

    work = work_dir("api")
    models = work / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    ctx = make_context(models, work / "outputs", precision="fp32", autolaunch=False, port=0)
    demo_name = builtin_checkpoints()[0].name
    demo = launch(ctx, api=True, server_port=None, prevent_thread_lock=True, quiet=True, inbrowser=False)
    url = demo.local_url.rstrip("/") + "/sdapi/v1"
    body = {"prompt": "a red circle on a blue background", "steps": args.steps, "width": args.size,
            "height": args.size, "seed": 1234, "sampler_name": "Euler a", "cfg_scale": 7.0,
            "batch_size": args.batch_size, "override_settings": {"sd_model_checkpoint": demo_name}}
    request = GenerationRequest(prompt=body["prompt"], checkpoint=demo_name, sampler="Euler a", steps=args.steps,
                                cfg_scale=7.0, width=args.size, height=args.size, seed=1234,
                                batch_size=args.batch_size, save_images=False)
    client = httpx.Client(timeout=600)

    def api() -> list[np.ndarray]:
        reply = client.post(url + "/txt2img", json=body)
        reply.raise_for_status()
        return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in reply.json()["images"]]

    def engine() -> list[np.ndarray]:
        return [np.asarray(im.convert("RGB")) for im in generate(ctx.manager, request).images]

    same = all(np.array_equal(a, b) for a, b in zip(api(), engine(), strict=True))  # also warms both up
    api_times, engine_times = [], []
    for _ in range(args.repeats):
        for fn, times in ((api, api_times), (engine, engine_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    t_api, t_engine = statistics.median(api_times), statistics.median(engine_times)
    print(f"engine in-process: {t_engine:.3f} s, API over HTTP: {t_api:.3f} s (median of {args.repeats}, "
          f"{args.steps} steps at {args.size}px, batch {args.batch_size}); fastest: {min(engine_times):.3f} s vs "
          f"{min(api_times):.3f} s")
    print(f"ratio API/engine = {t_api / t_engine:.3f} (fastest runs: {min(api_times) / min(engine_times):.3f}; "
          f"target <= 1.10); identical pixels: {same}")

    # /progress while a long job runs, polled as a client's progress bar does (with the preview).
    long_job = {**body, "steps": 150, "n_iter": 100}
    done = threading.Event()

    def run_long() -> None:
        with httpx.Client(timeout=600) as other:
            other.post(url + "/txt2img", json=long_job)
        done.set()

    worker = threading.Thread(target=run_long)
    worker.start()
    poller = httpx.Client(timeout=60)
    while poller.get(url + "/progress").json()["state"]["sampling_step"] == 0:
        time.sleep(0.01)
    latencies, previews = [], 0
    for _ in range(args.polls):
        start = time.perf_counter()
        progress = poller.get(url + "/progress").json()
        latencies.append(time.perf_counter() - start)
        previews += progress["current_image"] is not None
        time.sleep(0.02)
    running = not done.is_set()
    poller.post(url + "/interrupt")
    worker.join()
    latencies.sort()
    p50, p95 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95) - 1]
    print(f"progress while a job runs: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max "
          f"{latencies[-1] * 1000:.1f} ms over {len(latencies)} polls ({previews} with a preview; job still "
          f"running at the end: {running}) (target p95 <= 100 ms)")
    client.close()
    poller.close()
    demo.close()
    ctx.close()


if __name__ == "__main__":
    main()
