"""Hires fix and variation seeds through /sdapi/v1 with the field shapes A1111 clients send."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_api import _start, b64, decode

pytestmark = pytest.mark.slow

BASE = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 21, "sampler_name": "Euler",
        "override_settings": {"sd_model_checkpoint": "sd1.safetensors"}}


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_files):
    srv = _start(tmp_path_factory.mktemp("api-hires"), tiny_files, ["sd1", "sd1b", "sdxl"])
    with srv.client() as client:
        yield client
    srv.demo.close()
    srv.ctx.close()


def txt2img(api, **fields) -> dict:
    reply = api.post("/txt2img", json={**BASE, **fields})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    body["info"] = json.loads(body["info"])
    return body


def test_enable_hr_makes_a_larger_picture_with_a1111s_infotext(api):
    body = txt2img(api, enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=4,
                   denoising_strength=0.6)
    image = decode(body["images"][0])
    assert image.size == (128, 128)
    text = body["info"]["infotexts"][0]
    assert "Hires upscale: 2" in text and "Hires upscaler: Latent" in text and "Hires steps: 4" in text
    assert "Size: 64x64" in text and "Denoising strength: 0.6" in text


def test_hr_resize_and_the_old_firstphase_fields_set_the_size(api):
    resized = txt2img(api, enable_hr=True, hr_resize_x=96, hr_resize_y=128, denoising_strength=0.5)
    assert decode(resized["images"][0]).size == (96, 128)
    old_style = txt2img(api, enable_hr=True, width=128, height=128, firstphase_width=64, firstphase_height=64,
                        denoising_strength=0.5)
    assert decode(old_style["images"][0]).size == (128, 128)
    assert "Size: 64x64" in old_style["info"]["infotexts"][0]


def test_variation_seed_fields_reach_the_picture(api):
    plain = txt2img(api, seed=33)
    full = txt2img(api, subseed=33, subseed_strength=1.0)
    assert np.array_equal(np.asarray(decode(full["images"][0])), np.asarray(decode(plain["images"][0])))
    batch = txt2img(api, subseed=50, subseed_strength=0.4, batch_size=2)
    assert batch["info"]["all_seeds"] == [21, 21] and batch["info"]["all_subseeds"] == [50, 51]
    assert batch["info"]["subseed_strength"] == 0.4
    assert "Variation seed: 51" in batch["info"]["infotexts"][1]
    assert not batch["info"]["warnings"], "nothing was left out"


@pytest.mark.parametrize(("fields", "field"), [
    ({"enable_hr": True, "hr_scale": 0}, "hr_scale"),
    ({"enable_hr": True, "hr_scale": 10}, "hr_scale"),
    ({"enable_hr": True, "hr_second_pass_steps": -1}, "hr_second_pass_steps"),
    ({"enable_hr": True, "hr_resize_x": 9000}, "hr_resize_x"),
    ({"enable_hr": True, "hr_upscaler": "Magic 16x"}, "hr_upscaler"),
    ({"subseed": "seven"}, "subseed"),
    ({"subseed_strength": 2}, "subseed_strength"),
])
def test_bad_hires_and_variation_fields_get_422_naming_them(api, fields, field):
    reply = api.post("/txt2img", json={**BASE, **fields})
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == field
    assert api.post("/txt2img", json=BASE).status_code == 200, "the server goes on"


def test_a1111s_outpainting_scripts_extend_the_picture(api):
    start = decode(txt2img(api)["images"][0])
    body = {**BASE, "init_images": [b64(start)], "denoising_strength": 1.0, "script_name": "Poor man's outpainting",
            "script_args": [32, 4, 0, ["right", "down"]]}
    reply = api.post("/img2img", json=body)
    assert reply.status_code == 200, reply.text
    grown = decode(reply.json()["images"][0])
    assert grown.size == (96, 96)
    kept = np.asarray(grown.convert("RGB"))[:64 - 28, :64 - 28]
    assert np.array_equal(kept, np.asarray(start.convert("RGB"))[:64 - 28, :64 - 28])
    mk2 = api.post("/img2img", json={**body, "script_name": "Outpainting mk2", "script_args": ["", 16, 4, ["left"]]})
    assert mk2.status_code == 200 and decode(mk2.json()["images"][0]).size == (80, 64)
    bad = api.post("/img2img", json={**body, "script_args": [32, 4, 0, ["sideways"]]})
    assert bad.status_code == 422 and bad.json()["field"] == "script_args"


def test_refiner_and_hires_checkpoint_fields_as_a1111_clients_send_them(api):
    plain = txt2img(api)
    refined = txt2img(api, refiner_checkpoint="sd1b", refiner_switch_at=0.5)
    assert not np.array_equal(np.asarray(decode(refined["images"][0])), np.asarray(decode(plain["images"][0])))
    text = refined["info"]["infotexts"][0]
    assert "Refiner: sd1b [" in text and "Refiner switch at: 0.5" in text
    assert not any("refiner" in w.lower() for w in refined["info"]["warnings"])
    unset = txt2img(api, refiner_checkpoint="None", enable_hr=True, hr_checkpoint_name="Use same checkpoint",
                    denoising_strength=0.5)
    assert "Refiner" not in unset["info"]["infotexts"][0] and "Hires checkpoint" not in unset["info"]["infotexts"][0]
    other = txt2img(api, enable_hr=True, hr_checkpoint_name="sd1b.safetensors", denoising_strength=0.5)
    assert "Hires checkpoint: sd1b [" in other["info"]["infotexts"][0]
    for fields, field in (({"refiner_checkpoint": "sdxl"}, "refiner_checkpoint"),
                          ({"refiner_checkpoint": "no-such-model"}, "refiner_checkpoint"),
                          ({"refiner_checkpoint": "sd1b", "refiner_switch_at": 2}, "refiner_switch_at"),
                          ({"enable_hr": True, "hr_checkpoint_name": "sdxl", "denoising_strength": 0.5},
                           "hr_checkpoint_name")):
        reply = api.post("/txt2img", json={**BASE, **fields})
        assert reply.status_code == 422, (fields, reply.text)
        assert field in reply.text, reply.text
