"""Extras: what the tab and /sdapi/v1/extra-single-image, /extra-batch-images do with pictures, as A1111 does
it: sizes, checks naming the field, upscaler 2 blended over upscaler 1, the Postprocess infotext, saving in
outputs/extras-images, and reading folders only inside the outputs folder."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from tests.conftest import make_models_dir
from tests.support.upscaler_files import compact_state, write_hostile_pth, write_upscaler
from tests.test_api import b64, decode
from webui.infotext import parse_infotext
from webui.outputs import OutputLayout, read_infotext
from webui.upscalers import UpscalerError, default_upscaler_dirs
from webui.upscalers.extras import (
    BY,
    TO,
    ExtrasOptions,
    ExtrasPicture,
    check_options,
    extras_infotext,
    plan_size,
    run_extras,
    run_pictures,
)
from webui.upscalers.library import UpscalerLibrary

A1111_TEXT = ("a cat in a hat\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, "
              "CFG scale: 7, Seed: 123, Size: 40x30, Model: v1-5-pruned-emaonly")


def picture(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def with_parameters(image: Image.Image, text: str) -> Image.Image:
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    image.save(buffer, format="PNG", pnginfo=info)
    reread = Image.open(io.BytesIO(buffer.getvalue()))
    reread.load()
    return reread


@pytest.fixture
def upscalers(tmp_path) -> UpscalerLibrary:
    write_upscaler(tmp_path / "models" / "ESRGAN" / "tiny-2x.safetensors", compact_state(2, seed=7))
    return UpscalerLibrary(default_upscaler_dirs(tmp_path / "models"), None, torch.device("cpu"), torch.float32)


def checked(library: UpscalerLibrary, **fields) -> ExtrasOptions:
    return check_options(ExtrasOptions(**fields), library.find, library.names)


# ---------------------------------------------------------------------------------------------- the logic
def test_requests_are_checked_naming_the_field(upscalers):
    assert checked(upscalers, upscaler_1="lanczos", upscaler_2="TINY-2X").upscaler_2 == "tiny-2x"
    bad = [({"upscaling_resize": 0}, "upscaling_resize"), ({"upscaling_resize": 8.5}, "upscaling_resize"),
           ({"upscaling_resize": float("nan")}, "upscaling_resize"),
           ({"resize_mode": TO, "upscaling_resize_w": 5000}, "upscaling_resize_w"),
           ({"resize_mode": TO, "upscaling_resize_h": 0}, "upscaling_resize_h"),
           ({"resize_mode": 2}, "resize_mode"), ({"upscaler_1": "ESRGAN_4x"}, "upscaler_1"),
           ({"upscaler_2": "nope"}, "upscaler_2"),
           ({"extras_upscaler_2_visibility": 1.5}, "extras_upscaler_2_visibility")]
    for fields, field in bad:
        with pytest.raises(UpscalerError) as caught:
            checked(upscalers, **fields)
        assert caught.value.field == field, fields
    options = checked(upscalers, upscaler_1="Lanczos", upscaling_resize=2)
    with pytest.raises(UpscalerError, match="4096") as caught:
        plan_size(3000, 2000, options)
    assert caught.value.field == "upscaling_resize"


def test_scale_by_and_scale_to_sizes_as_a1111(upscalers):
    image = picture(40, 30)
    by = run_extras(upscalers, image, checked(upscalers, upscaler_1="Lanczos", upscaling_resize=2.5))
    assert by.image.size == (100, 75)
    assert by.info == {"Postprocess upscale by": 2.5, "Postprocess upscaler": "Lanczos"}
    # "Scale to" enlarges by the larger ratio (3.33 here), then crops the middle out.
    to = run_extras(upscalers, image, checked(upscalers, upscaler_1="Lanczos", resize_mode=TO, upscaling_resize_w=100,
                                              upscaling_resize_h=100))
    assert to.image.size == (100, 100)
    assert to.info == {"Postprocess upscale to": "100x100", "Postprocess upscaler": "Lanczos",
                       "Postprocess crop to": "100x100"}
    whole = image.resize((133, 100), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(to.image), np.asarray(whole)[:, 16:116])
    uncropped = run_extras(upscalers, image, checked(upscalers, upscaler_1="Lanczos", resize_mode=TO,
                                                     upscaling_resize_w=100, upscaling_resize_h=100,
                                                     upscaling_crop=False))
    assert uncropped.image.size == (133, 100), "without crop the picture keeps its shape"
    untouched = run_extras(upscalers, image, checked(upscalers, upscaler_1="None", upscaler_2="Lanczos",
                                                     extras_upscaler_2_visibility=1))
    assert untouched.image.size == (40, 30) and untouched.info == {}, "upscaler 1 None leaves the picture alone"


def test_upscaler_2_is_blended_over_upscaler_1(upscalers):
    image = picture(40, 30)
    options = checked(upscalers, upscaler_1="tiny-2x", upscaler_2="Nearest", extras_upscaler_2_visibility=0.25)
    result = run_extras(upscalers, image, options)
    first = upscalers.upscale(image, 80, 60, "tiny-2x")
    second = image.resize((80, 60), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(result.image), np.asarray(Image.blend(first, second, 0.25)))
    assert result.info["Postprocess upscaler"] == "tiny-2x"
    assert result.info["Postprocess upscaler 2"] == "Nearest"
    assert result.info["Postprocess upscaler 2 visibility"] == 0.25
    hidden = run_extras(upscalers, image, checked(upscalers, upscaler_1="tiny-2x", upscaler_2="Nearest"))
    assert "Postprocess upscaler 2" not in hidden.info, "visibility 0: upscaler 2 is not used"


def test_the_infotext_keeps_the_original_parameters_and_adds_the_postprocessing():
    info = {"Postprocess upscale by": 2.0, "Postprocess upscaler": "4x, sharp"}
    text = extras_infotext(A1111_TEXT, info)
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a cat in a hat" and parsed["Negative prompt"] == "ugly"
    assert parsed["Seed"] == 123 and parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Postprocess upscale by"] == "2" and parsed["Postprocess upscaler"] == "4x, sharp"
    assert extras_infotext(None, info) == 'Postprocess upscale by: 2, Postprocess upscaler: "4x, sharp"'
    assert extras_infotext("just a prompt", info).split("\n") == ["just a prompt", extras_infotext(None, info)]


def test_results_are_saved_in_extras_images_with_their_infotext(upscalers, tmp_path):
    outputs = OutputLayout(tmp_path / "outputs")
    pictures = [ExtrasPicture(with_parameters(picture(), A1111_TEXT)), ExtrasPicture(picture(seed=1), "photo.jpg")]
    done = run_pictures(upscalers, pictures, checked(upscalers, upscaler_1="tiny-2x"), outputs, "png")
    folder = outputs.folder_for("extras")
    assert folder.parent == tmp_path / "outputs" / "extras-images"
    assert [out.path.name for out in done] == ["00000.png", "00001-photo.png"]
    first = parse_infotext(read_infotext(done[0].path))
    assert first["Seed"] == 123 and first["Postprocess upscaler"] == "tiny-2x"
    assert read_infotext(done[1].path) == "Postprocess upscale by: 2, Postprocess upscaler: tiny-2x"
    assert Image.open(done[1].path).size == (80, 60)


# ---------------------------------------------------------------------------------------------- the tab
def _tab(ctx):
    from webui.ui import extras_tab

    with gr.Blocks() as demo:
        extras_tab.build(ctx)
    return next(block.fn for block in demo.fns.values() if getattr(block.fn, "__name__", "") == "on_run")


@pytest.mark.slow
def test_the_tab_upscales_uploads_and_folders_inside_outputs_only(make_context, tmp_path):
    ctx = make_context([])
    write_upscaler(ctx.settings.models_dir / "RealESRGAN" / "tiny-2x.pth", compact_state(2, seed=7))
    ctx.manager.upscalers.refresh()
    run = _tab(ctx)
    defaults = dict(resize_mode=BY, by=2, to_w=512, to_h=512, crop_to_fit=True, first="tiny-2x", second="None",
                    amount=0)

    def call(source, image=None, uploads=None, folder="", **changes):
        values = {**defaults, **changes}
        return run(source, image, uploads, folder, *values.values())

    shown, info = call("single", with_parameters(picture(), A1111_TEXT))
    assert "Postprocess upscale by: 2, Postprocess upscaler: tiny-2x" in info
    saved = Path(shown[0])
    assert saved.parent.parent == ctx.settings.outputs_dir / "extras-images" and Image.open(saved).size == (80, 60)
    assert parse_infotext(read_infotext(saved))["Seed"] == 123
    uploads = []
    for i in range(2):
        path = tmp_path / f"upload-{i}.png"
        picture(seed=i).save(path)
        uploads.append(str(path))
    shown, _ = call("batch", uploads=uploads, resize_mode=TO, to_w=64, to_h=64)
    assert [Path(p).name for p in shown] == ["00001-upload-0.png", "00002-upload-1.png"]
    assert all(Image.open(p).size == (64, 64) for p in shown)
    day = saved.parent.name
    shown, _ = call("folder", folder=f"extras-images/{day}", first="Lanczos")
    assert len(shown) == 3, "the three pictures saved so far"
    outside = tmp_path / "secret"
    outside.mkdir()
    picture().save(outside / "private.png")
    os.symlink(outside, ctx.settings.outputs_dir / "link-out")
    os.symlink(outside / "private.png", saved.parent / "linked.png")
    for folder in ("../secret", str(outside), "link-out", "", "no-such-folder"):
        with pytest.raises(gr.Error):
            call("folder", folder=folder)
    shown, _ = call("folder", folder=f"extras-images/{day}", first="Lanczos")
    assert len(shown) == 6, "a link to a file outside the outputs folder is not read"
    for changes, words in (({"by": 0}, "Scale by"), ({"by": 9}, "Scale by"), ({"first": "nope"}, "Upscaler 1"),
                           ({"resize_mode": TO, "to_w": 5000}, "Width")):
        with pytest.raises(gr.Error, match=words):
            call("single", picture(), **changes)
    not_a_picture = tmp_path / "notes.png"
    not_a_picture.write_text("hello")
    with pytest.raises(gr.Error, match="notes.png is not a picture"):
        call("batch", uploads=[str(not_a_picture)])
    with pytest.raises(gr.Error, match="Drop a picture"):
        call("single", None)
    ctx.apply_settings(ctx.settings.replace(upscaler_tile_size=32))  # what the Settings tab does
    assert ctx.manager.upscalers.tile_size == 32


# ---------------------------------------------------------------------------------------------- the REST API
def b64_with_parameters(image: Image.Image, text: str) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return b64(image, info)



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from webui.config import load_settings
    from webui.context import AppContext
    from webui.ui.app import launch

    root = tmp_path_factory.mktemp("extras-api")
    models = make_models_dir(root, {}, [])
    write_upscaler(models / "ESRGAN" / "tiny-2x.safetensors", compact_state(2, seed=7))
    write_upscaler(models / "upscale_models" / "tiny-4x.pth", compact_state(4, seed=8), wrapper="params_ema")
    write_hostile_pth(models / "ESRGAN" / "evil.pth", root / "pwned")
    settings = load_settings({"settings_file": root / "settings.json", "models_dir": models,
                              "outputs_dir": root / "outputs", "device": "cpu", "precision": "fp32",
                              "include_builtin": False, "autolaunch": False, "port": 0}, env={})
    ctx = AppContext.create(settings)
    demo = launch(ctx, api=True, server_port=None, prevent_thread_lock=True, quiet=True, inbrowser=False)
    yield ctx, demo.local_url.rstrip("/") + "/sdapi/v1", root
    demo.close()
    ctx.close()


@pytest.mark.slow
def test_the_api_upscales_one_picture_and_a_batch(server):
    ctx, url, _ = server
    with httpx.Client(base_url=url, timeout=300) as api:
        listed = {u["name"]: u for u in api.get("/upscalers").json()}
        assert list(listed) == ["None", "Lanczos", "Nearest", "evil", "tiny-2x", "tiny-4x"]
        assert listed["tiny-4x"]["model_path"] == str(ctx.settings.models_dir / "upscale_models" / "tiny-4x.pth")
        reply = api.post("/extra-single-image", json={"image": b64_with_parameters(picture(), A1111_TEXT),
                                                      "upscaler_1": "tiny-4x", "upscaling_resize": 2})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        image = decode(body["image"])
        assert image.size == (80, 60)
        parsed = parse_infotext(image.info["parameters"])
        assert parsed["Seed"] == 123 and parsed["Postprocess upscaler"] == "tiny-4x"
        assert "Postprocess upscale by: 2, Postprocess upscaler: tiny-4x" in body["html_info"]
        assert not (ctx.settings.outputs_dir / "extras-images").exists(), "A1111's API does not save"
        assert {u["name"]: u["scale"] for u in api.get("/upscalers").json()}["tiny-4x"] == 4

        reply = api.post("/extra-batch-images", json={
            "imageList": [{"data": b64(picture(seed=1)), "name": "one.png"},
                          {"data": b64(picture(50, 50, seed=2)), "name": "two.png"}],
            "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 48, "upscaler_1": "tiny-2x",
            "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5, "gfpgan_visibility": 0.7,
            "save_images": True})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert [decode(i).size for i in body["images"]] == [(64, 48), (64, 48)]
        assert "face restoration" in body["html_info"] and "Postprocess upscaler 2: Lanczos" in body["html_info"]
        saved = sorted((ctx.settings.outputs_dir / "extras-images").rglob("*.png"))
        assert [p.name for p in saved] == ["00000-one.png", "00001-two.png"]
        assert parse_infotext(read_infotext(saved[0]))["Postprocess upscale to"] == "64x48"


@pytest.mark.slow
def test_bad_extras_requests_get_4xx_naming_the_field(server):
    _, url, root = server
    image = b64(picture())
    cases = [
        ({"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 0}, 422, "upscaling_resize"),
        ({"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 9}, 422, "upscaling_resize"),
        ({"image": image, "upscaler_1": "R-ESRGAN 4x+"}, 422, "upscaler_1"),
        ({"image": image, "upscaler_1": "Lanczos", "upscaler_2": "nope", "extras_upscaler_2_visibility": 1}, 422,
         "upscaler_2"),
        ({"image": image, "upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 5000}, 422,
         "upscaling_resize_w"),
        ({"image": image, "upscaler_1": "Lanczos", "extras_upscaler_2_visibility": 2}, 422,
         "extras_upscaler_2_visibility"),
        ({"image": image, "upscaler_1": "Lanczos", "upscaling_resize": "big"}, 422, "upscaling_resize"),
        ({"image": "not base64!", "upscaler_1": "Lanczos"}, 400, "image"),
        ({"image": base64.b64encode(b"hello").decode(), "upscaler_1": "Lanczos"}, 400, "image"),
        ({"image": image, "upscaler_1": "evil"}, 422, "upscaler_1"),
    ]
    with httpx.Client(base_url=url, timeout=300) as api:
        for body, status, field in cases:
            reply = api.post("/extra-single-image", json=body)
            assert reply.status_code == status, (body.get("upscaler_1"), reply.text[:300])
            assert reply.json()["field"] == field, reply.text[:300]
        assert "evil.pth" in api.post("/extra-single-image", json=cases[-1][0]).json()["detail"][0]["msg"]
        assert not (root / "pwned").exists()
        for body, field in (({"imageList": []}, "imageList"), ({}, "imageList"),
                            ({"imageList": [{"data": "%%", "name": "x.png"}]}, "imageList")):
            reply = api.post("/extra-batch-images", json={"upscaler_1": "Lanczos", **body})
            assert reply.status_code in (400, 422) and reply.json()["field"] == field, reply.text[:300]
        ok = api.post("/extra-single-image", json={"image": image, "upscaler_1": "Lanczos"})
        assert ok.status_code == 200 and decode(ok.json()["image"]).size == (80, 60)
