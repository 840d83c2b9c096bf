"""ControlNet through the engine, on tiny real models: every file format loads the same weights and guides the
picture, the result equals diffusers' own ControlNet pipeline, weight / steps / control modes / hires options
do what they say, several units add up, and wrong files get messages naming them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.support import controlnet_files as cnf
from webui.controlnet.detect import ControlNetFileError
from webui.controlnet.units import ControlMode, ControlResizeMode, ControlUnit, HiresOption, UnitError
from webui.infotext import parse_infotext, request_fields_from_infotext
from webui.jobs import JobControl
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest

SIZE = 64


@pytest.fixture(scope="session")
def cn_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny ControlNets for the tiny SD 1.x and SDXL checkpoints, in every format users have them."""
    from tests.support.tiny_models import tiny_components

    root = tmp_path_factory.mktemp("controlnets")
    out: dict[str, Path] = {}
    sd1, xl = tiny_components("sd1", seed=0)["unet"], tiny_components("sdxl", seed=4)["unet"]
    a, b = cnf.tiny_controlnet(sd1, seed=11), cnf.tiny_controlnet(sd1, seed=12)
    out["sd15_orig"] = cnf.write_original(root / "sd15_orig.safetensors", a)
    out["sd15_noprefix"] = cnf.write_original(root / "sd15_noprefix.safetensors", a, prefix="")
    out["sd15_pth"] = cnf.write_original(root / "sd15_pth.pth", a, pickle=True)
    out["sd15_diffusers"] = cnf.write_diffusers_file(root / "sd15_diffusers.safetensors", a)
    out["sd15_folder"] = cnf.write_diffusers_folder(root / "sd15_folder", a)
    out["sd15_other"] = cnf.write_original(root / "sd15_other.safetensors", b)
    x = cnf.tiny_controlnet(xl, seed=13)
    out["xl_diffusers"] = cnf.write_diffusers_file(root / "xl_diffusers.safetensors", x)
    out["xl_orig"] = cnf.write_original(root / "xl_orig.safetensors", x)
    out["xl_folder"] = cnf.write_diffusers_folder(root / "xl_folder", x)
    out["xl_union"] = cnf.write_diffusers_folder(root / "xl_union", cnf.tiny_union(xl, seed=14))
    return out


@pytest.fixture
def cn_context(make_context, cn_files):
    def build(checkpoints: list[str], controlnets: list[str], **kw):
        ctx = make_context(checkpoints, **kw)
        folder = ctx.settings.models_dir / "ControlNet"
        folder.mkdir(parents=True, exist_ok=True)
        for name in controlnets:
            src = cn_files[name]
            if src.is_dir():
                shutil.copytree(src, folder / src.name)
            else:
                shutil.copy2(src, folder / src.name)
        ctx.manager.controlnets.refresh()
        return ctx
    return build


def outline(box: tuple[int, int, int, int] = (6, 6, 30, 30), size: int = SIZE) -> Image.Image:
    """An outline map: a white square outline on black, top left."""
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).rectangle(box, outline="white", width=2)
    return image


def unit(model: str, **kw) -> ControlUnit:
    return ControlUnit(**{"module": "none", "model": model, "image": outline(), **kw})


def req(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle", "steps": 4, "width": SIZE, "height": SIZE, "seed": 3, "save_images": False,
            "sampler": "Euler", "checkpoint": "sd1.safetensors"}
    return GenerationRequest(**{**base, **kw})


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def run(ctx, **kw) -> np.ndarray:
    return pixels(generate(ctx.manager, req(**kw)).images[0])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


# ---------------------------------------------------------------- formats
@pytest.mark.slow
def test_every_format_of_an_sd15_controlnet_loads_the_same_weights_and_guides_the_picture(cn_context):
    names = ["sd15_orig", "sd15_noprefix", "sd15_pth", "sd15_diffusers", "sd15_folder"]
    ctx = cn_context(["sd1"], names)
    titles = ctx.manager.controlnets.titles()
    assert [t.split(" [")[0] for t in titles] == sorted(names)
    plain = run(ctx)
    pictures = [run(ctx, controlnet_units=[unit(name)]) for name in names]
    assert distance(pictures[0], plain) > 2, "the ControlNet changes the picture"
    for name, picture in zip(names[1:], pictures[1:], strict=True):
        assert np.array_equal(picture, pictures[0]), f"{name} holds the same weights as the original layout"


@pytest.mark.slow
def test_sdxl_controlnets_single_file_in_both_layouts_and_folder(cn_context):
    ctx = cn_context(["sdxl"], ["xl_diffusers", "xl_orig", "xl_folder"])
    plain = run(ctx, checkpoint="sdxl.safetensors")
    pictures = [run(ctx, checkpoint="sdxl.safetensors", controlnet_units=[unit(name)])
                for name in ("xl_diffusers", "xl_orig", "xl_folder")]
    assert distance(pictures[0], plain) > 2
    assert np.array_equal(pictures[0], pictures[1]) and np.array_equal(pictures[0], pictures[2])


@pytest.mark.slow
def test_an_sd21_shaped_controlnet_in_the_original_layout(cn_context):
    from tests.support.tiny_models import tiny_components, write_single_file

    ctx = cn_context(["sd1"], [])
    parts = tiny_components("sd2", seed=6)  # one resnet per level, linear projections: other counts than SD 1.x
    write_single_file(ctx.settings.models_dir / "Stable-diffusion" / "sd2.safetensors", "sd2", parts)
    ctx.registry.refresh()
    folder = ctx.settings.models_dir / "ControlNet"
    cnf.write_original(folder / "sd21_canny.safetensors", cnf.tiny_controlnet(parts["unet"], seed=15), prefix="")
    plain = run(ctx, checkpoint="sd2.safetensors")
    guided = run(ctx, checkpoint="sd2.safetensors", controlnet_units=[unit("sd21_canny")])
    assert distance(guided, plain) > 1
    with pytest.raises(ControlNetFileError, match="sd21_canny.safetensors cannot guide checkpoint sd1: its blocks"):
        run(ctx, checkpoint="sd1.safetensors", controlnet_units=[unit("sd21_canny")])


@pytest.mark.slow
def test_a_union_controlnet_loads_takes_its_control_type_from_the_module_and_guides(cn_context):
    ctx = cn_context(["sdxl"], ["xl_union"])
    xl = {"checkpoint": "sdxl.safetensors"}
    plain = run(ctx, **xl)
    dark_lines = outline().point(lambda v: 255 - v)
    edges = run(ctx, **xl, controlnet_units=[unit("xl_union", module="invert", image=dark_lines)])
    tile = run(ctx, **xl, controlnet_units=[unit("xl_union", module="tile_resample")])
    assert distance(edges, plain) > 2
    assert distance(tile, edges) > 0.01, "the same map given as another control type guides otherwise"
    with pytest.raises(UnitError) as raised:
        run(ctx, **xl, controlnet_units=[unit("xl_union", module="shuffle")])
    assert raised.value.field == "controlnet_units[0].module" and "control type" in str(raised.value)


def test_the_result_equals_diffusers_own_controlnet_pipeline(cn_context):
    from diffusers import StableDiffusionControlNetPipeline

    from webui.pipelines.conditioning import PromptEncoder, build_conditioning
    from webui.pipelines.schedulers import make_scheduler
    from webui.samplers import resolve_sampler

    ctx = cn_context(["sd1"], ["sd15_folder"])
    ours = run(ctx, controlnet_units=[unit("sd15_folder", weight=0.7, resize_mode=ControlResizeMode.JUST_RESIZE)])
    model = ctx.manager.load("sd1.safetensors")
    entry = ctx.manager.controlnets.find("sd15_folder")
    with ctx.manager.controlnets.use(entry, dict(model.components["unet"].config), torch.float32) as loaded:
        encoder = PromptEncoder(model.components, False, 1, torch.device("cpu"), {})
        positive, negative = build_conditioning(encoder, "a red circle", "", 4).at(1)
        c = model.components
        scheduler = make_scheduler(resolve_sampler("Euler", "Automatic"), c["scheduler"].config, noise_seeds=[3])
        pipe = StableDiffusionControlNetPipeline(c["vae"], c["text_encoder"], c["tokenizer"], c["unet"], loaded.model,
                                                 scheduler, None, None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        with torch.inference_mode():
            theirs = pipe(prompt_embeds=positive.embeds, negative_prompt_embeds=negative.embeds, image=outline(),
                          num_inference_steps=4, guidance_scale=7.0, width=SIZE, height=SIZE,
                          generator=[torch.Generator("cpu").manual_seed(3)],
                          controlnet_conditioning_scale=0.7).images[0]
    assert np.array_equal(ours, pixels(theirs))


# ---------------------------------------------------------------- what the unit fields do
def test_weight_zero_is_no_controlnet_pixel_for_pixel(cn_context):
    ctx = cn_context(["sd1"], ["sd15_orig", "sd15_other"])
    assert np.array_equal(run(ctx, controlnet_units=[unit("sd15_orig", weight=0.0)]), run(ctx))
    one = run(ctx, controlnet_units=[unit("sd15_orig")])
    with_zero = run(ctx, controlnet_units=[unit("sd15_orig"), unit("sd15_other", weight=0.0)])
    assert np.array_equal(one, with_zero)
    assert np.array_equal(run(ctx, controlnet_units=[unit("sd15_orig", enabled=False)]), run(ctx))


def test_two_units_at_once_both_count(cn_context):
    ctx = cn_context(["sd1"], ["sd15_orig", "sd15_other"])
    a = run(ctx, controlnet_units=[unit("sd15_orig")])
    b = run(ctx, controlnet_units=[unit("sd15_other", image=outline((34, 34, 58, 58)))])
    both = run(ctx, controlnet_units=[unit("sd15_orig"), unit("sd15_other", image=outline((34, 34, 58, 58)))])
    assert distance(both, a) > 1 and distance(both, b) > 1


@pytest.mark.slow
def test_guidance_steps_and_weight_change_the_picture(cn_context):
    ctx = cn_context(["sd1"], ["sd15_orig"])
    full = run(ctx, steps=8, controlnet_units=[unit("sd15_orig")])
    half = run(ctx, steps=8, controlnet_units=[unit("sd15_orig", guidance_end=0.5)])
    late = run(ctx, steps=8, controlnet_units=[unit("sd15_orig", guidance_start=0.5)])
    light = run(ctx, steps=8, controlnet_units=[unit("sd15_orig", weight=0.4)])
    plain = run(ctx, steps=8)
    assert distance(full, half) > 0.05 and distance(full, late) > 0.05 and distance(half, late) > 0.05
    assert distance(light, plain) < distance(full, plain), "a lighter weight guides less"


def test_control_modes_differ_as_the_extension_defines_them(cn_context):
    ctx = cn_context(["sd1"], ["sd15_orig"])
    modes = [run(ctx, controlnet_units=[unit("sd15_orig", control_mode=mode)]) for mode in ControlMode]
    balanced, prompt, control = modes
    assert distance(balanced, prompt) > 0.5 and distance(balanced, control) > 0.5 and distance(prompt, control) > 0.5
    # Without CFG there is no unconditional half: "ControlNet is more important" is then the soft injection alone,
    # and the soft injection (residuals scaled down, shallowest most) guides less than the full residuals.
    # (With CFG and at full weight the tiny random model made that comparison a near tie.)
    no_cfg = {mode: run(ctx, cfg_scale=1.0, controlnet_units=[unit("sd15_orig", control_mode=mode)])
              for mode in ControlMode}
    assert np.array_equal(no_cfg[ControlMode.CONTROL], no_cfg[ControlMode.PROMPT])
    # At a low weight, where the tiny random ControlNet's huge residuals do not saturate the picture.
    plain = run(ctx, cfg_scale=1.0)
    soft, full = (distance(run(ctx, cfg_scale=1.0, controlnet_units=[unit("sd15_orig", control_mode=m, weight=0.02)]),
                           plain) for m in (ControlMode.PROMPT, ControlMode.BALANCED))
    assert soft < 0.9 * full, f"soft injection guides less than balanced ({soft:.2f} vs {full:.2f})"


@pytest.mark.slow
def test_img2img_and_inpainting_with_a_unit(cn_context):
    ctx = cn_context(["sd1"], ["sd15_orig"])
    init = Image.new("RGB", (SIZE, SIZE), (30, 60, 200))
    img2img = {"init_image": init, "denoising_strength": 0.8}
    plain = run(ctx, **img2img)
    guided = run(ctx, **img2img, controlnet_units=[unit("sd15_orig")])
    assert distance(guided, plain) > 1
    from_init = run(ctx, **img2img, controlnet_units=[unit("sd15_orig", image=None)])
    given_init = run(ctx, **img2img, controlnet_units=[unit("sd15_orig", image=init)])
    assert np.array_equal(from_init, given_init), "a unit without image takes the init image"
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 40, 40), fill=255)
    inpainted = run(ctx, **img2img, mask=mask, mask_blur=0, controlnet_units=[unit("sd15_orig")])
    not_guided = run(ctx, **img2img, mask=mask, mask_blur=0)
    assert np.array_equal(inpainted[48:, 48:], pixels(init)[48:, 48:]), "outside the mask the picture stays"
    assert distance(inpainted[:40, :40], not_guided[:40, :40]) > 1


def test_an_inpainting_checkpoint_takes_an_sd15_controlnet(cn_context):
    ctx = cn_context(["sd1-inpaint"], ["sd15_orig"])
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 40, 40), fill=255)
    inpaint = {"checkpoint": "sd1-inpaint.safetensors", "init_image": Image.new("RGB", (SIZE, SIZE), (30, 60, 200)),
               "mask": mask, "mask_blur": 0}
    assert distance(run(ctx, **inpaint, controlnet_units=[unit("sd15_orig")]), run(ctx, **inpaint)) > 0.5


@pytest.mark.slow
def test_hires_fix_applies_units_to_the_passes_their_hr_option_names(cn_context):
    ctx = cn_context(["sd1"], ["sd15_orig"])
    hires = {"enable_hr": True, "hr_scale": 2.0, "denoising_strength": 0.6, "hr_upscaler": "Latent"}
    plain = run(ctx, **hires)
    pictures = {option: run(ctx, **hires, controlnet_units=[unit("sd15_orig", hr_option=option)])
                for option in HiresOption}
    assert all(p.shape == (128, 128, 3) for p in pictures.values())
    values = [plain, *pictures.values()]
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert distance(values[i], values[j]) > 0.05, (i, j)


@pytest.mark.slow
def test_units_guide_until_a_refiner_takes_over(cn_context):
    ctx = cn_context(["sd1", "sd1b"], ["sd15_orig"])
    refine = {"steps": 8, "refiner_checkpoint": "sd1b.safetensors", "refiner_switch_at": 0.5}
    refined = run(ctx, **refine)
    guided = run(ctx, **refine, controlnet_units=[unit("sd15_orig")])
    until_half = run(ctx, **refine, controlnet_units=[unit("sd15_orig", guidance_end=0.5)])
    assert distance(guided, refined) > 1
    # After the switch the refiner's UNet denoises without the ControlNet, as with the extension in A1111:
    # guiding to the end and to the switch point are the same picture.
    assert np.array_equal(guided, until_half)


def test_progress_and_interrupt_keep_working_with_a_unit(cn_context):
    ctx = cn_context(["sd1"], ["sd15_orig"])
    seen = []

    def listener(progress):
        seen.append(progress.step)
        if progress.step == 2:
            control.interrupt()

    control = JobControl(listener=listener)
    result = generate(ctx.manager, req(steps=10, batch_count=2, controlnet_units=[unit("sd15_orig")]), control=control)
    assert result.interrupted and len(result.images) == 1 and max(seen) == 2


# ---------------------------------------------------------------- infotext and names
def test_each_unit_is_written_in_the_infotext_and_reads_back(cn_context):
    ctx = cn_context(["sd1"], ["sd15_orig", "sd15_other"])
    units = [unit("sd15_orig", module="canny", image=Image.new("RGB", (SIZE, SIZE), "white"), weight=0.5),
             ControlUnit(enabled=False), unit("SD15_OTHER", guidance_end=0.75, control_mode=1)]
    units[2] = units[2].replace(control_mode=ControlMode.PROMPT)
    result = generate(ctx.manager, req(controlnet_units=units))
    text = result.infotexts[0]
    titles = dict(t.split(" [") for t in ctx.manager.controlnets.titles())
    assert (f'ControlNet 0: "Module: canny, Model: sd15_orig [{titles["sd15_orig"]}, Weight: 0.5, Resize Mode: Crop '
            'and Resize, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance '
            'End: 1.0, Pixel Perfect: False, Control Mode: Balanced"') in text
    assert "ControlNet 1:" not in text and "ControlNet 2:" in text and "My prompt is more important" in text
    back = request_fields_from_infotext(text)["controlnet_units"]
    assert back[2].model == f"sd15_other [{titles['sd15_other']}" and back[2].guidance_end == 0.75
    assert parse_infotext(text)["Seed"] == 3


def test_unknown_models_and_files_that_are_not_controlnets_are_named(cn_context):
    ctx = cn_context(["sd1"], ["sd15_orig"])
    with pytest.raises(UnitError) as raised:
        run(ctx, controlnet_units=[ControlUnit(enabled=False), unit("nope")])
    assert raised.value.field == "controlnet_units[1].model" and "sd15_orig [" in str(raised.value)
    folder = ctx.settings.models_dir / "ControlNet"
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    shutil.copy2(ctx.settings.models_dir / "Stable-diffusion" / "sd1.safetensors", folder / "a_checkpoint.safetensors")
    for name, words in (("broken", "broken.safetensors"), ("a_checkpoint", "models/Stable-diffusion")):
        with pytest.raises(ControlNetFileError) as error:
            run(ctx, controlnet_units=[unit(name)])
        assert words in str(error.value) and error.value.field == "controlnet_units[0].model"
    assert run(ctx).shape == (SIZE, SIZE, 3), "the next job runs normally"


def test_an_sdxl_controlnet_with_an_sd1_checkpoint_is_refused_clearly(cn_context):
    ctx = cn_context(["sd1"], ["xl_diffusers", "sd15_orig"])
    with pytest.raises(ControlNetFileError) as raised:
        run(ctx, controlnet_units=[unit("xl_diffusers")])
    message = str(raised.value)
    assert "xl_diffusers.safetensors" in message and "sd1" in message and "made for SDXL" in message
    assert raised.value.field == "controlnet_units[0].model"
    assert not ctx.manager.controlnets.loaded(), "nothing was loaded for it"
    assert run(ctx, controlnet_units=[unit("sd15_orig")]).shape == (SIZE, SIZE, 3), "the next job runs normally"


# ---------------------------------------------------------------- memory
def test_controlnets_live_in_the_checkpoint_cache_budget_least_recently_used_first(cn_context):
    probe = cn_context(["sd1"], ["sd15_orig"])
    checkpoint = probe.manager.load("sd1.safetensors").nbytes
    run(probe, controlnet_units=[unit("sd15_orig")])
    one = probe.manager.cache.total_bytes - checkpoint
    assert one > 0
    ctx = cn_context(["sd1"], ["sd15_orig", "sd15_other"], ram_cache_bytes=checkpoint + int(1.5 * one))
    run(ctx, controlnet_units=[unit("sd15_orig")])
    assert [k.split("|")[0] for k in ctx.manager.controlnets.loaded()] == ["ControlNet/sd15_orig"]
    run(ctx, controlnet_units=[unit("sd15_other")])
    assert [k.split("|")[0] for k in ctx.manager.controlnets.loaded()] == ["ControlNet/sd15_other"]
    assert "sd1.safetensors" in ctx.manager.cache.keys(), "the checkpoint in use is never evicted for a ControlNet"
    assert ctx.manager.cache.total_bytes <= ctx.manager.cache.budget_bytes
