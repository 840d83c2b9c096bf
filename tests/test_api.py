"""The A1111-compatible REST API (/sdapi/v1), driven over HTTP as an A1111 client drives it.

A live server (the real Gradio app with --api) on tiny checkpoints and the built-in demo model; the demo
model draws real shapes at 64x64, so picture contents can be checked, and its jobs last long enough to
watch progress and interrupt them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from tests.conftest import make_models_dir
from webui.context import BUILTIN_DIR, BUILTIN_LABEL

ROOT = Path(__file__).resolve().parent.parent
DEMO_FILE = BUILTIN_DIR / "atelier-demo.safetensors"
SHAPES = "a red circle on a blue background"

pytestmark = pytest.mark.skipif(not DEMO_FILE.exists(), reason="built-in demo model not built")


@dataclass
class Server:
    ctx: Any
    demo: Any
    url: str  # http://127.0.0.1:PORT

    def client(self, auth: tuple[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/sdapi/v1", auth=auth, timeout=300)


def _start(root: Path, tiny_files: dict[str, Path], names: list[str], settings_overrides: dict | None = None,
           **launch_options: Any) -> Server:
    from webui.config import load_settings
    from webui.context import AppContext
    from webui.ui.app import launch

    models = make_models_dir(root, tiny_files, names)
    settings = load_settings(
        {"settings_file": root / "settings.json", "models_dir": models, "outputs_dir": root / "outputs",
         "device": "cpu", "precision": "fp32", "include_builtin": True, "autolaunch": False, "port": 0,
         **(settings_overrides or {})},
        env={},
    )
    ctx = AppContext.create(settings)
    demo = launch(ctx, api=True, server_port=None, prevent_thread_lock=True, quiet=True, inbrowser=False,
                  **launch_options)
    return Server(ctx, demo, demo.local_url.rstrip("/"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    """An open API (no credentials) over two tiny checkpoints and the demo model."""
    srv = _start(tmp_path_factory.mktemp("api"), tiny_files, ["sd1", "sd1b"])
    yield srv
    srv.demo.close()
    srv.ctx.close()


ALICE, BOB = ("alice", "wonder land:1"), ("bob", "builder")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, tiny_files):
    """--api-auth with two users; the UI itself has no sign-in."""
    from webui.auth import Credentials

    # Sign-in throttling is off here: this server is for checking every route's refusal, which makes many
    # failures in a row from one address (tests/test_attacks.py checks the throttling).
    srv = _start(tmp_path_factory.mktemp("api-auth"), tiny_files, ["sd1"],
                 settings_overrides={"signin_failures_before_lockout": 0}, api_credentials=Credentials((ALICE, BOB)))
    yield srv
    srv.demo.close()
    srv.ctx.close()


def b64(image: Image.Image, pnginfo: PngImagePlugin.PngInfo | None = None) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode()


def decode(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def demo_title(client: httpx.Client) -> str:
    return next(m["title"] for m in client.get("/sd-models").json() if m["filename"] == str(DEMO_FILE))


def on_demo(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    """A request body for the demo model (this request only, as A1111's override_settings does it)."""
    return {"prompt": SHAPES, "width": 64, "height": 64, "sampler_name": "Euler a",
            "override_settings": {"sd_model_checkpoint": demo_title(client)}, **fields}


def quick(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    """A two-step 64px txt2img on the current (tiny) model; its info."""
    reply = client.post("/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64, **fields})
    assert reply.status_code == 200, reply.text
    return json.loads(reply.json()["info"])


# ---------------------------------------------------------------------------------------------- generation
@pytest.mark.slow
def test_txt2img_returns_pngs_carrying_their_infotext_and_seeds_count_up(server):
    from tools.demo_model.shapes import classify

    with server.client() as api:
        reply = api.post("/txt2img", json=on_demo(api, steps=20, seed=1234, batch_size=2, n_iter=2))
        assert reply.status_code == 200, reply.text
        body = reply.json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [1234, 1235, 1236, 1237] and info["seed"] == 1234
    assert len(body["images"]) == len(info["infotexts"]) == 4
    assert info["all_prompts"] == [SHAPES] * 4 and (info["width"], info["height"]) == (64, 64)
    assert info["sampler_name"] == "Euler a" and info["steps"] == 20 and info["cfg_scale"] == 7.0
    for i, encoded in enumerate(body["images"]):
        image = decode(encoded)
        assert image.format == "PNG" and image.size == (64, 64)
        assert image.text["parameters"] == info["infotexts"][i]
        assert f"Seed: {1234 + i}," in info["infotexts"][i]
    assert classify(decode(body["images"][0]).convert("RGB")) == ("blue", "red", "circle")
    assert body["parameters"]["prompt"] == SHAPES and body["parameters"]["steps"] == 20
    # send_images=false answers without pictures; save_images=true writes A1111-style files.
    with server.client() as api:
        quiet = api.post("/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 7,
                                           "send_images": False, "save_images": True}).json()
    assert quiet["images"] == []
    saved = list((server.ctx.settings.outputs_dir / "txt2img-images").rglob("*-7.png"))
    assert len(saved) == 1 and "Seed: 7," in Image.open(saved[0]).text["parameters"]


def test_img2img_with_a_mask_changes_only_the_masked_region(server):
    init = Image.new("RGB", (64, 64), (20, 40, 200))
    init.paste((230, 30, 30), (8, 8, 56, 56))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    before = np.asarray(init, dtype=np.int16)
    # blurred mask reaches about 3 blur radii past the painted square; beyond that nothing may change
    outside = np.ones((64, 64), bool)
    outside[24 - 13:40 + 13, 24 - 13:40 + 13] = False
    inside = ~np.ones((64, 64), bool)
    inside[26:38, 26:38] = True
    with server.client() as api:
        for full_res in (False, True):  # "whole picture", and A1111's default "only masked"
            reply = api.post("/img2img", json=on_demo(
                api, prompt="a yellow star on a green background", init_images=[b64(init)], mask=b64(mask),
                mask_blur=4, inpainting_fill=1, inpaint_full_res=full_res, inpaint_full_res_padding=8,
                denoising_strength=1.0, steps=12, seed=3))
            assert reply.status_code == 200, reply.text
            info = json.loads(reply.json()["info"])
            after = np.asarray(decode(reply.json()["images"][0]).convert("RGB"), dtype=np.int16)
            assert np.array_equal(after[outside], before[outside]), f"inpaint_full_res={full_res}"
            assert np.abs(after[inside] - before[inside]).mean() > 20, f"inpaint_full_res={full_res}"
            assert "Mask blur: 4" in info["infotexts"][0] and "Denoising strength: 1," in info["infotexts"][0]
            assert reply.json()["parameters"]["init_images"] is None  # include_init_images is off


# ---------------------------------------------------------------------------------------------- models and options
def test_options_switch_the_checkpoint_and_sd_models_lists_titles(server):
    with server.client() as api:
        models = api.get("/sd-models").json()
        names = [m["model_name"] for m in models]
        assert names[:2] == ["sd1", "sd1b"] and "builtin/atelier-demo" in names
        assert all(m["filename"] and m["title"] for m in models)
        sd1b = next(m for m in models if m["model_name"] == "sd1b")
        assert api.post("/options", json={"sd_model_checkpoint": sd1b["title"]}).status_code == 200
        options = api.get("/options").json()
        # "name [hash]" once the hash is known (hashing runs in the background), as A1111 titles them
        assert options["sd_model_checkpoint"].startswith("sd1b.safetensors")
        titles = [m["title"] for m in api.get("/sd-models").json()]
        # The hash may arrive between the two requests: compare the names before it.
        assert options["sd_model_checkpoint"].split(" [")[0] in [t.split(" [")[0] for t in titles]
        assert quick(api)["sd_model_name"] == "sd1b"
        # override_settings apply to that request only
        other = quick(api, override_settings={"sd_model_checkpoint": "sd1.safetensors", "CLIP_stop_at_last_layers": 2})
        assert other["sd_model_name"] == "sd1" and "Clip skip: 2" in other["infotexts"][0]
        assert api.get("/options").json()["sd_model_checkpoint"].startswith("sd1b.safetensors")
        assert api.get("/options").json()["CLIP_stop_at_last_layers"] == 1
        # an unknown checkpoint changes nothing
        refused = api.post("/options", json={"sd_model_checkpoint": "nope.safetensors"})
        assert refused.status_code == 422 and refused.json()["field"] == "sd_model_checkpoint"
        assert api.get("/options").json()["sd_model_checkpoint"].startswith("sd1b.safetensors")


def test_options_persist_settings_like_the_settings_tab(server):
    settings_file = server.ctx.settings.settings_file
    with server.client() as api:
        assert api.post("/options", json={"samples_format": "webp", "CLIP_stop_at_last_layers": 2,
                                          "some_option_of_another_version": 1}).status_code == 200
        options = api.get("/options").json()
        assert options["samples_format"] == "webp" and options["CLIP_stop_at_last_layers"] == 2
        stored = json.loads(settings_file.read_text())
        assert stored["save_format"] == "webp" and stored["default_clip_skip"] == 2
        assert "Clip skip: 2" in quick(api)["infotexts"][0]
        bad = api.post("/options", json={"samples_format": "bmp"})
        assert bad.status_code == 422 and bad.json()["field"] == "samples_format"
        bad = api.post("/options", json={"sd_vae_decode_method": "Fast"})  # A1111's: Full or TAESD
        assert bad.status_code == 422 and bad.json()["field"] == "sd_vae_decode_method"
        assert api.get("/options").json()["sd_vae_decode_method"] == "Full"
        assert api.post("/options", json={"samples_format": "png", "CLIP_stop_at_last_layers": 1}).status_code == 200
    assert json.loads(settings_file.read_text())["save_format"] == "png"


def test_unipc_options_are_a1111_options_and_per_request_overrides(server):
    """A1111's uni_pc_* options: /options shows and saves them, override_settings applies them to one request's
    UniPC picture, and a variant Atelier does not run is refused by name."""
    settings_file = server.ctx.settings.settings_file

    def picture(api: httpx.Client, **fields: Any) -> np.ndarray:
        reply = api.post("/txt2img", json={"prompt": "x", "steps": 6, "width": 64, "height": 64, "seed": 3,
                                           "sampler_name": "UniPC", **fields})
        assert reply.status_code == 200, reply.text
        return np.asarray(decode(reply.json()["images"][0]), dtype=np.int16)

    with server.client() as api:
        options = api.get("/options").json()
        assert (options["uni_pc_variant"], options["uni_pc_skip_type"], options["uni_pc_order"],
                options["uni_pc_lower_order_final"]) == ("bh1", "time_uniform", 3, True)
        plain = picture(api)
        assert np.array_equal(picture(api, override_settings={"uni_pc_variant": "bh1", "uni_pc_order": 3.0}), plain)
        bh2 = picture(api, override_settings={"uni_pc_variant": "bh2"})
        assert not np.array_equal(bh2, plain), "the override reaches UniPC"
        assert api.get("/options").json()["uni_pc_variant"] == "bh1", "for that request only"
        refused = api.post("/options", json={"uni_pc_variant": "vary_coeff"})
        assert refused.status_code == 422 and refused.json()["field"] == "uni_pc_variant"
        assert "vary_coeff" in refused.json()["detail"][0]["msg"]
        assert api.post("/options", json={"uni_pc_order": 51}).json()["field"] == "uni_pc_order"
        assert api.post("/options", json={"uni_pc_variant": "bh2", "uni_pc_order": 2.0}).status_code == 200
        options = api.get("/options").json()
        assert (options["uni_pc_variant"], options["uni_pc_order"]) == ("bh2", 2)
        stored = json.loads(settings_file.read_text())
        assert (stored["uni_pc_variant"], stored["uni_pc_order"]) == ("bh2", 2)
        assert not np.array_equal(picture(api), plain), "the saved option is every request's default"
        assert np.array_equal(picture(api, override_settings={"uni_pc_order": 2}), picture(api))
        assert api.post("/options", json={"uni_pc_variant": "bh1", "uni_pc_order": 3}).status_code == 200
        assert np.array_equal(picture(api), plain)


def test_listings_have_a1111_shapes(server, tmp_path):
    lora_dir = server.ctx.settings.models_dir / "Lora"
    lora_dir.mkdir(exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, str(lora_dir / "inky.safetensors"),
              metadata={"ss_output_name": "ink_style", "ss_tag_frequency": '{"a": {"b": 1}}'})
    emb_dir = server.ctx.settings.models_dir / "embeddings"
    emb_dir.mkdir(exist_ok=True)
    save_file({"emb_params": torch.zeros(3, 768)}, str(emb_dir / "badhands.safetensors"))
    (emb_dir / "old.pt").write_bytes(b"not opened")
    styles = server.ctx.settings.settings_file.parent / "styles.csv"
    styles.write_text("name,prompt,negative_prompt\nink,{prompt} in ink,colour\n")
    with server.client() as api:
        samplers = api.get("/samplers").json()
        dpm = {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m", "dpmpp_2m"], "options": {"scheduler": "karras"}}
        assert dpm in samplers
        schedulers = api.get("/schedulers").json()
        assert [s["label"] for s in schedulers][:3] == ["Automatic", "Uniform", "Karras"]  # A1111's order
        assert {"name": "align_your_steps", "label": "Align Your Steps"}.items() <= schedulers[7].items()
        assert {s["name"] for s in schedulers} >= {"kl_optimal", "polyexponential", "turbo", "simple", "normal"}
        assert {"name": "DPM++ 3M SDE", "aliases": ["k_dpmpp_3m_sde", "dpmpp_3m_sde"],
                "options": {"scheduler": "exponential", "discard_next_to_last_sigma": "True"}} in samplers
        assert [u["name"] for u in api.get("/upscalers").json()] == ["None", "Lanczos", "Nearest", "atelier-demo-2x"]
        loras = api.get("/loras").json()
        assert loras == [{"name": "inky", "alias": "ink_style", "path": str(lora_dir / "inky.safetensors"),
                          "metadata": {"ss_output_name": "ink_style", "ss_tag_frequency": {"a": {"b": 1}}}}]
        assert api.post("/refresh-loras").status_code == 200
        embeddings = api.get("/embeddings").json()
        assert embeddings["loaded"]["badhands"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                    "shape": 768, "vectors": 3}
        assert embeddings["loaded"]["old"]["shape"] is None and embeddings["skipped"] == {}
        assert api.get("/prompt-styles").json() == [{"name": "ink", "prompt": "{prompt} in ink",
                                                    "negative_prompt": "colour"}]
        styled = quick(api, prompt="a cat", styles=["ink"])
        assert styled["prompt"] == "a cat in ink" and styled["negative_prompt"] == "colour"
        assert api.get("/sd-vae").json() == []
        memory = api.get("/memory").json()
        assert memory["ram"]["total"] >= memory["ram"]["used"] > 0 and "error" in memory["cuda"]
        assert api.post("/refresh-checkpoints").status_code == 200
    styles.unlink()


def test_png_info_reads_an_a1111_png(server):
    text = ("a cat in a hat\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 123, "
            "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.6.0")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    info.add_text("Software", "AUTOMATIC1111")
    with server.client() as api:
        reply = api.post("/png-info", json={"image": "data:image/png;base64," + b64(Image.new("RGB", (8, 8)), info)})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["info"] == text and body["items"] == {"Software": "AUTOMATIC1111"}
        params = body["parameters"]
        assert params["Prompt"] == "a cat in a hat" and params["Negative prompt"] == "ugly"
        assert (params["Sampler"], params["Schedule type"], params["Seed"]) == ("DPM++ 2M", "Karras", 123)
        assert (params["Size-1"], params["Size-2"]) == (512, 768)
        plain = api.post("/png-info", json={"image": b64(Image.new("RGB", (8, 8)))}).json()
        assert plain["info"] == "" and plain["parameters"] == {}


# ---------------------------------------------------------------------------------------------- progress, interrupt
def _post_in_thread(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[threading.Thread, dict]:
    out: dict[str, Any] = {}

    def run() -> None:
        reply = client.post(path, json=body)
        out["reply"], out["done"] = reply, time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _wait_for(predicate, timeout: float = 60.0, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_progress_reports_a_rising_fraction_and_previews(server):
    with server.client() as api, server.client() as poller:
        assert api.post("/options", json={"show_progress_every_n_steps": 1}).status_code == 200
        thread, out = _post_in_thread(api, "/txt2img", on_demo(api, steps=40, seed=5))
        seen, previews, states = [], [], []
        while thread.is_alive():
            body = poller.get("/progress").json()
            if body["state"]["job_count"]:
                seen.append(body["progress"])
                states.append(body["state"])
                if body["current_image"]:
                    previews.append(body["current_image"])
            time.sleep(0.03)
        thread.join()
        assert out["reply"].status_code == 200
        idle = poller.get("/progress").json()
        assert poller.post("/options", json={"show_progress_every_n_steps": 5}).status_code == 200
    assert seen == sorted(seen) and len({p for p in seen if 0 < p < 1}) >= 3, seen
    assert any(s["sampling_steps"] == 40 and 0 < s["sampling_step"] < 40 for s in states)
    assert len(set(previews)) >= 2 and decode(previews[-1]).format == "PNG"  # a fresh one every step
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None


def test_interrupt_ends_the_callers_job_and_not_another_callers(auth_server):
    with auth_server.client(ALICE) as alice, auth_server.client(BOB) as bob:
        long_job, a = _post_in_thread(alice, "/txt2img", on_demo(alice, steps=150, n_iter=3, seed=1,
                                                                 force_task_id="long-one"))
        step = _wait_for(lambda: alice.get("/progress").json()["state"]["sampling_step"])
        # A1111 clients may name their job (force_task_id) and ask about / stop only that one.
        assert alice.get("/progress", params={"id_task": "long-one"}).json()["state"]["job_count"] == 3
        assert alice.get("/progress", params={"id_task": "another"}).json()["state"]["job_count"] == 0
        assert alice.post("/interrupt", json={"id_task": "another"}).status_code == 200
        assert bob.post("/interrupt").status_code == 200  # bob has no job: nothing of alice's stops
        assert bob.get("/progress").json()["state"]["job_count"] == 0  # nor does he see hers
        _wait_for(lambda: alice.get("/progress").json()["state"]["sampling_step"] >= step + 2)
        bobs_job, b = _post_in_thread(bob, "/txt2img", on_demo(bob, steps=6, seed=2))
        _wait_for(lambda: (bob.get("/progress").json()["textinfo"] or "").startswith("Waiting"))
        started = time.monotonic()
        assert alice.post("/interrupt").status_code == 200
        long_job.join()
        bobs_job.join()
    alice_info = json.loads(a["reply"].json()["info"])
    assert alice_info["interrupted"] and len(alice_info["all_seeds"]) == 1, "stopped within the first batch"
    assert a["done"] - started < 5, "stopped within a step or two, not after 450 steps"
    bob_info = json.loads(b["reply"].json()["info"])
    assert not bob_info["interrupted"] and bob_info["all_seeds"] == [2] and len(b["reply"].json()["images"]) == 1


@pytest.mark.slow
def test_one_users_api_and_ui_jobs_run_in_order_and_interrupt_spares_ui_jobs(server, tmp_path):
    """Without a sign-in the page's jobs and the API's from one address are one user's: first in, first out
    (tests/test_jobs.py and test_workers.py check the turns between users)."""
    from gradio_client import Client
    from gradio_client.utils import Status

    ui = Client(server.url + "/", download_files=str(tmp_path / "dl"), verbose=False)
    # the page's own dropdown choice (titles gain their hash once it is computed; the page keeps its list)
    ui_args = [BUILTIN_LABEL, SHAPES, "", "Euler a", "Automatic", 40, 64, 64, 1, 1, 7.0, 11, 1, [], "Automatic"]
    first = ui.submit(*ui_args, api_name="/txt2img")
    running = (Status.PROCESSING, Status.ITERATING, Status.PROGRESS)  # the tab's handler streams updates
    _wait_for(lambda: first.status().code in running)
    with server.client() as api:
        # The API caller's Interrupt reaches its own jobs only: the browser's running job goes on.
        assert api.post("/interrupt").status_code == 200
        api_job, out = _post_in_thread(api, "/txt2img", on_demo(api, steps=10, seed=12, save_images=True))
        _wait_for(lambda: (api.get("/progress").json()["textinfo"] or "").startswith("Waiting"))
        ui_args[5], ui_args[11] = 10, 13
        second = ui.submit(*ui_args, api_name="/txt2img")
        _wait_for(lambda: server.ctx.jobs.counts()["waiting"] == 2)  # in Atelier's queue, behind the API job
        first_result = first.result()
        api_job.join()
        second.result()
    gallery, info_html, *_ = first_result
    assert len(gallery) == 1 and "Steps: 40" in info_html and "Interrupted" not in info_html
    assert out["reply"].status_code == 200 and len(out["reply"].json()["images"]) == 1
    # The files' counters show the order the jobs ran in: one user's jobs, first come, first served, UI or API.
    saved = sorted((server.ctx.settings.outputs_dir / "txt2img-images").rglob("*.png"))
    seeds = [int(p.stem.split("-")[1]) for p in saved]
    assert seeds[-3:] == [11, 12, 13], seeds


@pytest.mark.slow
def test_api_users_take_turns_and_interrupt_cancels_a_waiting_job(auth_server):
    outputs = auth_server.ctx.settings.outputs_dir / "txt2img-images"
    with auth_server.client(ALICE) as alice, auth_server.client(BOB) as bob:
        first, a1 = _post_in_thread(alice, "/txt2img", on_demo(alice, steps=60, seed=41, save_images=True))
        _wait_for(lambda: alice.get("/progress").json()["state"]["sampling_step"])
        later = [_post_in_thread(alice, "/txt2img", on_demo(alice, steps=4, seed=seed, save_images=True,
                                                           force_task_id=f"a{seed}")) for seed in (42, 43)]
        _wait_for(lambda: alice.get("/progress", params={"id_task": "a43"}).json()["state"]["job_count"] == 1)
        bobs, b = _post_in_thread(bob, "/txt2img", on_demo(bob, steps=4, seed=51, save_images=True))
        waiting = _wait_for(lambda: bob.get("/progress").json()["textinfo"] or "")
        assert waiting.startswith("Waiting: yours is next"), "Bob goes before Alice's second job"
        assert alice.get("/progress", params={"id_task": "a43"}).json()["textinfo"].startswith(
            "Waiting: 2 jobs ahead of yours")
        assert alice.post("/interrupt", json={"id_task": "a43"}).status_code == 200  # cancels it: it never runs
        for thread in [first, bobs] + [t for t, _ in later]:
            thread.join()
    cancelled = later[1][1]["reply"].json()
    assert cancelled["images"] == [] and json.loads(cancelled["info"])["interrupted"]
    assert all(out["reply"].status_code == 200 for out in (a1, b, later[0][1]))
    seeds = [int(p.stem.split("-")[1]) for p in sorted(outputs.rglob("*.png"))]
    assert seeds[-3:] == [41, 51, 42], seeds

# ---------------------------------------------------------------------------------------------- auth
def _sdapi_routes(url: str) -> list[tuple[str, str]]:
    """Every /sdapi route with its methods, as /docs lists them (a new route cannot be left out)."""
    paths = httpx.get(url + "/openapi.json", timeout=60).json()["paths"]
    return sorted((path, method.upper()) for path, methods in paths.items() if path.startswith("/sdapi/")
                  for method in methods)


def test_auth_refuses_missing_and_wrong_credentials_on_every_route(auth_server):
    routes = _sdapi_routes(auth_server.url)
    assert len(routes) >= 20 and ("/sdapi/v1/txt2img", "POST") in routes
    with httpx.Client(base_url=auth_server.url, timeout=60) as http:
        for path, method in routes:
            for auth in (None, ("alice", "wrong"), ("mallory", "wonder land:1"), ("", "")):
                reply = http.request(method, path, auth=auth, json={})
                assert reply.status_code == 401, (path, method, auth, reply.status_code)
                assert reply.headers["www-authenticate"].startswith("Basic")
            bad_header = http.request(method, path, headers={"Authorization": "Basic !!!"})
            assert bad_header.status_code == 401
        assert http.get("/sdapi/v1/sd-models", auth=ALICE).status_code == 200
        assert http.get("/sdapi/v1/options", auth=BOB).status_code == 200


def test_the_ui_password_protects_the_api_when_it_has_none_of_its_own(tmp_path, tiny_files):
    from webui.auth import Credentials

    srv = _start(tmp_path, tiny_files, [], credentials=Credentials((("ui", "secret"),)),
                 flags={"api": True, "auth": "ui:secret", "api_auth": None, "port": 7860, "auth_file": None})
    try:
        with httpx.Client(base_url=srv.url + "/sdapi/v1", timeout=60) as http:
            assert http.get("/sd-models").status_code == 401
            assert http.get("/sd-models", auth=("ui", "nope")).status_code == 401
            assert http.get("/sd-models", auth=("ui", "secret")).status_code == 200
            flags = http.get("/cmd-flags", auth=("ui", "secret"))
            assert flags.status_code == 200 and "secret" not in flags.text
            assert flags.json()["auth"] == "<redacted>" and flags.json()["port"] == 7860
    finally:
        srv.demo.close()
        srv.ctx.close()


# ---------------------------------------------------------------------------------------------- validation
def test_malformed_input_gets_4xx_naming_the_field_and_the_server_goes_on(server):
    big = io.BytesIO()
    Image.new("L", (4100, 4100)).save(big, format="PNG")  # compresses to a few kB, decodes to 16.8 Mpx
    cases = [
        ("/txt2img", {"steps": 0}, 422, "steps"),
        ("/txt2img", {"steps": 1000}, 422, "steps"),
        ("/txt2img", {"steps": 10000}, 422, "steps"),
        ("/txt2img", {"width": 8192, "height": 8192, "steps": 2}, 422, "width"),
        ("/txt2img", {"batch_size": 64, "steps": 2}, 422, "batch_size"),
        ("/txt2img", {"seed": -5, "steps": 2}, 422, "seed"),
        ("/txt2img", {"steps": "many"}, 422, "steps"),
        ("/txt2img", {"width": 100, "steps": 2}, 422, "width"),
        ("/txt2img", {"width": 8192, "steps": 2}, 422, "width"),
        ("/txt2img", {"batch_size": 1000, "steps": 2}, 422, "batch_size"),
        ("/txt2img", {"n_iter": 0, "steps": 2}, 422, "n_iter"),
        ("/txt2img", {"cfg_scale": -1, "steps": 2}, 422, "cfg_scale"),
        ("/txt2img", {"sampler_name": "Euler z", "steps": 2}, 422, "sampler_name"),
        ("/txt2img", {"scheduler": "wobbly", "steps": 2}, 422, "scheduler"),
        ("/txt2img", {"override_settings": {"sd_model_checkpoint": "missing.safetensors"}}, 422,
         "sd_model_checkpoint"),
        ("/txt2img", {"override_settings": {"sd_vae": "missing.pt"}}, 422, "sd_vae"),
        ("/txt2img", {"override_settings": {"uni_pc_variant": "vary_coeff"}, "steps": 2}, 422, "uni_pc_variant"),
        ("/txt2img", {"override_settings": {"uni_pc_skip_type": "uniform"}, "steps": 2}, 422, "uni_pc_skip_type"),
        ("/txt2img", {"override_settings": {"uni_pc_order": 0}, "steps": 2}, 422, "uni_pc_order"),
        ("/txt2img", {"override_settings": {"uni_pc_lower_order_final": "maybe"}, "steps": 2}, 422,
         "uni_pc_lower_order_final"),
        ("/txt2img", {"script_name": "x/y/z plot"}, 422, "script_name"),
        ("/img2img", {"steps": 2}, 422, "init_images"),
        ("/img2img", {"init_images": ["not base64!"], "steps": 2}, 400, "init_images"),
        ("/img2img", {"init_images": [base64.b64encode(b"hello").decode()], "steps": 2}, 400, "init_images"),
        ("/img2img", {"init_images": [base64.b64encode(big.getvalue()).decode()], "steps": 2}, 413, "init_images"),
        ("/img2img", {"init_images": [b64(Image.new("RGB", (64, 64)))], "mask": "%%%", "steps": 2}, 400, "mask"),
        ("/img2img", {"init_images": [b64(Image.new("RGB", (64, 64)))], "mask": b64(Image.new("L", (64, 64))),
                      "steps": 2}, 422, "mask"),  # an empty mask
        # A1111's samplers still run one step at any strength; LCM keeps diffusers' steps x strength, here none
        ("/img2img", {"init_images": [b64(Image.new("RGB", (64, 64)))], "denoising_strength": 0.01,
                      "steps": 2, "sampler_name": "LCM"}, 422, "denoising_strength"),
        ("/png-info", {"image": ""}, 400, "image"),
    ]
    with server.client() as api:
        for path, body, status, field in cases:
            reply = api.post(path, json={"width": 64, "height": 64, **body} if path != "/png-info" else body)
            assert reply.status_code == status, (body, reply.status_code, reply.text[:300])
            assert reply.json()["field"] == field, (body, reply.text[:300])
            assert "detail" in reply.json()
        broken = api.post("/txt2img", content=b"{not json", headers={"content-type": "application/json"})
        assert broken.status_code == 422
        for number in (b"NaN", b"Infinity", b"-Infinity"):  # Python clients send these; JSON readers accept them
            odd = api.post("/txt2img", content=b'{"steps": 2, "width": 64, "height": 64, "cfg_scale": ' + number + b"}",
                           headers={"content-type": "application/json"})
            assert odd.status_code == 422 and odd.json()["field"] == "cfg_scale", odd.text[:300]
        assert _raw_post(server.url, "/sdapi/v1/png-info", declared_length=10**9).startswith(b"HTTP/1.1 413")
        ok = api.post("/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
        assert ok.status_code == 200 and len(ok.json()["images"]) == 1


def _raw_post(url: str, path: str, declared_length: int) -> bytes:
    """A POST that announces a body it never sends: the server must refuse it without reading it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {declared_length}\r\n\r\n".encode())
        return sock.recv(4096)


# ---------------------------------------------------------------------------------------------- command line
@pytest.mark.slow
def test_api_flags_on_the_command_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")}
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webui", "--api-auth", "bot:s3cret pass", "--port", str(port), "--no-autolaunch",
             "--models-dir", str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "outputs"),
             "--settings-file", str(tmp_path / "settings.json")], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for(lambda: proc.poll() is not None or "REST API at" in log.read_text(), timeout=180, every=0.3)
            assert proc.poll() is None, log.read_text()
            with httpx.Client(base_url=url, timeout=60) as http:
                assert http.get("/sdapi/v1/cmd-flags").status_code == 401
                flags = http.get("/sdapi/v1/cmd-flags", auth=("bot", "s3cret pass"))
                assert flags.status_code == 200 and "s3cret" not in flags.text
                assert flags.json()["api_auth"] == "<redacted>" and flags.json()["port"] == port
                schema = http.get("/openapi.json").json()
                assert "/sdapi/v1/txt2img" in schema["paths"] and "/sdapi/v1/progress" in schema["paths"]
                assert http.get("/docs").status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=30)
