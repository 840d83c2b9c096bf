"""Live previews look like the picture they turn into: per-VAE fitted colours (the demo model and an SD-shaped
tiny model), learnt from every picture and kept across restarts, and TAESD decoders from models/VAE-approx."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from webui.extensions.hooks import Registry
from webui.jobs import JobControl
from webui.pipelines.generate import generate
from webui.pipelines.previews import fixed_preview, load_taesd, vae_scale
from webui.pipelines.request import GenerationRequest

SIZE = 64


def run_capturing_last_preview(ctx, name: str, prompt: str, seed: int, steps: int = 8):
    """Generate one picture; return it, the live preview of the latents at its last step (what the page would
    show if it drew one there), and SD's fixed-factor preview of the same latents."""
    model = ctx.manager.load(name)
    vae = model.components["vae"]
    seen: dict[str, Image.Image] = {}

    def on_step(state) -> None:
        if state.step == state.steps:
            seen["preview"] = ctx.manager.previews.preview(vae, state.latents, model.is_sdxl)
            seen["fixed"] = fixed_preview(model.is_sdxl, vae_scale(vae)).render(state.latents[0])

    hooks = Registry()
    hooks.add_hook("on_step", "test", on_step)
    request = GenerationRequest(prompt=prompt, checkpoint=name, steps=steps, width=SIZE, height=SIZE, seed=seed,
                                sampler="Euler a", save_images=False)
    picture = generate(ctx.manager, request, hooks=hooks).images[0]
    return picture, seen["preview"], seen["fixed"]


def colour_errors(preview: Image.Image, picture: Image.Image, block: int) -> tuple[float, float]:
    """(mean colour error, mean pixel error) as fractions of full scale, both pictures averaged over
    ``block`` x ``block`` squares (a preview has one colour per latent)."""
    a = np.asarray(preview.convert("RGB"), dtype=np.float64)
    b = np.asarray(picture.convert("RGB"), dtype=np.float64)
    h, w = b.shape[0] // block, b.shape[1] // block
    a = a.reshape(h, block, w, block, 3).mean((1, 3))
    b = b.reshape(h, block, w, block, 3).mean((1, 3))
    return float(np.abs(a.mean((0, 1)) - b.mean((0, 1))).mean() / 255), float(np.abs(a - b).mean() / 255)


def test_preview_of_an_sd_shaped_model_looks_like_its_picture_and_survives_a_restart(make_context):
    ctx = make_context(["sd1"])
    # The tiny model's random UNet ends far from any latents the load-time fit saw: its first picture teaches.
    run_capturing_last_preview(ctx, "sd1.safetensors", "a red circle", seed=1)
    for seed in (2, 3):
        picture, preview, fixed = run_capturing_last_preview(ctx, "sd1.safetensors", "a red circle", seed=seed)
        mean_colour, per_pixel = colour_errors(preview, picture, 8)
        assert mean_colour < 0.10 and per_pixel < 0.15, (mean_colour, per_pixel)
        assert per_pixel < colour_errors(fixed, picture, 8)[1] / 2, "much closer than SD's fixed factors"
    assert (ctx.settings.models_dir / ".preview-colours.json").is_file()
    ctx.close()

    restarted = make_context(["sd1"])
    picture, preview, _ = run_capturing_last_preview(restarted, "sd1.safetensors", "a blue square", seed=4)
    assert colour_errors(preview, picture, 8)[1] < 0.15, "what was learnt is kept in the models folder"


def test_page_previews_use_the_fitted_colours(make_context):
    ctx = make_context(["sd1"])
    model = ctx.manager.load("sd1.safetensors")
    previews: list[Image.Image] = []
    latents: list[torch.Tensor] = []
    hooks = Registry()
    hooks.add_hook("on_step", "test", lambda state: latents.append(state.latents))
    control = JobControl(preview_every=1, listener=lambda p: previews.append(p.preview) if p.preview else None)
    request = GenerationRequest(prompt="a cat", checkpoint="sd1.safetensors", steps=3, width=SIZE, height=SIZE,
                                seed=1, save_images=False)
    expected = ctx.manager.previews.fitted(model.components["vae"])  # the picture at the end refines it
    generate(ctx.manager, request, control=control, hooks=hooks)
    assert expected is not None and previews[0].size == (SIZE, SIZE)
    assert np.array_equal(np.asarray(previews[0]), np.asarray(expected.render(latents[0][0])))


def test_unreadable_preview_cache_is_refitted(make_context, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / ".preview-colours.json").write_text("{not json", encoding="utf-8")
    ctx = make_context(["sd1"])
    model = ctx.manager.load("sd1.safetensors")
    assert ctx.manager.previews.fitted(model.components["vae"]) is not None


def _taesd_decoder(seed: int):
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(latent_channels=4).eval()


def test_taesd_decoder_files_make_the_previews(make_context, tmp_path):
    from safetensors.torch import save_file

    tiny = _taesd_decoder(0)
    approx = tmp_path / "models" / "VAE-approx"
    approx.mkdir(parents=True)
    # madebyollin's own layout: an nn.Sequential whose index 0 is the clamp.
    state = {f"{int(k.split('.')[1]) + 1}.{k.split('.', 2)[2]}": v.contiguous()
             for k, v in tiny.decoder.state_dict().items()}
    save_file(state, str(approx / "taesd_decoder.safetensors"))
    (approx / "taesdxl_decoder.pth").write_bytes(b"not a pickle we would ever open")
    ctx = make_context(["sd1"])
    assert load_taesd(approx / "taesd_decoder.safetensors").decoder.state_dict().keys() == \
        tiny.decoder.state_dict().keys()

    previews: list[Image.Image] = []
    latents: list[torch.Tensor] = []
    hooks = Registry()
    hooks.add_hook("on_step", "test", lambda state: latents.append(state.latents))
    control = JobControl(preview_every=1, listener=lambda p: previews.append(p.preview) if p.preview else None)
    request = GenerationRequest(prompt="a cat", checkpoint="sd1.safetensors", steps=3, width=SIZE, height=SIZE,
                                seed=1, save_images=False)
    generate(ctx.manager, request, control=control, hooks=hooks)
    with torch.no_grad():
        decoded = tiny.decode(latents[0][:1].float()).sample[0].clamp(-1, 1)
    expected = ((decoded.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert previews[0].size == (SIZE, SIZE)
    assert np.abs(np.asarray(previews[0], dtype=np.int16) - expected.astype(np.int16)).max() <= 1

    # diffusers' AutoencoderTiny layout works too; an SDXL file that is a pickle is never read.
    save_file({f"decoder.{k}": v.contiguous() for k, v in tiny.decoder.state_dict().items()},
              str(approx / "taesd_decoder.safetensors"))
    assert load_taesd(approx / "taesd_decoder.safetensors").decoder.state_dict().keys() == \
        tiny.decoder.state_dict().keys()


def test_final_pictures_are_decoded_by_taesd_when_the_setting_says_so(make_context, tmp_path):
    from safetensors.torch import save_file

    tiny = _taesd_decoder(0)
    approx = tmp_path / "models" / "VAE-approx"
    approx.mkdir(parents=True)
    save_file({f"decoder.{k}": v.contiguous() for k, v in tiny.decoder.state_dict().items()},
              str(approx / "taesd_decoder.safetensors"))
    ctx = make_context(["sd1"])
    latents: list[torch.Tensor] = []
    hooks = Registry()
    hooks.add_hook("on_step", "test", lambda state: latents.append(state.latents))
    request = GenerationRequest(prompt="a cat", checkpoint="sd1.safetensors", steps=2, width=SIZE, height=SIZE,
                                seed=1, save_images=False)
    full = generate(ctx.manager, request, hooks=hooks)
    assert "VAE Decoder" not in full.infotexts[0], "the VAE decodes by default"
    ctx.apply_settings(ctx.settings.replace(vae_decode_method="TAESD"))  # what the Settings tab does
    fast = generate(ctx.manager, request, hooks=hooks)
    assert "VAE Decoder: TAESD" in fast.infotexts[0]
    with torch.no_grad():
        decoded = tiny.decode(latents[-1][:1].float()).sample[0].clamp(-1, 1)
    expected = ((decoded.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy().astype(np.int16)
    picture = np.asarray(fast.images[0], dtype=np.int16)
    assert fast.images[0].size == full.images[0].size == (SIZE, SIZE)
    assert np.abs(picture - expected).max() <= 1, "the picture is TAESD's decode of the last step's latents"
    assert np.abs(picture - np.asarray(full.images[0], dtype=np.int16)).mean() > 5, "not the VAE's"


@pytest.mark.slow
def test_preview_of_the_demo_model_looks_like_its_picture(tmp_path):
    from tests.test_demo_model import DEMO
    from webui.config import load_settings
    from webui.context import AppContext, builtin_checkpoints

    if not DEMO.exists():
        pytest.skip("built-in demo model not built")
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    settings = load_settings({"settings_file": tmp_path / "settings.json", "models_dir": tmp_path / "models",
                              "outputs_dir": tmp_path / "outputs", "device": "cpu", "precision": "fp32"}, env={})
    ctx = AppContext.create(settings)
    try:
        name = next(e.name for e in builtin_checkpoints() if e.path == DEMO)
        mean_errors = []
        for seed, prompt in enumerate(["a red circle on a blue background", "a yellow star on a green background",
                                       "a big purple square on an orange background",
                                       "a small cyan triangle on a pink background"]):
            picture, preview, fixed = run_capturing_last_preview(ctx, name, prompt, seed=20 + seed, steps=12)
            mean_colour, per_pixel = colour_errors(preview, picture, 4)
            fixed_pixel = colour_errors(fixed, picture, 4)[1]
            assert per_pixel < 0.6 * fixed_pixel, (prompt, per_pixel, fixed_pixel)
            mean_errors.append(mean_colour)
        assert float(np.mean(mean_errors)) < 0.10, mean_errors
    finally:
        ctx.close()


def test_a_half_precision_vae_is_fitted_and_left_as_it_was():
    import warnings

    from tests.support.tiny_models import tiny_components
    from webui.pipelines.previews import load_time_stats

    for arch in ("sd1", "sdxl"):  # SDXL's VAE is fitted upcast, as its pipelines decode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vae = tiny_components(arch)["vae"].to(torch.float16)
        fit = load_time_stats(vae).solve()
        assert np.isfinite(np.asarray(fit.factors)).all() and vae.dtype == torch.float16, arch
