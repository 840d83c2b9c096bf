"""The configs and tokenizer files shipped in webui/models/configs describe the official models."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from webui.models import configs

REPO = Path(__file__).resolve().parents[1]
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

# Parameter counts of the official releases' modules. SD 1.5 UNet, SD VAE, CLIP ViT-L, SD 2 UNet and
# SDXL UNet are published figures; the text encoders also follow from their shapes, e.g. OpenCLIP-H
# with 23 layers: 23 * 12,596,224 + 49408*1024 + 77*1024 + 2*1024 = 340,387,840. An inpainting UNet
# adds 5 input channels to conv_in: 5 * 320 * 3 * 3 = 14,400 more weights.
UNET_PARAMS = {
    "sd1": 859_520_964,
    "sd1-inpaint": 859_520_964 + 14_400,
    "sd2": 865_910_724,
    "sd2-v": 865_910_724,
    "sd2-inpaint": 865_910_724 + 14_400,
    "sdxl": 2_567_463_684,
    "sdxl-inpaint": 2_567_463_684 + 14_400,
}
VAE_PARAMS = 83_653_863
CLIP_L, OPENCLIP_H, OPENCLIP_BIGG = 123_060_480, 340_387_840, 694_659_840
TEXT_PARAMS = {
    "sd1": [CLIP_L],
    "sd1-inpaint": [CLIP_L],
    "sd2": [OPENCLIP_H],
    "sd2-v": [OPENCLIP_H],
    "sd2-inpaint": [OPENCLIP_H],
    "sdxl": [CLIP_L, OPENCLIP_BIGG],
    "sdxl-inpaint": [CLIP_L, OPENCLIP_BIGG],
}
PIPELINES = {
    "sd1": "StableDiffusionPipeline",
    "sd1-inpaint": "StableDiffusionInpaintPipeline",
    "sd2": "StableDiffusionPipeline",
    "sd2-v": "StableDiffusionPipeline",
    "sd2-inpaint": "StableDiffusionInpaintPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-inpaint": "StableDiffusionXLInpaintPipeline",
}


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(("pad", "pad_id"), [("<|endoftext|>", 49407), ("!", 0)])
def test_tokenizer_ids_and_padding(pad: str, pad_id: int) -> None:
    tok = configs.load_clip_tokenizer(pad)
    assert tok("a photo of a cat").input_ids == CAT_IDS
    assert tok.pad_token_id == pad_id
    assert tok.model_max_length == 77
    padded = tok("a photo of a cat", padding="max_length", max_length=tok.model_max_length).input_ids
    assert padded == CAT_IDS + [pad_id] * (77 - len(CAT_IDS))
    long = tok("cat " * 100, padding="max_length", truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[-1] == 49407


def test_exclamation_marks_stay_text_unless_asked() -> None:
    # OpenCLIP (what SD 2.x/SDXL trained with) reads "!!" as one token, 748.
    assert configs.load_clip_tokenizer("!")("wow!!").input_ids == [49406, 2781, 748, 49407]
    hub_like = configs.load_clip_tokenizer("!", exclamation_as_pad=True)
    assert hub_like("wow!!").input_ids == [49406, 2781, 0, 0, 49407]
    assert hub_like.pad_token_id == 0


def test_tokenizers_are_independent() -> None:
    first = configs.load_clip_tokenizer()
    second = configs.load_clip_tokenizer()
    assert first is not second
    first.add_tokens(["<my-embedding>"])
    assert len(first) == 49409 and len(second) == 49408
    assert configs.load_clip_tokenizer()("<my-embedding>").input_ids != first("<my-embedding>").input_ids


def test_unknown_pad_token_is_rejected() -> None:
    with pytest.raises(ValueError, match="not in the CLIP vocabulary"):
        configs.load_clip_tokenizer("<pad>")


def test_tokenizer_works_offline_with_empty_hf_cache(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    code = (
        "import sys\n"
        "from webui.models import configs\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print(configs.load_clip_tokenizer('!')('a photo of a cat').input_ids)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(hf_home)}
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == CAT_IDS
    assert not any((hf_home).rglob("*")), "the tokenizer must not touch the Hugging Face cache"


# --------------------------------------------------------------------------- shipped BPE files


def _load_script():
    path = REPO / "scripts" / "derive_clip_tokenizer.py"
    spec = importlib.util.spec_from_file_location("derive_clip_tokenizer", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_vocab_matches_clip_layout() -> None:
    script = _load_script()
    vocab = json.loads((configs.TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    lines = (configs.TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    merges = lines[1:]
    assert len(vocab) == 49408 and len(merges) == 48894
    byte_chars = list(script.bytes_to_unicode().values())
    assert len(set(byte_chars)) == 256
    ids = sorted(vocab, key=vocab.__getitem__)
    assert ids[:256] == byte_chars
    assert ids[256:512] == [c + "</w>" for c in byte_chars]
    assert ids[512:-2] == ["".join(m.split(" ")) for m in merges]
    assert ids[-2:] == ["<|startoftext|>", "<|endoftext|>"]


WHEEL = Path("/tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl")


@pytest.mark.skipif(not WHEEL.is_file(), reason="open-clip-torch wheel not downloaded")
def test_derive_script_reproduces_shipped_files(tmp_path: Path) -> None:
    assert _load_script().main([str(WHEEL), "--out", str(tmp_path)]) == 0
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (configs.TOKENIZER_DIR / name).read_bytes()


# --------------------------------------------------------------------------- per-architecture configs


def test_architecture_list_matches_folders() -> None:
    on_disk = {p.parent.name for p in configs.CONFIG_ROOT.glob("*/model_index.json")}
    assert on_disk == set(configs.ARCHITECTURES) == set(PIPELINES)


def test_lookup_errors() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        configs.config_dir("sd3")
    with pytest.raises(ValueError, match="unknown component"):
        configs.load_component_config("sd1", "tokenizer")
    with pytest.raises(ValueError, match="has no text_encoder_2"):
        configs.load_component_config("sd1", "text_encoder_2")


def test_component_configs_are_fresh_copies() -> None:
    cfg = configs.load_component_config("sdxl", "unet")
    cfg["transformer_layers_per_block"].append(99)
    cfg["in_channels"] = 123
    again = configs.load_component_config("sdxl", "unet")
    assert again["transformer_layers_per_block"] == [1, 2, 10] and again["in_channels"] == 4


@pytest.mark.parametrize("arch", list(PIPELINES))
def test_index_and_tokenizers(arch: str) -> None:
    assert configs.pipeline_class_name(arch) == PIPELINES[arch]
    index = json.loads((configs.config_dir(arch) / "model_index.json").read_text(encoding="utf-8"))
    pads = configs.tokenizer_pad_tokens(arch)
    if arch.startswith("sdxl"):
        assert pads == ["<|endoftext|>", "!"]
        assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    else:
        assert pads == (["!"] if arch.startswith("sd2") else ["<|endoftext|>"])
        assert "text_encoder_2" not in index
    assert index["scheduler"][1] == configs.load_component_config(arch, "scheduler")["_class_name"]


@pytest.mark.parametrize("arch", list(PIPELINES))
def test_models_build_with_official_sizes(arch: str) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs.load_component_config(arch, "unet"))
        vae = AutoencoderKL.from_config(configs.load_component_config(arch, "vae"))
    assert _n_params(unet) == UNET_PARAMS[arch]
    assert unet.conv_in.in_channels == (9 if arch.endswith("inpaint") else 4)
    assert _n_params(vae) == VAE_PARAMS
    assert vae.config.scaling_factor == (0.13025 if arch.startswith("sdxl") else 0.18215)
    # SDXL's VAE overflows in fp16, so its config says so; the others rely on diffusers' default (True too).
    assert vae.config.force_upcast is True
    if arch.startswith("sdxl"):
        assert configs.load_component_config(arch, "vae")["force_upcast"] is True

    names = ["text_encoder", "text_encoder_2"][: len(TEXT_PARAMS[arch])]
    for name, expected in zip(names, TEXT_PARAMS[arch], strict=True):
        cfg = configs.load_component_config(arch, name)
        with_projection = cfg["architectures"] == ["CLIPTextModelWithProjection"]
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        with torch.device("meta"):
            model = cls(CLIPTextConfig.from_dict(cfg))
        assert _n_params(model) == expected, name


@pytest.mark.parametrize("arch", list(PIPELINES))
def test_schedulers(arch: str) -> None:
    import diffusers

    cfg = configs.load_component_config(arch, "scheduler")
    scheduler = getattr(diffusers, cfg["_class_name"]).from_config(cfg)
    c = scheduler.config
    assert (c.beta_start, c.beta_end, c.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert c.num_train_timesteps == 1000 and c.steps_offset == 1
    assert c.prediction_type == ("v_prediction" if arch == "sd2-v" else "epsilon")
    if arch.startswith("sdxl"):
        assert cfg["_class_name"] == "EulerDiscreteScheduler" and c.timestep_spacing == "leading"
    else:
        assert c.clip_sample is False and c.set_alpha_to_one is False


def test_key_unet_settings() -> None:
    sd1 = configs.load_component_config("sd1", "unet")
    assert (sd1["attention_head_dim"], sd1["cross_attention_dim"]) == (8, 768)
    sd2 = configs.load_component_config("sd2", "unet")
    assert sd2["attention_head_dim"] == [5, 10, 20, 20] and sd2["use_linear_projection"] is True
    assert sd2["cross_attention_dim"] == 1024 and not sd2.get("upcast_attention")
    sd2v = configs.load_component_config("sd2-v", "unet")
    assert sd2v["sample_size"] == 96 and sd2v["upcast_attention"] is True
    xl = configs.load_component_config("sdxl", "unet")
    assert xl["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert (xl["addition_embed_type"], xl["addition_time_embed_dim"]) == ("text_time", 256)
    assert (xl["projection_class_embeddings_input_dim"], xl["cross_attention_dim"]) == (2816, 2048)
