"""The ControlNet accordion's values -> the request's units (webui/ui/controlnet_form.py), without a server."""

from __future__ import annotations

import pytest
from PIL import Image

from webui.config import Settings
from webui.controlnet.units import ControlMode, ControlResizeMode, ControlUnit, HiresOption
from webui.errors import AtelierError
from webui.pipelines.build import build_request
from webui.ui import forms
from webui.ui.controlnet_form import unit_count, unit_field, unit_fields

BASE = {"prompt": "a red square", "negative_prompt": "", "sampler": "Euler", "schedule_type": "Automatic",
        "steps": 4, "width": 64, "height": 64, "batch_count": 1, "batch_size": 1, "cfg_scale": 7, "seed": 1}
MODEL = "atelier-demo-outline [0adecd84]"


def unit_values(index: int, mode: str = "txt2img", **changes) -> dict:
    """One unit's components as the page starts them (disabled), with ``changes``."""
    defaults = {"enabled": False, "image": None, "module": "none", "model": "None", "weight": 1.0,
                "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
                "resize_mode": "Crop and Resize", "pixel_perfect": False, "processor_res": 512,
                "threshold_a": 0.5, "threshold_b": 0.5, "hr_option": "Both"}
    values = {unit_field(index, k): v for k, v in {**defaults, **changes}.items()}
    return {k: v for k, v in values.items() if k in unit_fields(mode, index)}


def page(mode: str = "txt2img", **units: dict) -> dict:
    values = dict(BASE)
    for index in range(3):
        values.update(unit_values(index, mode, **units.get(f"u{index}", {})))
    return values


def request(mode: str, values: dict):
    return build_request(Settings(), forms.form_fields(mode, None, values), lambda: 64)


def test_no_enabled_unit_sends_no_units():
    fields = forms.form_fields("txt2img", None, page())
    assert "controlnet_units" not in fields
    assert request("txt2img", page()).controlnet_units == []


def test_enabled_units_become_extension_units_numbered_as_the_page():
    control = Image.new("RGB", (64, 64), "black")
    values = page(u1={"enabled": True, "image": control, "model": MODEL, "module": "canny", "weight": 0.6,
                      "guidance_start": 0.1, "guidance_end": 0.8, "control_mode": "ControlNet is more important",
                      "resize_mode": "Resize and Fill", "pixel_perfect": True, "threshold_a": 90,
                      "threshold_b": 180, "processor_res": 256, "hr_option": "Low res only"})
    units = request("txt2img", values).controlnet_units
    assert [u.enabled for u in units] == [False, True]  # unit 0 is a placeholder: unit 1 stays "unit 1"
    unit = units[1]
    assert isinstance(unit, ControlUnit) and unit.used
    assert (unit.model, unit.module, unit.weight, unit.guidance_start, unit.guidance_end) == \
        (MODEL, "canny", 0.6, 0.1, 0.8)
    assert unit.control_mode is ControlMode.CONTROL and unit.resize_mode is ControlResizeMode.RESIZE_AND_FILL
    assert unit.pixel_perfect and unit.hr_option is HiresOption.LOW_RES_ONLY
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (256, 90, 180)
    assert unit.image is not None and unit.image.size == (64, 64)


def test_a_drawn_scribble_is_the_editors_composite():
    drawing = {"background": Image.new("RGB", (32, 32), "white"), "layers": [],
               "composite": Image.new("RGBA", (32, 32), "black")}
    values = page(u0={"enabled": True, "image": drawing, "model": MODEL})
    unit = forms.form_fields("txt2img", None, values)["controlnet_units"][0]
    assert unit["image"].mode == "RGB" and unit["image"].getpixel((0, 0)) == (0, 0, 0)


def test_img2img_units_have_no_hires_option_and_may_use_the_init_image():
    values = {**page("img2img", u0={"enabled": True, "model": MODEL}), "init_image": Image.new("RGB", (64, 64)),
              "denoising_strength": 0.5, "resize_mode": "Just resize"}
    assert unit_field(0, "hr_option") not in values
    unit = request("img2img", values).controlnet_units[0]
    assert unit.image is None and unit.used  # the engine takes the init image


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"model": "None"}, "controlnet_units[2].model", "ControlNet Unit 2 is enabled"),
    ({}, "controlnet_units[2].image", "give a control image"),
    ({"image": Image.new("RGB", (8, 8)), "guidance_start": 0.7, "guidance_end": 0.2},
     "controlnet_units[2].guidance_start", "starts after it ends"),
])
def test_bad_units_name_the_pages_unit(changes, field, words):
    values = page(u2={"enabled": True, "model": MODEL, **changes})
    with pytest.raises(AtelierError) as caught:  # RequestError or the engine's UnitError: both reach the page
        request("txt2img", values)
    assert caught.value.field == field and words in str(caught.value)


def test_weight_outside_the_slider_is_refused_by_the_request():
    with pytest.raises(AtelierError, match=r"controlnet_units\[0\].weight"):
        build_request(Settings(), {**forms.form_fields("txt2img", None, BASE), "controlnet_units": [
            {"model": MODEL, "weight": -1, "image": Image.new("RGB", (8, 8))}]}, lambda: 64)


def test_unit_count_setting_is_kept_in_range():
    assert (unit_count(3), unit_count(0), unit_count(99), unit_count("x")) == (3, 1, 10, 3)


def test_a_scribble_is_strokes_over_white_and_an_empty_canvas_is_nothing():
    from webui.ui.controlnet_form import scribble_picture

    strokes = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    strokes.putpixel((3, 4), (0, 0, 0, 255))
    picture = scribble_picture({"background": None, "layers": [], "composite": strokes})
    assert picture is not None and picture.mode == "RGB"
    assert picture.getpixel((3, 4)) == (0, 0, 0) and picture.getpixel((0, 0)) == (255, 255, 255)
    assert scribble_picture({"composite": Image.new("RGBA", (16, 16), (0, 0, 0, 0))}) is None
