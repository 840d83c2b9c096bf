"""The original-layout export against diffusers' own single-file converters, and the tiny-model files."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.loaders import single_file_utils as sfu
from safetensors import safe_open

from tests.support.tiny_models import (
    ARCHES,
    tiny_components,
    tiny_configs,
    write_diffusers_folder,
    write_single_file,
)
from tools.ldm_writer import to_original_layout

OPEN_CLIP_PREFIXES = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, Any]]:
    return {arch: tiny_components(arch) for arch in ARCHES}


def _export(arch: str, parts: dict[str, Any]) -> dict[str, torch.Tensor]:
    return to_original_layout(
        arch,
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        text_encoder_2=parts.get("text_encoder_2"),
    )


def _flatten_for(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers 5's CLIPTextModel has no `text_model.` wrapper; diffusers' converters still emit it.
    if hasattr(module, "text_model"):
        return sd
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def _back_to_diffusers(
    arch: str, ckpt: dict[str, torch.Tensor], configs: dict[str, Any], encoders: dict[str, Any]
):
    """Diffusers' forward converters: the ground truth for what the original layout means."""
    out = {
        "unet": sfu.convert_ldm_unet_checkpoint(ckpt, configs["unet"]),
        "vae": sfu.convert_ldm_vae_checkpoint(ckpt, configs["vae"]),
    }
    family = arch.split("-")[0]
    if family == "sd2":
        text = sfu.convert_open_clip_checkpoint(
            encoders["text_encoder"], ckpt, prefix=OPEN_CLIP_PREFIXES["sd2"]
        )
    else:
        text = sfu.convert_ldm_clip_checkpoint(ckpt)  # SD 1.x and SDXL's first encoder
    out["text_encoder"] = _flatten_for(encoders["text_encoder"], text)
    if family == "sdxl":
        te2 = encoders["text_encoder_2"]
        text2 = sfu.convert_open_clip_checkpoint(te2, ckpt, prefix=OPEN_CLIP_PREFIXES["sdxl"])
        out["text_encoder_2"] = _flatten_for(te2, text2)
    return out


def _assert_same(name: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want), (
        f"{name}: missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}"
    )
    bad = [k for k in want if got[k].shape != want[k].shape or not torch.equal(got[k], want[k])]
    assert not bad, f"{name}: {len(bad)} tensors differ, e.g. {bad[:5]}"


@pytest.mark.parametrize("arch", ARCHES)
def test_round_trip_through_diffusers_converters(arch, built):
    parts = built[arch]
    ckpt = _export(arch, parts)
    back = _back_to_diffusers(arch, ckpt, tiny_configs(arch), parts)
    for name, sd in back.items():
        _assert_same(f"{arch} {name}", sd, parts[name].state_dict())


# diffusers' classifier keys on tensors of released depths and widths: SD 2.x needs a 1024-wide
# cross-attention at input_blocks.2, so tiny SD 2.x files read as v1 (SD 1.x's check is the
# fallback, so it needs nothing). SDXL's check needs OpenCLIP block 9: tiny text_encoder_2 has 10.
EXPECTED_DIFFUSERS_TYPE = {
    "sd1": "v1",
    "sd1-inpaint": "inpainting",
    "sd2": "v1",
    "sd2-v": "v1",
    "sd2-inpaint": "inpainting",
    "sdxl": "xl_base",
    "sdxl-inpaint": "xl_inpaint",
}


@pytest.mark.parametrize("arch", ARCHES)
def test_diffusers_classifies_the_export(arch, built):
    assert sfu.infer_diffusers_model_type(_export(arch, built[arch])) == EXPECTED_DIFFUSERS_TYPE[arch]


def test_original_key_names_and_shapes(built):
    sd1 = _export("sd1", built["sd1"])
    assert sd1["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 4
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in sd1
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in sd1
    assert "model.diffusion_model.middle_block.2.in_layers.0.weight" in sd1
    # Up blocks without attention put the upsampler at slot 1, with attention at slot 2.
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in sd1
    assert "model.diffusion_model.output_blocks.5.1.proj_out.weight" in sd1
    assert sd1["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)
    assert sd1["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (32, 32, 1, 1)
    assert "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight" in sd1
    # The decoder counts up-blocks the other way round: up.3 runs first, at the widest level.
    assert sd1["first_stage_model.decoder.up.3.block.0.conv1.weight"].shape[0] == 32
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in sd1
    assert not any("position_ids" in k for k in sd1)

    sd2 = _export("sd2", built["sd2"])
    assert sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert sd2["cond_stage_model.model.positional_embedding"].shape == (77, 32)
    assert "cond_stage_model.model.text_projection" not in sd2  # CLIPTextModel has none to write

    xl = _export("sdxl", built["sdxl"])
    assert "model.diffusion_model.label_emb.0.0.weight" in xl
    assert "model.diffusion_model.middle_block.1.transformer_blocks.1.attn2.to_k.weight" in xl
    assert xl["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"].shape == (
        64,
        64,
    )
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in xl
    te2 = built["sdxl"]["text_encoder_2"]
    assert torch.equal(xl["conditioner.embedders.1.model.text_projection"], te2.text_projection.weight.T)
    assert xl["conditioner.embedders.1.model.text_projection"].shape == (32, 16)


def test_state_dicts_and_prefixed_clip_keys_give_the_same_export(built):
    parts = built["sd1"]
    from_modules = _export("sd1", parts)
    text = {"text_model." + k: v for k, v in parts["text_encoder"].state_dict().items()}
    from_dicts = to_original_layout(
        "sd1", unet=parts["unet"].state_dict(), vae=parts["vae"].state_dict(), text_encoder=text
    )
    _assert_same("sd1", from_dicts, from_modules)


def test_unknown_tensors_and_wrong_encoder_count_are_refused(built):
    parts = built["sd1"]
    unet = dict(parts["unet"].state_dict(), **{"extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="extra.weight"):
        to_original_layout("sd1", unet=unet, vae=parts["vae"], text_encoder=parts["text_encoder"])
    with pytest.raises(ValueError, match="text_encoder_2"):
        to_original_layout("sdxl", unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"])


def test_tiny_components_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = tiny_components("sd1", seed=7), tiny_components("sd1", seed=7), tiny_components("sd1", seed=8)
    assert torch.equal(torch.rand(3), expected)
    key = "conv_in.weight"
    assert torch.equal(a["unet"].state_dict()[key], b["unet"].state_dict()[key])
    assert not torch.equal(a["unet"].state_dict()[key], c["unet"].state_dict()[key])
    assert not a["unet"].training and a["vae"].dtype == torch.float32


# --------------------------------------------------------------------------- files


def _read(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


def _rebuild(ckpt: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """Components from a single file and its embedded configs alone, through diffusers' converters."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    encoders = {}
    for name in ("text_encoder", "text_encoder_2"):
        if name in config:
            cls = (
                CLIPTextModelWithProjection
                if "WithProjection" in config[name]["architectures"][0]
                else CLIPTextModel
            )
            encoders[name] = cls(CLIPTextConfig(**config[name]))
    parts = {
        "unet": UNet2DConditionModel.from_config(config["unet"]),
        "vae": AutoencoderKL.from_config(config["vae"]),
        **encoders,
    }
    for name, sd in _back_to_diffusers(config["arch"], ckpt, config, encoders).items():
        parts[name].load_state_dict(sd, strict=True)
        parts[name].eval().requires_grad_(False)
    parts["scheduler"] = EulerDiscreteScheduler.from_config(config["scheduler"])
    return parts


def test_single_file_metadata_and_tensors(tmp_path, built):
    parts = built["sdxl"]
    path = write_single_file(tmp_path / "xl.safetensors", "sdxl", parts)
    tensors, metadata = _read(path)
    _assert_same("file", tensors, _export("sdxl", parts))
    config = json.loads(metadata["atelier.config"])
    assert set(config) == {"arch", "unet", "vae", "text_encoder", "text_encoder_2", "scheduler"}
    assert config["arch"] == "sdxl"
    assert config["unet"]["transformer_layers_per_block"] == [1, 1, 2]
    assert config["unet"]["addition_embed_type"] == "text_time"
    assert config["vae"]["block_out_channels"] == [16, 16, 32, 32]
    assert config["text_encoder"]["architectures"] == ["CLIPTextModel"]
    assert config["text_encoder_2"]["architectures"] == ["CLIPTextModelWithProjection"]
    assert config["text_encoder_2"]["projection_dim"] == 16
    assert config["scheduler"]["_class_name"] == "EulerDiscreteScheduler"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind

    rebuilt = _rebuild(tensors, config)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _assert_same(name, rebuilt[name].state_dict(), parts[name].state_dict())


def test_single_file_options(tmp_path, built):
    path = write_single_file(
        tmp_path / "half.safetensors", "sd2-v", built["sd2-v"], config_in_metadata=False, dtype=torch.float16
    )
    tensors, metadata = _read(path)
    assert "atelier.config" not in (metadata or {})
    assert {t.dtype for t in tensors.values()} == {torch.float16}

    path = write_single_file(tmp_path / "v.safetensors", "sd2-v", built["sd2-v"])
    config = json.loads(_read(path)[1]["atelier.config"])
    assert config["scheduler"]["prediction_type"] == "v_prediction"
    assert config["unet"]["use_linear_projection"] is True


def test_diffusers_folder_loads_with_diffusers(tmp_path, built):
    from diffusers import StableDiffusionPipeline

    path = write_diffusers_folder(tmp_path / "folder", "sd1", built["sd1"])
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same(name, getattr(pipe, name).state_dict(), built["sd1"][name].state_dict())
    assert pipe.tokenizer is not None and pipe.tokenizer.model_max_length == 77
    assert not [p for p in tmp_path.iterdir() if p.name != "folder"]


def _pipeline(arch: str, parts: dict[str, Any]):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from webui.models.configs import load_clip_tokenizer, tokenizer_pad_tokens

    pads = tokenizer_pad_tokens(arch)
    if arch == "sdxl":
        return StableDiffusionXLPipeline(
            tokenizer=load_clip_tokenizer(pads[0]), tokenizer_2=load_clip_tokenizer(pads[1]), **parts
        )
    return StableDiffusionPipeline(
        tokenizer=load_clip_tokenizer(pads[0]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **parts,
    )


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_reloaded_file_generates_the_same_image(tmp_path, arch, built):
    parts = built[arch]
    tensors, metadata = _read(write_single_file(tmp_path / f"{arch}.safetensors", arch, parts))
    rebuilt = _rebuild(tensors, json.loads(metadata["atelier.config"]))

    def run(components: dict[str, Any]) -> np.ndarray:
        pipe = _pipeline(arch, components)
        pipe.set_progress_bar_config(disable=True)
        return pipe(
            "a red fox in the snow",
            negative_prompt="blurry",
            num_inference_steps=2,
            guidance_scale=5.0,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    original, reloaded = run(parts), run(rebuilt)
    assert original.shape == (1, 64, 64, 3)
    assert np.isfinite(original).all() and original.std() > 0
    assert np.array_equal(original, reloaded)
