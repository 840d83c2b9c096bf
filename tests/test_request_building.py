"""build_request: the one place a front end's fields get their defaults (from the settings) and their checks."""

from __future__ import annotations

import pytest
from PIL import Image

from webui.config import Settings
from webui.pipelines.build import build_request
from webui.pipelines.request import InpaintArea, MaskedContent, RequestError, ResizeMode
from webui.samplers import UnknownSamplerError

SETTINGS = Settings(default_sampler="DPM++ 2M", default_steps=12, default_clip_skip=2, default_vae="bright.safetensors",
                    save_images=False)


def never_asked() -> int:
    raise AssertionError("the model's native size was not needed")


def test_fields_not_given_take_the_settings_defaults():
    req = build_request(SETTINGS, {"prompt": "a cat", "steps": None, "clip_skip": None}, lambda: 96)
    assert (req.sampler, req.steps, req.clip_skip, req.vae, req.save_images) == \
        ("DPM++ 2M", 12, 2, "bright.safetensors", False)
    assert (req.width, req.height) == (96, 96), "no size setting: the model's native size"
    assert req.cfg_scale == 7.0 and req.seed == -1


def test_given_fields_win_over_the_settings():
    req = build_request(SETTINGS, {"sampler": "Euler", "steps": 3, "clip_skip": 1, "vae": "None", "width": 64,
                                   "height": 128, "save_images": True}, never_asked)
    assert (req.sampler, req.steps, req.clip_skip, req.vae, req.width, req.height, req.save_images) == \
        ("Euler", 3, 1, "None", 64, 128, True)


def test_size_comes_from_the_size_setting_then_the_init_image():
    assert build_request(SETTINGS.replace(default_size=256), {}, never_asked).width == 256
    init = Image.new("RGB", (203, 101))
    req = build_request(SETTINGS.replace(default_size=256), {"init_image": init}, never_asked)
    assert (req.width, req.height) == (200, 96), "img2img keeps the picture's own size, to a multiple of 8"


def test_a_legacy_sampler_name_keeps_its_schedule_type():
    req = build_request(SETTINGS, {"sampler": "DPM++ 2M Karras"}, lambda: 64)
    assert (req.sampler, req.schedule_type) == ("DPM++ 2M", "Karras")


def test_names_become_choices_and_bad_ones_name_their_field():
    init, mask = Image.new("RGB", (64, 64)), Image.new("L", (64, 64), 255)
    req = build_request(SETTINGS, {"init_image": init, "mask": mask, "masked_content": "fill",
                                   "inpaint_area": "Only masked", "resize_mode": "Crop and resize"}, never_asked)
    assert (req.masked_content, req.inpaint_area, req.resize_mode) == \
        (MaskedContent.FILL, InpaintArea.ONLY_MASKED, ResizeMode.CROP_AND_RESIZE)
    with pytest.raises(RequestError) as caught:
        build_request(SETTINGS, {"init_image": init, "mask": mask, "masked_content": "glitter"}, never_asked)
    assert caught.value.field == "masked_content" and "'fill'" in str(caught.value)
    with pytest.raises(UnknownSamplerError) as unknown:
        build_request(SETTINGS, {"sampler": "Warp drive"}, lambda: 64)
    assert unknown.value.field == "sampler"


def test_the_request_is_checked_once_here_with_the_denoising_rule():
    init = Image.new("RGB", (64, 64))
    # LCM keeps diffusers' count (steps x strength): 4 x 0.2 runs no step
    with pytest.raises(RequestError) as caught:
        build_request(SETTINGS, {"init_image": init, "steps": 4, "denoising_strength": 0.2, "sampler": "LCM"},
                      never_asked)
    assert caught.value.field == "denoising_strength" and "too low for 4 steps" in str(caught.value)
    # A1111's k-diffusion samplers run t_enc + 1 steps, so at least one
    low = build_request(SETTINGS, {"init_image": init, "steps": 4, "denoising_strength": 0.2, "sampler": "Euler"},
                        never_asked)
    assert low.denoising_strength == 0.2
    # DPM fast cannot run a single step (its solver needs a range): named, not a failure inside the job
    with pytest.raises(RequestError, match="DPM fast") as fast:
        build_request(SETTINGS, {"init_image": init, "steps": 4, "denoising_strength": 0.2, "sampler": "DPM fast"},
                      never_asked)
    assert fast.value.field == "denoising_strength"
    # A1111's img2img_fix_steps comes from the settings unless the job says otherwise, and must be a boolean
    fixed = build_request(SETTINGS.replace(img2img_fix_steps=True), {"init_image": init}, never_asked)
    assert fixed.img2img_fix_steps is True
    with pytest.raises(RequestError) as flag:
        build_request(SETTINGS, {"init_image": init, "img2img_fix_steps": "yes"}, never_asked)
    assert flag.value.field == "img2img_fix_steps"
    # A1111's UniPC options likewise: the settings' values unless the job gives its own, checked by name
    unipc = SETTINGS.replace(uni_pc_variant="bh2", uni_pc_order=2)
    req = build_request(unipc, {"sampler": "UniPC"}, lambda: 64)
    assert (req.uni_pc_variant, req.uni_pc_skip_type, req.uni_pc_order, req.uni_pc_lower_order_final) == \
        ("bh2", "time_uniform", 2, True)
    own = build_request(unipc, {"sampler": "UniPC", "uni_pc_skip_type": "time_quadratic", "uni_pc_order": 1},
                        lambda: 64)
    assert (own.uni_pc_variant, own.uni_pc_skip_type, own.uni_pc_order) == ("bh2", "time_quadratic", 1)
    for bad in ({"uni_pc_variant": "vary_coeff"}, {"uni_pc_variant": "BH1"}, {"uni_pc_skip_type": "uniform"},
                {"uni_pc_order": 0}, {"uni_pc_order": "3"}, {"uni_pc_lower_order_final": "yes"}):
        with pytest.raises(RequestError) as unipc_error:
            build_request(SETTINGS, {"sampler": "UniPC", **bad}, lambda: 64)
        assert unipc_error.value.field == next(iter(bad))
    with pytest.raises(RequestError, match="steps"):
        build_request(SETTINGS, {"steps": 0}, lambda: 64)


def test_hires_fix_defaults_to_a1111s_second_pass_strength():
    assert build_request(SETTINGS, {"enable_hr": True}, lambda: 64).denoising_strength == 0.7
    assert build_request(SETTINGS, {"enable_hr": True, "denoising_strength": 0.4}, lambda: 64).denoising_strength == 0.4
    assert build_request(SETTINGS, {}, lambda: 64).denoising_strength == 0.75
