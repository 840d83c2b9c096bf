"""ControlNet through the REST API as A1111 clients with the sd-webui-controlnet extension send it, on the
built-in demo model and its demo ControlNet: the shape lands where the outline map puts it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_api import _start, b64, decode
from tools.demo_model import outlines, positions, shapes

pytestmark = pytest.mark.slow

PROMPT = "a yellow star on a blue background"
BASE = {"prompt": PROMPT, "steps": 20, "width": 64, "height": 64, "seed": 0, "sampler_name": "Euler a",
        "override_settings": {"sd_model_checkpoint": "Atelier demo model (built-in)"}}


def top_left_map() -> str:
    scene = positions.grid_scene("yellow", "star", "blue", "in the top left")
    return b64(outlines.to_rgb(outlines.outline_map(scene)))


def unit(**fields) -> dict:
    return {"enabled": True, "module": "none", "model": "atelier-demo-outline", "weight": 1.0,
            "image": top_left_map(), "resize_mode": "Crop and Resize", "processor_res": 64, "guidance_start": 0.0,
            "guidance_end": 1.0, "control_mode": 0, "pixel_perfect": False, **fields}


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_files):
    srv = _start(tmp_path_factory.mktemp("api-controlnet"), tiny_files, ["sd1"])
    with srv.client() as client:
        yield client
    srv.demo.close()
    srv.ctx.close()


def txt2img(api, units: list[dict], script: str = "controlnet", **fields) -> dict:
    reply = api.post("/txt2img", json={**BASE, **fields, "alwayson_scripts": {script: {"args": units}}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    body["info"] = json.loads(body["info"])
    return body


def picture(body: dict):
    return decode(body["images"][0])


def test_the_extensions_routes_list_models_and_modules_and_detect_maps(api, tiny_files):
    root = str(api.base_url).split("/sdapi")[0]
    assert api.get(f"{root}/controlnet/version").json()["version"] >= 2
    models = api.get(f"{root}/controlnet/model_list").json()["model_list"]
    assert any(title.startswith("atelier-demo-outline [") for title in models)
    modules = api.get(f"{root}/controlnet/module_list").json()
    assert {"none", "canny", "invert"} <= set(modules["module_list"]) and "canny" in modules["module_detail"]
    drawn = shapes.draw(positions.grid_scene("red", "square", "cyan", None))
    detected = api.post(f"{root}/controlnet/detect", json={"controlnet_module": "canny",
                                                           "controlnet_input_images": [b64(drawn)],
                                                           "controlnet_processor_res": 64,
                                                           "controlnet_threshold_a": 100,
                                                           "controlnet_threshold_b": 200})
    assert detected.status_code == 200, detected.text
    edges = np.asarray(decode(detected.json()["images"][0]).convert("L"))
    assert edges.max() == 255 and (edges > 127).mean() < 0.2, "canny finds the square's edges, not everything"
    unknown = api.post(f"{root}/controlnet/detect", json={"controlnet_module": "no-such",
                                                          "controlnet_input_images": [b64(drawn)]})
    assert unknown.status_code == 422 and "controlnet_module" in unknown.text


def test_an_outline_map_in_the_top_left_puts_the_star_there(api):
    body = txt2img(api, [unit()], script="ControlNet")  # the script's name in any case
    image = picture(body)
    assert positions.place_of(image, "star") == "in the top left"
    assert shapes.classify(image)[1] == "yellow"
    text = body["info"]["infotexts"][0]
    assert 'ControlNet 0: "Module: none, Model: atelier-demo-outline [' in text and "Weight: 1" in text
    plain = api.post("/txt2img", json=BASE).json()
    assert positions.place_of(decode(plain["images"][0]), "star") != "in the top left"


def test_weight_zero_is_no_controlnet_and_an_early_end_differs(api):
    plain = picture(api.post("/txt2img", json=BASE).json())
    zero = picture(txt2img(api, [unit(weight=0.0)]))
    assert np.array_equal(np.asarray(zero), np.asarray(plain))
    full = np.asarray(picture(txt2img(api, [unit()])), dtype=np.float64)
    early = np.asarray(picture(txt2img(api, [unit(guidance_end=0.5)])), dtype=np.float64)
    assert np.abs(full - early).max() > 0


def test_two_units_and_disabled_units(api):
    second = positions.grid_scene("yellow", "star", "blue", "in the bottom right")
    both = txt2img(api, [unit(weight=0.6), unit(weight=0.6, image=b64(outlines.to_rgb(outlines.outline_map(second))))])
    text = both["info"]["infotexts"][0]
    assert "ControlNet 0:" in text and "ControlNet 1:" in text
    one = picture(txt2img(api, [unit(weight=0.6)]))
    assert not np.array_equal(np.asarray(picture(both)), np.asarray(one))
    off = txt2img(api, [unit(enabled=False)])
    assert "ControlNet 0" not in off["info"]["infotexts"][0]


@pytest.mark.parametrize(("changes", "field"), [
    ({"weight": -1}, "weight"),
    ({"module": "no-such-module"}, "module"),
    ({"model": "no-such-model"}, "model"),
    ({"image": "bm90IGFuIGltYWdl"}, "image"),  # base64 of "not an image"
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance"),
])
def test_bad_units_get_422_naming_the_field_and_the_next_job_runs(api, changes, field):
    reply = api.post("/txt2img", json={**BASE, "alwayson_scripts": {"controlnet": {"args": [unit(**changes)]}}})
    assert reply.status_code in (400, 422), reply.text
    assert "alwayson_scripts.controlnet.args[0]" in reply.json()["field"] and field in reply.text, reply.text
    assert api.post("/txt2img", json=BASE).status_code == 200


def test_other_always_on_scripts_are_refused_by_name(api):
    reply = api.post("/txt2img", json={**BASE, "alwayson_scripts": {"ADetailer": {"args": []}}})
    assert reply.status_code == 422 and "ADetailer" in reply.text


def test_a_units_mask_reaches_it(api):
    half = np.zeros((64, 64), dtype=np.uint8)
    half[:, :32] = 255  # the left half is masked
    mask = b64(Image.fromarray(half, "L"))
    masked = txt2img(api, [unit(module="inpaint", mask=mask)])
    plain = txt2img(api, [unit(module="inpaint")])
    assert "Module: inpaint" in masked["info"]["infotexts"][0]
    assert not np.array_equal(np.asarray(picture(masked)), np.asarray(picture(plain))), "the mask changes the map"
    only = picture(txt2img(api, [unit(module="inpaint_only", mask=mask)]))
    control = np.asarray(decode(top_left_map()).convert("RGB"))
    assert np.array_equal(np.asarray(only)[:, 44:], control[:, 44:]), "the unmasked half is the unit's picture"
    assert not np.array_equal(np.asarray(only)[:, :20], control[:, :20]), "the masked half is drawn"
    scribble = txt2img(api, [unit(mask_image=mask)])  # Forge's name; "none" is no inpaint preprocessor
    assert any("scribble" in warning for warning in scribble["info"]["warnings"]), scribble["info"]["warnings"]
    root = str(api.base_url).split("/sdapi")[0]
    detected = api.post(f"{root}/controlnet/detect", json={"controlnet_module": "inpaint",
                                                           "controlnet_input_images": [top_left_map()],
                                                           "controlnet_masks": [mask]})
    assert detected.status_code == 200, detected.text
    shown = decode(detected.json()["images"][0])
    assert shown.mode == "RGBA" and shown.getpixel((0, 0))[3] == 128 and shown.getpixel((63, 0))[3] == 255
