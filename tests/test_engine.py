"""The engine end to end on tiny real models: loading, hot swap, shared weights, seeds, img2img,
inpainting, outputs, bad files and concurrency."""

from __future__ import annotations

import io
import os
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui.infotext import parse_infotext
from webui.jobs import JobControl
from webui.models.loader import CheckpointLoadError, UnsafeCheckpointError
from webui.outputs import read_infotext
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest, InpaintArea, RequestError, Task

SIZE = 64


def req(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle", "steps": 3, "width": SIZE, "height": SIZE, "seed": 1, "save_images": False}
    base.update(kw)
    return GenerationRequest(**base)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_single_file_and_diffusers_folder_generate(make_context):
    ctx = make_context(["sd1", "folder", "sdxl"])
    titles = [e.name for e in ctx.registry.entries()]
    assert titles == ["sd1-folder", "sd1.safetensors", "sdxl.safetensors"]
    for name in titles:
        result = generate(ctx.manager, req(checkpoint=name))
        assert len(result.images) == 1 and result.images[0].size == (SIZE, SIZE)
        assert pixels(result.images[0]).std() > 1  # not a blank picture
        assert ctx.manager.cache.get(name).arch == ("sdxl" if "xl" in name else "sd1")


@pytest.mark.slow
def test_different_checkpoints_give_different_pictures(make_context):
    ctx = make_context(["sd1", "sd1b"])
    a = generate(ctx.manager, req(checkpoint="sd1.safetensors")).images[0]
    b = generate(ctx.manager, req(checkpoint="sd1b.safetensors")).images[0]
    assert np.abs(pixels(a) - pixels(b)).mean() > 1


def test_titles_gain_a_hash_lazily(make_context):
    ctx = make_context(["sd1"])
    entry = ctx.registry.find("sd1")
    assert entry.title == "sd1.safetensors"  # listing never hashed the file
    digest = entry.compute_sha256()
    assert entry.title == f"sd1.safetensors [{digest[:10]}]"
    assert ctx.registry.find(entry.title) is entry and ctx.registry.find(digest[:10]) is entry


@pytest.mark.slow
def test_hot_swap_keeps_recent_models_in_ram_and_evicts_by_bytes(make_context, tiny_files):
    probe = make_context(["sd1"])
    one = probe.manager.load("sd1").nbytes
    ctx = make_context(["sd1", "sd1b", "sd1c"], ram_cache_bytes=int(2.5 * one))
    ctx.manager.load("sd1")
    ctx.manager.load("sd1b")
    assert ctx.manager.cache.keys() == ["sd1.safetensors", "sd1b.safetensors"]
    ctx.manager.load("sd1c")  # third one: the least recently used (sd1) goes
    assert ctx.manager.cache.keys() == ["sd1b.safetensors", "sd1c.safetensors"]
    # A cached checkpoint is served from RAM: it still works with its file gone from disk.
    moved = ctx.registry.find("sd1b").path
    moved.rename(moved.with_suffix(".bak"))
    result = generate(ctx.manager, req(checkpoint="sd1b.safetensors"))
    assert result.images and ctx.manager.current_name == "sd1b.safetensors"


def test_three_tasks_share_one_set_of_weights(make_context):
    ctx = make_context(["sd1"])
    model = ctx.manager.load("sd1")
    scheduler = model.components["scheduler"]
    pipes = [ctx.manager.pipeline(model, task, scheduler) for task in Task]
    for attr in ("unet", "vae", "text_encoder"):
        ptrs = {next(getattr(p, attr).parameters()).data_ptr() for p in pipes}
        assert len(ptrs) == 1, attr
    assert len({id(p) for p in pipes}) == 3


def test_image_i_of_a_batch_equals_a_single_run_with_seed_plus_i(make_context):
    ctx = make_context(["sd1"])
    batch = generate(ctx.manager, req(seed=100, batch_size=3, sampler="Euler a"))
    assert batch.seeds == [100, 101, 102]
    for i, image in enumerate(batch.images):
        single = generate(ctx.manager, req(seed=100 + i, sampler="Euler a")).images[0]
        assert np.array_equal(pixels(image), pixels(single)), f"image {i}"
    counted = generate(ctx.manager, req(seed=7, batch_count=2, batch_size=2))
    assert counted.seeds == [7, 8, 9, 10] and len(counted.images) == 4


def test_random_seed_is_resolved_and_reported(make_context):
    ctx = make_context(["sd1"])
    result = generate(ctx.manager, req(seed=-1))
    assert 0 <= result.seeds[0] < 4294967294
    assert f"Seed: {result.seeds[0]}" in result.infotexts[0]


def _init_image() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (30, 60, 200))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(20, 200, 40))
    return image


def test_img2img_strength_controls_how_much_the_init_image_survives(make_context):
    # Random tiny weights cannot reproduce a picture, so compare what the init image decides: at low
    # strength two different init images give clearly different results, each nearer its own init's
    # VAE round trip; at strength 1.0 the init image hardly matters.
    ctx = make_context(["sd1"])
    model = ctx.manager.load("sd1")
    init_a = _init_image()
    init_b = Image.fromarray(255 - np.asarray(init_a))
    with torch.inference_mode():
        from diffusers.image_processor import VaeImageProcessor

        proc = VaeImageProcessor(vae_scale_factor=8)
        vae = model.components["vae"]
        roundtrip_a = proc.postprocess(vae.decode(vae.encode(proc.preprocess(init_a)).latent_dist.mode()).sample)[0]

    def run(init, strength):
        return pixels(generate(ctx.manager, req(init_image=init, denoising_strength=strength, steps=10)).images[0])

    # 0.1 of 10 steps: A1111 runs t_enc + 1 = 2 steps, from the schedule's third-last sigma
    low_a, low_b, full_a, full_b = run(init_a, 0.1), run(init_b, 0.1), run(init_a, 1.0), run(init_b, 1.0)
    assert np.abs(low_a - low_b).mean() > 3 * np.abs(full_a - full_b).mean()
    assert np.abs(low_a - pixels(roundtrip_a)).mean() < np.abs(low_b - pixels(roundtrip_a)).mean()


@pytest.mark.parametrize(("sampler", "fix_steps", "expected"), [
    ("Euler", False, 5), ("Euler", True, 8), ("DDIM", False, 4), ("UniPC", False, 4), ("UniPC", True, 7),
    ("PLMS", False, 5), ("LCM", False, 4)])
def test_img2img_runs_a1111s_step_count(make_context, sampler, fix_steps, expected):
    """8 steps at strength 0.5: A1111's k-diffusion samplers run t_enc + 1 = 5, exactly 8 with img2img_fix_steps
    (on a 16-step schedule); its DDIM and UniPC run t_enc = 4 (7 with the fix), PLMS evaluates t_enc + 1 = 5 times
    (its first step twice); LCM keeps diffusers' 8 x 0.5."""
    ctx = make_context(["sd1"])
    control, seen = JobControl(), []
    control.listener = lambda progress: seen.append(progress.steps)
    generate(ctx.manager, req(init_image=_init_image(), denoising_strength=0.5, steps=8, sampler=sampler,
                              img2img_fix_steps=fix_steps), control=control)
    assert seen and seen[-1] == expected


def _assert_inpainting_keeps_the_rest(ctx, init: Image.Image, sampler: str) -> None:
    """An inpainting job with ``sampler`` leaves the pixels outside its mask (and blur margin) as they were."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((20, 20, 43, 43), fill=255)
    out = pixels(generate(ctx.manager, req(init_image=init, mask=mask, mask_blur=2, denoising_strength=0.8,
                                           inpaint_padding=4, sampler=sampler, steps=8)).images[0])
    outside = np.ones((SIZE, SIZE), bool)
    outside[14:50, 14:50] = False
    assert np.array_equal(out[outside], pixels(init)[outside])


@pytest.mark.slow
def test_dpm_adaptive_runs_until_its_solver_is_done(make_context):
    """DPM adaptive through the real pipelines: the run ends when the solver reaches the end (not after the room
    its timesteps leave), the progress ends at the evaluations it made, and img2img and inpainting work with it."""
    ctx = make_context(["sd1"])
    control, seen = JobControl(), []
    control.listener = lambda progress: seen.append((progress.step, progress.steps))
    image = generate(ctx.manager, req(sampler="DPM adaptive", steps=4), control=control).images[0]
    assert image.size == (SIZE, SIZE)
    last_step, last_total = seen[-1]
    assert 3 <= last_step < 1000 and last_step == last_total and last_step % 3 == 0  # three calls a try
    other = generate(ctx.manager, req(sampler="DPM fast", steps=4)).images[0]
    assert not np.array_equal(pixels(image), pixels(other))
    init = _init_image()
    _assert_inpainting_keeps_the_rest(ctx, init, "DPM adaptive")
    with pytest.raises(RequestError, match="DPM adaptive"):
        generate(ctx.manager, req(init_image=init, denoising_strength=0.2, steps=4, sampler="DPM adaptive"))
    hires = generate(ctx.manager, req(sampler="DPM adaptive", steps=4, enable_hr=True, hr_scale=2.0,
                                      hr_upscaler="Lanczos", denoising_strength=0.5)).images[0]
    assert hires.size == (2 * SIZE, 2 * SIZE)


@pytest.mark.slow
def test_unipc_img2img_follows_strength_and_inpainting_keeps_the_rest(make_context):
    """A1111's UniPC through the real pipelines: img2img starts from the picture (a low strength keeps it more than
    a high one), inpainting leaves pixels outside the mask as they were, and the hires pass runs."""
    ctx = make_context(["sd1"])
    init = _init_image()
    inverted = Image.fromarray(255 - np.asarray(init))

    def img2img(source, strength):
        return pixels(generate(ctx.manager, req(init_image=source, denoising_strength=strength, steps=8,
                                                sampler="UniPC")).images[0])

    # the tiny model's pictures follow their source at a low strength far more than at a high one
    low = np.abs(img2img(init, 0.3) - img2img(inverted, 0.3)).mean()
    high = np.abs(img2img(init, 0.9) - img2img(inverted, 0.9)).mean()
    assert low > 2 * high, (low, high)
    _assert_inpainting_keeps_the_rest(ctx, init, "UniPC")
    hires = generate(ctx.manager, req(sampler="UniPC", steps=4, enable_hr=True, hr_scale=2.0, hr_upscaler="Lanczos",
                                      denoising_strength=0.5)).images[0]
    assert hires.size == (2 * SIZE, 2 * SIZE)


@pytest.mark.slow
@pytest.mark.parametrize("area", [InpaintArea.WHOLE_PICTURE, InpaintArea.ONLY_MASKED])
@pytest.mark.parametrize("model_name", ["sd1", "sd1-inpaint"])
def test_inpainting_leaves_pixels_outside_the_mask_identical(make_context, area, model_name):
    ctx = make_context([model_name])
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "RGB")
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((20, 20, 43, 43), fill=255)
    result = generate(
        ctx.manager, req(init_image=init, mask=mask, mask_blur=2, denoising_strength=1.0, inpaint_area=area,
                         inpaint_padding=4)
    )
    out = pixels(result.images[0])
    outside = np.ones((SIZE, SIZE), bool)
    outside[14:50, 14:50] = False  # mask plus a margin wider than the blur
    assert np.array_equal(out[outside], pixels(init)[outside])
    inside = np.abs(out[24:40, 24:40] - pixels(init)[24:40, 24:40]).mean()
    assert inside > 10  # the masked area was repainted


def test_empty_mask_is_a_clear_error(make_context):
    ctx = make_context(["sd1"])
    with pytest.raises(RequestError, match="mask"):
        generate(ctx.manager, req(init_image=_init_image(), mask=Image.new("L", (SIZE, SIZE), 0)))


@pytest.mark.slow
def test_saved_files_carry_parseable_infotext(make_context):
    ctx = make_context(["sd1"])
    result = generate(
        ctx.manager,
        req(prompt="a red circle,\non two lines", negative_prompt="blurry", seed=42, batch_size=2, save_images=True,
            sampler="DPM++ 2M", cfg_scale=6.5),
        ctx.outputs,
    )
    assert [p.name[6:] for p in result.paths] == ["42.png", "43.png"]
    assert all(p.parent.parent.name == "txt2img-images" for p in result.paths)
    counters = [int(p.name[:5]) for p in result.paths]
    assert counters[1] == counters[0] + 1
    parsed = parse_infotext(read_infotext(result.paths[1]))
    assert parsed["Prompt"] == "a red circle,\non two lines" and parsed["Negative prompt"] == "blurry"
    assert parsed["Seed"] == 43 and parsed["Steps"] == 3 and parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras" and parsed["CFG scale"] == 6.5
    assert parsed["Model"] == "sd1" and parsed["Model hash"] == ctx.registry.find("sd1").short_hash


def _good_model_still_generates(ctx, first: bool = False) -> None:
    # After the first call no checkpoint is named: the job must run on the model still current.
    result = generate(ctx.manager, req(checkpoint="sd1.safetensors" if first else None))
    assert result.images and ctx.manager.current_name == "sd1.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
        (lambda p: p.write_bytes(b"\xff" * 8 + p.read_bytes()[8:]), "corrupt"),
        (lambda p: p.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{abc}"), "not valid JSON"),
        (lambda p: p.unlink(), "not found"),
    ],
)
def test_broken_files_fail_clearly_and_the_previous_model_stays(make_context, damage, message):
    ctx = make_context(["sd1", "sd1b"])
    _good_model_still_generates(ctx, first=True)
    bad = ctx.registry.find("sd1b").path
    damage(bad)
    with pytest.raises(CheckpointLoadError) as err:
        generate(ctx.manager, req(checkpoint="sd1b.safetensors"))
    assert "sd1b.safetensors" in str(err.value) and message in str(err.value)
    _good_model_still_generates(ctx)


@pytest.mark.slow
def test_unknown_architecture_is_named(make_context, tmp_path):
    from safetensors.torch import save_file

    ctx = make_context(["sd1"])
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, ctx.registry.checkpoints_dir / "mylora.safetensors")
    ctx.registry.refresh()
    _good_model_still_generates(ctx, first=True)
    with pytest.raises(CheckpointLoadError, match="mylora.safetensors.*LoRA"):
        ctx.manager.load("mylora")
    _good_model_still_generates(ctx)


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_zip_with_pickle(path: Path, payload: bytes) -> None:
    """A file in torch.save's zip layout whose data.pkl is `payload`."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = payload if item.filename.endswith("data.pkl") else src.read(item.filename)
            dst.writestr(item.filename, data)


def test_pickle_that_would_run_code_is_refused_without_running(make_context, tmp_path):
    ctx = make_context(["sd1"])
    marker = tmp_path / "pwned"
    evil = ctx.registry.checkpoints_dir / "evil.ckpt"
    _torch_zip_with_pickle(evil, pickle.dumps({"state_dict": _RunsCode(str(marker))}, protocol=2))
    ctx.registry.refresh()
    _good_model_still_generates(ctx, first=True)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt.*safetensors"):
        ctx.manager.load("evil.ckpt")
    assert not marker.exists()
    _good_model_still_generates(ctx)


def test_plain_ckpt_state_dict_loads_the_same_weights(make_context, tiny_files):
    from safetensors import safe_open

    ctx = make_context(["sd1"])
    with safe_open(str(tiny_files["sd1"]), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        metadata = fh.metadata()
    torch.save({"state_dict": tensors, "global_step": 10, "__metadata__": metadata},
               ctx.registry.checkpoints_dir / "plain.ckpt")
    ctx.registry.refresh()
    via_ckpt = generate(ctx.manager, req(checkpoint="plain.ckpt")).images[0]
    via_st = generate(ctx.manager, req(checkpoint="sd1.safetensors")).images[0]
    assert np.array_equal(pixels(via_ckpt), pixels(via_st))


@pytest.mark.slow
def test_two_threads_at_once_match_sequential_runs(make_context):
    ctx = make_context(["sd1", "sd1b"])
    jobs = [req(checkpoint="sd1.safetensors", seed=5, steps=4), req(checkpoint="sd1b.safetensors", seed=9, steps=4)]
    sequential = [generate(ctx.manager, j).images[0] for j in jobs]
    results: list = [None, None]

    def run(i: int) -> None:
        results[i] = generate(ctx.manager, jobs[i]).images[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for got, want in zip(results, sequential, strict=True):
        assert np.array_equal(pixels(got), pixels(want))


def test_interrupt_stops_within_one_step_and_returns_the_picture(make_context):
    ctx = make_context(["sd1"])
    seen = []

    def listener(progress):
        seen.append(progress.step)
        if progress.step == 2:
            control.interrupt()

    control = JobControl(listener=listener)
    result = generate(ctx.manager, req(steps=20, batch_count=3), control=control)
    assert result.interrupted and len(result.images) == 1
    assert max(seen) == 2


def test_skip_moves_to_the_next_batch(make_context):
    ctx = make_context(["sd1"])

    def listener(progress):
        if progress.batch == 0 and progress.step == 1:
            control.skip()

    control = JobControl(listener=listener)
    result = generate(ctx.manager, req(steps=6, batch_count=2), control=control)
    assert not result.interrupted and len(result.images) == 2


def test_previews_arrive_every_n_steps(make_context):
    ctx = make_context(["sd1"])
    previews = []
    control = JobControl(preview_every=2, listener=lambda p: previews.append(p.preview) if p.preview else None)
    generate(ctx.manager, req(steps=6), control=control)
    assert previews and previews[0].size == (SIZE, SIZE)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DPM++ SDE", "DDIM", "UniPC", "PLMS", "Heun", "LMS", "DPM2 a",
                                     "DPM++ 2S a", "DPM++ 3M SDE", "HeunPP2"])
def test_samplers_change_the_picture_but_all_work(make_context, sampler):
    ctx = make_context(["sd1"])
    base = generate(ctx.manager, req(sampler="Euler a", steps=4)).images[0]
    other = generate(ctx.manager, req(sampler=sampler, steps=4)).images[0]
    assert other.size == (SIZE, SIZE)
    assert not np.array_equal(pixels(base), pixels(other))


@pytest.mark.slow
def test_schedule_types_change_the_picture_in_txt2img_and_img2img(make_context):
    """A1111's schedule types reach the pipelines (txt2img and img2img): each one walks other noise levels."""
    ctx = make_context(["sd1"])
    seen = []
    for schedule in ("Automatic", "Align Your Steps", "KL Optimal", "Turbo"):
        text = generate(ctx.manager, req(sampler="Euler", schedule_type=schedule, steps=4)).images[0]
        image = generate(ctx.manager, req(sampler="DPM++ 2M SDE", schedule_type=schedule, steps=4,
                                          init_image=_init_image(), denoising_strength=0.6)).images[0]
        assert text.size == image.size == (SIZE, SIZE)
        seen.append((pixels(text).tobytes(), pixels(image).tobytes()))
    assert len({t for t, _ in seen}) == len(seen) and len({i for _, i in seen}) == len(seen)


def test_img2img_and_inpaint_keep_the_model_in_its_precision(make_context):
    ctx = make_context(["sd1"], precision="bf16")
    model = ctx.manager.load("sd1")
    size_before = model.nbytes
    generate(ctx.manager, req(init_image=_init_image(), denoising_strength=0.5, steps=2))
    generate(ctx.manager, req(init_image=_init_image(), mask=Image.new("L", (SIZE, SIZE), 255), steps=2))
    for name in ("unet", "vae", "text_encoder"):
        assert model.components[name].dtype == torch.bfloat16, name
    assert model.nbytes == size_before


def test_same_file_name_in_two_folders_picks_the_exact_one(make_context, tiny_files):
    import shutil

    ctx = make_context(["sd1"])
    (ctx.registry.checkpoints_dir / "other").mkdir()
    shutil.copy2(tiny_files["sd1b"], ctx.registry.checkpoints_dir / "other" / "sd1.safetensors")
    ctx.registry.refresh()
    assert ctx.registry.find("sd1.safetensors").name == "sd1.safetensors"
    assert ctx.registry.find("other/sd1.safetensors").name == "other/sd1.safetensors"
    assert ctx.registry.find("sd1").name == "sd1.safetensors"  # A1111's model_name keeps the folder
    (ctx.registry.checkpoints_dir / "third").mkdir()
    shutil.copy2(tiny_files["sd1c"], ctx.registry.checkpoints_dir / "third" / "x.safetensors")
    shutil.copy2(tiny_files["sd1c"], ctx.registry.checkpoints_dir / "other" / "x.safetensors")
    ctx.registry.refresh()
    assert ctx.registry.find("x.safetensors") is None  # in two folders: no silent guess


def test_incomplete_file_does_not_evict_the_model_in_use(make_context, tiny_files):
    from safetensors import safe_open
    from safetensors.torch import save_file

    probe = make_context(["sd1"])
    one = probe.manager.load("sd1").nbytes
    ctx = make_context(["sd1"], ram_cache_bytes=int(1.2 * one))
    ctx.manager.load("sd1")
    with safe_open(str(tiny_files["sd1"]), framework="pt") as fh:
        unet_only = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith("model.diffusion_model.")}
        metadata = fh.metadata()
    save_file(unet_only, str(ctx.registry.checkpoints_dir / "novae.safetensors"), metadata=metadata)
    ctx.registry.refresh()
    with pytest.raises(CheckpointLoadError, match="novae.safetensors: the file has no VAE"):
        ctx.manager.load("novae")
    assert ctx.manager.cache.keys() == ["sd1.safetensors"]


def test_latent_noise_fill_follows_each_images_seed(make_context):
    from webui.pipelines.request import MaskedContent

    ctx = make_context(["sd1"])
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    common = {"init_image": _init_image(), "mask": mask, "masked_content": MaskedContent.LATENT_NOISE,
              "denoising_strength": 0.5, "steps": 4}
    batch = generate(ctx.manager, req(seed=30, batch_size=2, **common))
    single = generate(ctx.manager, req(seed=31, **common)).images[0]
    assert np.array_equal(pixels(batch.images[1]), pixels(single))


def test_latent_nothing_starts_the_masked_area_from_flat_grey():
    from webui.pipelines.images import fill_masked
    from webui.pipelines.request import MaskedContent

    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    filled = pixels(fill_masked(_init_image(), mask, MaskedContent.LATENT_NOTHING, 0))
    assert (filled[16:48, 16:48] == 127).all()
    assert np.array_equal(filled[:16], pixels(_init_image())[:16])


def test_denoising_strength_too_low_for_the_steps_is_a_clear_error(make_context):
    # LCM keeps diffusers' count (10 x 0.05: no step); A1111's samplers would run one
    ctx = make_context(["sd1"])
    with pytest.raises(RequestError, match="denoising_strength"):
        generate(ctx.manager, req(init_image=_init_image(), denoising_strength=0.05, steps=10, sampler="LCM"))


def test_garbage_ckpt_is_called_corrupt_not_dangerous(make_context):
    ctx = make_context(["sd1"])
    (ctx.registry.checkpoints_dir / "page.ckpt").write_bytes(b"<html>404 not found</html>" * 10)
    ctx.registry.refresh()
    with pytest.raises(CheckpointLoadError) as err:
        ctx.manager.load("page.ckpt")
    assert "corrupt" in str(err.value) and not isinstance(err.value, UnsafeCheckpointError)
