"""Variation seeds and hires fix through the engine, on tiny real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from webui.infotext import parse_infotext
from webui.jobs import JobControl
from webui.pipelines.generate import generate
from webui.pipelines.noise import seed_noise, variation_noise
from webui.pipelines.request import GenerationRequest, RequestError

SIZE = 64


def req(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle", "steps": 4, "width": SIZE, "height": SIZE, "seed": 11, "save_images": False,
            "sampler": "Euler", "checkpoint": "sd1.safetensors"}
    return GenerationRequest(**{**base, **kw})


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


# ---------------------------------------------------------------- variation seeds
def test_variation_strength_goes_from_the_seed_to_the_variation_seed(make_context):
    ctx = make_context(["sd1"])
    plain = generate(ctx.manager, req()).images[0]
    other = generate(ctx.manager, req(seed=99)).images[0]
    none = generate(ctx.manager, req(subseed=99, subseed_strength=0.0)).images[0]
    full = generate(ctx.manager, req(subseed=99, subseed_strength=1.0)).images[0]
    half = generate(ctx.manager, req(subseed=99, subseed_strength=0.5)).images[0]
    assert np.array_equal(pixels(none), pixels(plain)), "strength 0 is the seed's own picture"
    assert np.array_equal(pixels(full), pixels(other)), "strength 1 is the variation seed's picture"
    apart = distance(plain, other)
    assert apart > 1
    assert 0 < distance(half, plain) < apart and 0 < distance(half, other) < apart


def test_a_batch_with_variation_keeps_the_seed_and_counts_the_variation_seeds(make_context):
    ctx = make_context(["sd1"])
    result = generate(ctx.manager, req(subseed=40, subseed_strength=0.3, batch_size=2, batch_count=2))
    assert result.seeds == [11, 11, 11, 11] and result.subseeds == [40, 41, 42, 43]
    fields = [parse_infotext(text) for text in result.infotexts]
    assert [f["Variation seed"] for f in fields] == [40, 41, 42, 43]
    assert {f["Variation seed strength"] for f in fields} == {0.3}
    alone = generate(ctx.manager, req(subseed=42, subseed_strength=0.3)).images[0]
    assert np.array_equal(pixels(result.images[2]), pixels(alone)), "image 3 equals a single run with its subseed"


def test_resized_seed_noise_is_the_old_noise_centred():
    wide = variation_noise((4, 8, 12), seed=5, subseed=0, strength=0.0, resize_from=(64, 64))
    assert torch.equal(wide[:, :, 2:10], seed_noise(5, (4, 8, 8)))
    small = variation_noise((4, 6, 6), seed=5, subseed=0, strength=0.0, resize_from=(64, 64))
    assert torch.equal(small, seed_noise(5, (4, 8, 8))[:, 1:7, 1:7])


def test_seed_resize_from_keeps_a_seeds_composition_at_a_new_size(make_context):
    ctx = make_context(["sd1"])
    square = generate(ctx.manager, req()).images[0]
    wider = generate(ctx.manager, req(width=96, seed_resize_from_w=SIZE, seed_resize_from_h=SIZE)).images[0]
    plain_wider = generate(ctx.manager, req(width=96)).images[0]
    centre = wider.crop((16, 0, 80, SIZE))
    assert distance(centre, square) < distance(plain_wider.crop((16, 0, 80, SIZE)), square)
    text = generate(ctx.manager, req(width=96, seed_resize_from_w=SIZE, seed_resize_from_h=SIZE)).infotexts[0]
    assert parse_infotext(text)["Seed resize from"] == "64x64"


# ---------------------------------------------------------------- hires fix
def test_hires_fix_makes_the_picture_at_twice_the_size_and_says_so(make_context):
    ctx = make_context(["sd1"])
    control = JobControl()
    steps_seen = []
    control.listener = lambda progress: steps_seen.append((progress.step, progress.steps))
    result = generate(ctx.manager, req(enable_hr=True, hr_scale=2.0, denoising_strength=0.5, hr_second_pass_steps=6),
                      control=control)
    assert result.images[0].size == (2 * SIZE, 2 * SIZE)
    fields = parse_infotext(result.infotexts[0])
    assert fields["Size"] == "64x64" and fields["Hires upscale"] == 2.0 and fields["Hires upscaler"] == "Latent"
    assert fields["Hires steps"] == 6 and fields["Denoising strength"] == 0.5
    # The progress line counts both passes: 4 first-pass steps, then all 6 hires steps (A1111 runs the hires pass's
    # own step count whatever the strength, on a schedule stretched to 6 / 0.5 steps).
    assert steps_seen[-1] == (10, 10) and (4, 10) in steps_seen


def test_hires_second_pass_changes_the_picture_beyond_a_plain_enlargement(make_context):
    ctx = make_context(["sd1"])
    first = generate(ctx.manager, req()).images[0]
    hires = generate(ctx.manager, req(enable_hr=True, denoising_strength=0.7)).images[0]
    enlarged = first.resize(hires.size, Image.Resampling.LANCZOS)
    assert distance(hires, enlarged) > 1
    # ... while keeping the first pass's composition: closer to its enlargement than another seed's is.
    other = generate(ctx.manager, req(seed=12)).images[0].resize(hires.size, Image.Resampling.LANCZOS)
    assert distance(hires, enlarged) < distance(other, enlarged)


def test_hires_resize_to_a_size_with_another_aspect_crops_to_it(make_context):
    ctx = make_context(["sd1"])
    result = generate(ctx.manager, req(enable_hr=True, hr_resize_x=128, hr_resize_y=96, denoising_strength=0.5,
                                       hr_upscaler="Latent (nearest-exact)"))
    assert result.images[0].size == (128, 96)
    fields = parse_infotext(result.infotexts[0])
    assert fields["Hires resize"] == "128x96" and "Hires upscale" not in fields


def test_hires_prompt_sampler_and_cfg_reach_the_second_pass(make_context):
    ctx = make_context(["sd1"])
    # 0.9: the tiny model's pictures move little with prompt and sampler; at 0.6 (4 steps on A1111's schedule stretched
    # to 6) the two passes happen to end within a level of each other
    same = generate(ctx.manager, req(enable_hr=True, denoising_strength=0.9)).images[0]
    own = generate(ctx.manager, req(enable_hr=True, denoising_strength=0.9, hr_prompt="a blue square",
                                    hr_sampler="DPM++ 2M", hr_cfg_scale=3.0))
    assert distance(own.images[0], same) > 1
    fields = parse_infotext(own.infotexts[0])
    assert (fields["Hires prompt"], fields["Hires sampler"], fields["Hires CFG Scale"]) == \
        ("a blue square", "DPM++ 2M", 3.0)


@pytest.mark.parametrize(("changes", "field"), [
    ({"hr_scale": 0.0}, "hr_scale"),
    ({"hr_scale": 10.0}, "hr_scale"),
    ({"hr_second_pass_steps": -1}, "hr_second_pass_steps"),
    ({"hr_resize_x": 9000}, "hr_resize_x"),
    ({"hr_scale": 4.0, "width": 2048, "height": 2048}, "hr_scale"),
    ({"subseed": "seven"}, "subseed"),
    ({"subseed_strength": 1.5}, "subseed_strength"),
])
def test_bad_hires_and_variation_fields_are_named(changes, field):
    with pytest.raises(RequestError) as caught:
        req(enable_hr=True, **changes).validate()
    assert caught.value.field == field


def test_hires_and_variation_infotext_reads_back_as_the_same_request(make_context):
    from webui.infotext import request_fields_from_infotext

    ctx = make_context(["sd1"])
    asked = req(enable_hr=True, hr_resize_x=128, hr_resize_y=96, hr_upscaler="Latent (bicubic)",
                hr_second_pass_steps=4, hr_prompt="a blue square", hr_cfg_scale=4.0, denoising_strength=0.5,
                subseed=5, subseed_strength=0.25, seed_resize_from_w=64, seed_resize_from_h=64)
    result = generate(ctx.manager, asked)
    fields = request_fields_from_infotext(result.infotexts[0])
    names = ("enable_hr", "hr_resize_x", "hr_resize_y", "hr_upscaler", "hr_second_pass_steps", "hr_prompt",
             "hr_cfg_scale", "denoising_strength", "subseed", "subseed_strength", "seed_resize_from_w",
             "seed_resize_from_h", "steps", "seed")
    assert {n: fields.get(n) for n in names} == {n: getattr(asked, n) for n in names}
    again = generate(ctx.manager, GenerationRequest(**{**fields, "checkpoint": "sd1.safetensors",
                                                       "save_images": False}))
    assert np.array_equal(pixels(again.images[0]), pixels(result.images[0])), "pasted parameters repeat the picture"


def test_hires_with_a_pixel_upscaler_decodes_enlarges_and_encodes_again(make_context):
    ctx = make_context(["sd1"])
    result = generate(ctx.manager, req(enable_hr=True, hr_upscaler="Lanczos", denoising_strength=0.5))
    latent = generate(ctx.manager, req(enable_hr=True, hr_upscaler="Latent", denoising_strength=0.5))
    assert result.images[0].size == (128, 128) and parse_infotext(result.infotexts[0])["Hires upscaler"] == "Lanczos"
    assert distance(result.images[0], latent.images[0]) > 0.5, "the upscaler is part of the picture"
    with pytest.raises(RequestError) as caught:
        generate(ctx.manager, req(enable_hr=True, hr_upscaler="Magic 16x"))
    assert caught.value.field == "hr_upscaler" and "Lanczos" in str(caught.value)
