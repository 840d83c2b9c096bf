"""A job on two checkpoints (the refiner switch, the hires checkpoint) and variation seeds in img2img and
inpainting, through the engine on tiny real models."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.infotext import parse_infotext, request_fields_from_infotext
from webui.pipelines.generate import generate
from webui.pipelines.model_switch import switch_step
from webui.pipelines.request import GenerationRequest, RequestError

SIZE = 64


def req(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle", "steps": 6, "width": SIZE, "height": SIZE, "seed": 21, "save_images": False,
            "sampler": "Euler", "checkpoint": "sd1.safetensors"}
    return GenerationRequest(**{**base, **kw})


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(pixels(a), pixels(b))


def distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def with_copy_of_sd1(ctx) -> str:
    """The same weights under another name: a second checkpoint whose switch must change nothing."""
    folder = ctx.manager.registry.checkpoints_dir
    shutil.copy2(folder / "sd1.safetensors", folder / "sd1-twin.safetensors")
    return "sd1-twin.safetensors"


def picture(**kw) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (40, 90, 200))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    return image


# ---------------------------------------------------------------- refiner
def test_switch_step_counts_like_a1111_by_sampling_steps():
    assert switch_step(0.8, 20) == 16
    assert switch_step(0.5, 6) == 3
    assert switch_step(0.0, 6) == 0
    assert switch_step(1.0, 6) is None
    assert switch_step(0.99, 6) is None  # the pass ends before the refiner's turn would come


def test_a_refiner_with_the_same_weights_changes_nothing_and_the_next_job_is_the_main_models(make_context):
    ctx = make_context(["sd1", "sd1b"])
    twin = with_copy_of_sd1(ctx)
    plain = generate(ctx.manager, req()).images[0]
    twinned = generate(ctx.manager, req(refiner_checkpoint=twin, refiner_switch_at=0.5))
    assert same(twinned.images[0], plain), "the switch keeps the sampler's state and the prompt"
    fields = parse_infotext(twinned.infotexts[0])
    assert fields["Refiner"].startswith("sd1-twin") and fields["Refiner switch at"] == 0.5
    refined = generate(ctx.manager, req(refiner_checkpoint="sd1b.safetensors", refiner_switch_at=0.5)).images[0]
    assert distance(refined, plain) > 1, "the last steps ran on another model"
    assert same(generate(ctx.manager, req()).images[0], plain), "the main model got its own UNet back"
    assert ctx.manager.current_name == "sd1.safetensors"


def test_the_switch_point_decides_how_much_the_refiner_draws(make_context):
    ctx = make_context(["sd1", "sd1b"])
    plain = generate(ctx.manager, req()).images[0]
    early = generate(ctx.manager, req(refiner_checkpoint="sd1b.safetensors", refiner_switch_at=0.2)).images[0]
    late = generate(ctx.manager, req(refiner_checkpoint="sd1b.safetensors", refiner_switch_at=0.8)).images[0]
    never = generate(ctx.manager, req(refiner_checkpoint="sd1b.safetensors", refiner_switch_at=1.0))
    assert same(never.images[0], plain) and "Refiner" not in parse_infotext(never.infotexts[0])
    assert distance(late, plain) < distance(early, plain), "a later switch leaves more of the main model's picture"


def test_the_refiner_comes_from_the_ram_cache_without_a_reload(make_context):
    ctx = make_context(["sd1", "sd1b"])
    generate(ctx.manager, req(refiner_checkpoint="sd1b.safetensors"))
    first = ctx.manager.cache.peek("sd1b.safetensors")
    again = generate(ctx.manager, req(refiner_checkpoint="sd1b.safetensors"))
    assert first is not None and ctx.manager.cache.peek("sd1b.safetensors") is first
    assert "Refiner" in parse_infotext(again.infotexts[0])


def test_refiner_in_img2img_and_after_hires_fix(make_context):
    ctx = make_context(["sd1", "sd1b"])
    source = picture()
    plain = generate(ctx.manager, req(init_image=source, denoising_strength=0.8)).images[0]
    refined = generate(ctx.manager, req(init_image=source, denoising_strength=0.8,
                                        refiner_checkpoint="sd1b.safetensors", refiner_switch_at=0.5)).images[0]
    assert distance(refined, plain) > 1
    hires = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.6)
    plain_hr = generate(ctx.manager, req(**hires)).images[0]
    refined_hr = generate(ctx.manager, req(**hires, refiner_checkpoint="sd1b.safetensors",
                                           refiner_switch_at=0.3)).images[0]  # 2 of the 3 hires steps
    assert refined_hr.size == (2 * SIZE, 2 * SIZE) and distance(refined_hr, plain_hr) > 0.5


@pytest.mark.parametrize(("main", "other", "words"), [
    ("sd1.safetensors", "sdxl.safetensors", "different latent spaces"),
    ("sd1-inpaint.safetensors", "sd1.safetensors", "latent channels"),
])
def test_a_refiner_of_another_kind_is_refused_by_name(make_context, main, other, words):
    ctx = make_context(["sd1", "sd1-inpaint", "sdxl"])
    with pytest.raises(RequestError) as caught:
        generate(ctx.manager, req(checkpoint=main, refiner_checkpoint=other))
    assert caught.value.field == "refiner_checkpoint" and words in str(caught.value)
    assert generate(ctx.manager, req()).images, "the next job runs"


def test_refiner_fields_are_checked_and_read_back_from_infotext():
    with pytest.raises(RequestError) as caught:
        req(refiner_switch_at=1.5).validate()
    assert caught.value.field == "refiner_switch_at"
    text = "a cat\nSteps: 6, Sampler: Euler, Seed: 1, Size: 64x64, Refiner: sd1b [0123456789], Refiner switch at: 0.6"
    fields = request_fields_from_infotext(text)
    assert fields["refiner_checkpoint"] == "sd1b [0123456789]" and fields["refiner_switch_at"] == 0.6


# ---------------------------------------------------------------- hires checkpoint
def test_the_hires_pass_runs_on_the_hires_checkpoint(make_context):
    ctx = make_context(["sd1", "sd1b", "sdxl"])
    twin = with_copy_of_sd1(ctx)
    hires = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.6)
    plain = generate(ctx.manager, req(**hires)).images[0]
    assert same(generate(ctx.manager, req(**hires, hr_checkpoint=twin)).images[0], plain)
    other = generate(ctx.manager, req(**hires, hr_checkpoint="sd1b.safetensors"))
    assert other.images[0].size == plain.size and distance(other.images[0], plain) > 1
    fields = parse_infotext(other.infotexts[0])
    assert fields["Hires checkpoint"].startswith("sd1b")
    assert request_fields_from_infotext(other.infotexts[0])["hr_checkpoint"].startswith("sd1b")
    assert not any("not supported" in w for w in other.warnings)
    with pytest.raises(RequestError) as caught:
        generate(ctx.manager, req(**hires, hr_checkpoint="sdxl.safetensors"))
    assert caught.value.field == "hr_checkpoint"


# ---------------------------------------------------------------- variation seeds beyond txt2img
@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_variation_seeds_in_img2img_and_inpainting(make_context, mode):
    ctx = make_context(["sd1"])
    extra = {"init_image": picture(), "denoising_strength": 0.8}
    if mode == "inpaint":
        mask = Image.new("L", (SIZE, SIZE), 0)
        ImageDraw.Draw(mask).rectangle((8, 8, 56, 56), fill=255)
        extra.update(mask=mask, mask_blur=0)
    plain = generate(ctx.manager, req(**extra)).images[0]
    none = generate(ctx.manager, req(**extra, subseed=77, subseed_strength=0.0)).images[0]
    nudged = generate(ctx.manager, req(**extra, subseed=77, subseed_strength=0.02)).images[0]
    full = generate(ctx.manager, req(**extra, subseed=77, subseed_strength=1.0))
    half = generate(ctx.manager, req(**extra, subseed=77, subseed_strength=0.5)).images[0]
    assert same(none, plain), "strength 0 is the seed's own picture"
    apart = distance(plain, full.images[0])
    # The picture's latents are sampled with the seed's generator in every run, so strength 1 keeps that
    # sample and takes only the noise from the variation seed (a plain run of seed 77 samples them anew).
    assert apart > 1 and distance(nudged, plain) < 0.2 * apart, "a small strength is a small change"
    assert 0 < distance(half, plain) < apart and 0 < distance(half, full.images[0]) < apart
    assert parse_infotext(full.infotexts[0])["Variation seed"] == 77
