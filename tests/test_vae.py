"""Separate VAE files: chosen per job ("Automatic", "None", a file in models/VAE/), never reloading the checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.support.tiny_models import tiny_components
from tools.ldm_writer import vae_to_ldm
from webui.infotext import parse_infotext
from webui.models.loader import CheckpointLoadError
from webui.models.vae import VaeNotFoundError
from webui.pipelines.generate import generate
from webui.pipelines.request import GenerationRequest


def request(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 1, "save_images": False,
            "checkpoint": "sd1.safetensors"}
    return GenerationRequest(**{**base, **kw})


def write_vae(path: Path, brighter: float = 0.5, broken: bool = False) -> Path:
    """The tiny sd1 model's own VAE with a brighter decoder, as A1111 VAE files store it (bare LDM keys)."""
    vae = tiny_components("sd1", seed=0)["vae"]
    state = {k: v.clone().contiguous() for k, v in vae_to_ldm(vae.state_dict()).items()}
    state["decoder.conv_out.bias"] += brighter
    if broken:
        state["decoder.conv_out.weight"] = state["decoder.conv_out.weight"][:, :2].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def brightness(image) -> float:
    return float(np.asarray(image, dtype=np.float32).mean())


def test_a_vae_file_changes_the_picture_and_none_restores_it(make_context):
    ctx = make_context(["sd1"])
    write_vae(ctx.settings.models_dir / "VAE" / "bright.safetensors")
    own = generate(ctx.manager, request()).images[0]
    model = ctx.manager.load("sd1")
    unet = model.components["unet"]
    bright = generate(ctx.manager, request(vae="bright.safetensors"))
    assert brightness(bright.images[0]) > brightness(own) + 20
    params = parse_infotext(bright.infotexts[0])
    assert params["VAE"] == "bright.safetensors" and len(params["VAE hash"]) == 10
    again = generate(ctx.manager, request(vae="None")).images[0]
    assert np.array_equal(np.asarray(again), np.asarray(own)), "the checkpoint's own VAE is back, untouched"
    assert ctx.manager.load("sd1") is model and model.components["unet"] is unet, "no checkpoint reload"


def test_automatic_uses_the_vae_beside_the_checkpoint(make_context):
    ctx = make_context(["sd1"])
    own = generate(ctx.manager, request()).images[0]
    write_vae(ctx.registry.checkpoints_dir / "sd1.vae.safetensors")
    result = generate(ctx.manager, request(vae="Automatic"))
    assert brightness(result.images[0]) > brightness(own) + 20
    assert parse_infotext(result.infotexts[0])["VAE"] == "sd1.vae.safetensors"


def test_bad_vae_choices_give_clear_errors_and_the_engine_goes_on(make_context):
    ctx = make_context(["sd1"])
    write_vae(ctx.settings.models_dir / "VAE" / "broken.safetensors", broken=True)
    with pytest.raises(CheckpointLoadError, match=r"broken\.safetensors.*shape"):
        generate(ctx.manager, request(vae="broken.safetensors"))
    with pytest.raises(VaeNotFoundError, match="broken.safetensors"):
        generate(ctx.manager, request(vae="missing"))
    assert generate(ctx.manager, request()).images, "the next job works"


def test_pickled_vae_files_load_with_weights_only(make_context):
    ctx = make_context(["sd1"])
    vae = tiny_components("sd1", seed=0)["vae"]
    state = vae_to_ldm(vae.state_dict())
    state["decoder.conv_out.bias"] = state["decoder.conv_out.bias"] + 0.5
    (ctx.settings.models_dir / "VAE").mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"first_stage_model.{k}": v for k, v in state.items()}},
               ctx.settings.models_dir / "VAE" / "old.vae.pt")
    own = generate(ctx.manager, request()).images[0]
    result = generate(ctx.manager, request(vae="old.vae.pt"))
    assert brightness(result.images[0]) > brightness(own) + 20
