"""The ControlNet accordion's values -> the request's units (webui/ui/controlnet_form.py), without a server."""

from __future__ import annotations

import pytest
from PIL import Image

from webui.config import Settings
from webui.controlnet.units import ControlMode, ControlResizeMode, ControlUnit, HiresOption
from webui.errors import AtelierError
from webui.pipelines.build import build_request
from webui.ui import forms
from webui.ui.controlnet_form import restore_units, unit_count, unit_field, unit_fields

BASE = {"prompt": "a red square", "negative_prompt": "", "sampler": "Euler", "schedule_type": "Automatic",
        "steps": 4, "width": 64, "height": 64, "batch_count": 1, "batch_size": 1, "cfg_scale": 7, "seed": 1}
MODEL = "atelier-demo-outline [0adecd84]"


def unit_values(index: int, mode: str = "txt2img", **changes) -> dict:
    """One unit's components as the page starts them (disabled), with ``changes``."""
    defaults = {"enabled": False, "image": None, "mask": None, "module": "none", "model": "None", "weight": 1.0,
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


TWO_UNITS = (
    "a yellow star\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Emphasis: No norm, RNG: NV, "
    'ENSD: 31337, ControlNet 0: "Module: canny, Model: atelier-demo-outline [0adecd84], Weight: 0.6, Resize Mode: '
    "Just Resize, Processor Res: 256, Threshold A: 80.0, Threshold B: 160.0, Guidance Start: 0.1, Guidance End: "
    '0.9, Pixel Perfect: True, Control Mode: My prompt is more important", ControlNet 2: "Module: invert, Model: '
    "control_v11p_sd15_lineart [43d4be0d], Weight: 1.2, Resize Mode: Resize and Fill, Processor Res: -1, "
    "Threshold A: -1, Threshold B: -1, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control "
    'Mode: ControlNet is more important, Hr Option: Low res only"')


def test_pasted_units_fill_every_units_controls_and_say_what_is_missing():
    values = forms.values_from_infotext(TWO_UNITS)
    installed = {"atelier-demo-outline [0adecd84]": MODEL}
    restored = restore_units(values["controlnet_units"], 4, installed.get, has_image=[False, False, False, True])
    got = restored.values
    assert got[unit_field(0, "enabled")] is True and got[unit_field(0, "module")] == "canny"
    assert got[unit_field(0, "model")] == MODEL
    assert (got[unit_field(0, "weight")], got[unit_field(0, "guidance_start")], got[unit_field(0, "guidance_end")]) \
        == (0.6, 0.1, 0.9)
    assert got[unit_field(0, "resize_mode")] == "Just Resize" and got[unit_field(0, "pixel_perfect")] is True
    assert got[unit_field(0, "control_mode")] == "My prompt is more important"
    assert (got[unit_field(0, "processor_res")], got[unit_field(0, "threshold_a")],
            got[unit_field(0, "threshold_b")]) == (256, 80.0, 160.0)
    assert got[unit_field(0, "hr_option")] == "Both", "an entry without Hr Option means both passes"
    # Unit 1 is not in the text: switched off, its other controls left as they are.
    assert got[unit_field(1, "enabled")] is False and unit_field(1, "module") not in got
    # Unit 2: a model not installed keeps "None" and says so; -1 means the preprocessor's defaults.
    assert got[unit_field(2, "enabled")] is True and got[unit_field(2, "model")] == "None"
    assert got[unit_field(2, "control_mode")] == "ControlNet is more important"
    assert got[unit_field(2, "resize_mode")] == "Resize and Fill" and got[unit_field(2, "hr_option")] == "Low res only"
    assert got[unit_field(2, "processor_res")] == 512 and got[unit_field(2, "threshold_a")] == 0.5
    assert "Control image missing" in restored.notes[0] and "Model missing" not in restored.notes[0]
    assert "Model missing" in restored.notes[2] and "control_v11p_sd15_lineart [43d4be0d]" in restored.notes[2]
    assert restored.notes[1] == "" and got[unit_field(3, "enabled")] is False and restored.notes[3] == ""


def test_pasted_units_past_the_pages_count_are_named_with_the_setting_that_gives_more():
    units = forms.values_from_infotext(TWO_UNITS)["controlnet_units"]  # units 0 and 2
    restored = restore_units(units, 2, lambda name: MODEL)
    assert len(restored.notes) == 2 and restored.values[unit_field(0, "enabled")] is True
    assert "1 ControlNet unit was not restored" in restored.overflow and "ControlNet 2" in restored.overflow
    assert "controlnet_unit_count" in restored.overflow and "at least 3" in restored.overflow
    assert restore_units(units, 3, lambda name: MODEL).overflow == "", "all fit: no note"
    one = restore_units(units, 1, lambda name: MODEL).overflow
    assert "1 ControlNet unit was not restored" in one and "shows 1 unit." in one, "the gap (unit 1) is no unit"
    units[1] = units[0]
    assert "2 ControlNet units were not restored" in restore_units(units, 1, lambda name: MODEL).overflow


def test_a_units_mask_reaches_it_as_the_apis_mask():
    control = Image.new("RGB", (64, 64), "black")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    values = page(u0={"enabled": True, "image": control, "mask": mask, "model": MODEL, "module": "inpaint_only"},
                  u1={"enabled": True, "image": control, "model": MODEL})
    units = request("txt2img", values).controlnet_units
    assert units[0].mask is not None and units[0].mask.getpixel((0, 0)) == 255 and units[0].mask.getpixel((63, 0)) == 0
    assert units[0].module == "inpaint_only" and units[1].mask is None
    # A mask painted on an image editor: white where any layer has paint.
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 128), (40, 0, 64, 10))
    from webui.ui.controlnet_form import unit_mask

    painted = unit_mask({"background": control, "layers": [layer], "composite": control})
    assert painted is not None and painted.getpixel((50, 5)) == 255 and painted.getpixel((10, 30)) == 0
    assert unit_mask({"background": control, "layers": [Image.new("RGBA", (64, 64))], "composite": None}) is None


def test_unit_pictures_are_the_last_optional_parameters_of_the_generate_endpoint():
    from webui.ui.controlnet_form import is_picture_field
    from webui.ui.generation_tab import endpoint_signature

    names = ("prompt", "seed", unit_field(0, "enabled"), unit_field(0, "model"))
    pictures = (unit_field(0, "image"), unit_field(0, "mask"))
    assert all(map(is_picture_field, pictures)) and not any(map(is_picture_field, names))
    params = list(endpoint_signature(names, 1, pictures).parameters.values())
    assert [p.name for p in params] == ["request", "checkpoint", *names, "extension_input_0", *pictures]
    assert [p.name for p in params if p.default is None] == list(pictures), "only the pictures are optional"


def test_pasted_overrides_are_this_jobs_and_use_setting_leaves_the_settings():
    values = forms.values_from_infotext(TWO_UNITS)
    assert (values["emphasis"], values["rng"], values["eta_noise_seed_delta"]) == ("No norm", "NV", 31337)
    plain = forms.values_from_infotext("a cat\nSteps: 6, Sampler: Euler, Seed: 1, Size: 64x64")
    assert (plain["emphasis"], plain["rng"], plain["eta_noise_seed_delta"]) == ("Original", "GPU", 0)
    assert plain["controlnet_units"] == [], "a text without ControlNet switches the units off"
    settings = Settings(emphasis="None", randn_source="CPU", eta_noise_seed_delta=7)
    job = build_request(settings, forms.form_fields("txt2img", None, {**BASE, "emphasis": "No norm", "rng": "NV",
                                                                      "eta_noise_seed_delta": 31337}), lambda: 64)
    assert (job.emphasis, job.rng, job.eta_noise_seed_delta) == ("No norm", "NV", 31337)
    default = build_request(settings, forms.form_fields("txt2img", None, {
        **BASE, "emphasis": forms.USE_SETTING, "rng": forms.USE_SETTING, "eta_noise_seed_delta": -1}), lambda: 64)
    assert (default.emphasis, default.rng, default.eta_noise_seed_delta) == ("None", "CPU", 7)


def test_the_section_shows_the_overflow_note_after_the_units_controls():
    from types import SimpleNamespace

    import gradio as gr

    from webui.ui.controlnet_controls import build_controlnet_section

    ctx = SimpleNamespace(settings=SimpleNamespace(controlnet_unit_count=2),
                          manager=SimpleNamespace(controlnets=SimpleNamespace(titles=lambda: [MODEL])))
    with gr.Blocks():
        fields = {"width": gr.Slider(), "height": gr.Slider()}
        section = build_controlnet_section(ctx, fields, "txt2img")
    targets = section.restore_targets(fields)
    restored = restore_units(forms.values_from_infotext(TWO_UNITS)["controlnet_units"], 2, lambda name: MODEL)
    updates = section.restore_updates(fields, restored)
    assert len(updates) == len(targets) and targets[-1] is section.overflow
    assert updates[-1]["visible"] is True and "ControlNet 2" in updates[-1]["value"]
    pictures = [fields[unit_field(i, name)] for i in range(2) for name in ("image", "mask")]
    assert not any(t is p for t in targets for p in pictures), "pasted parameters leave the pictures alone"
