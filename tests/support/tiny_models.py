"""Tiny Stable Diffusion models with random weights, in the real architecture families.

Each architecture keeps the structure that matters to loaders and pipelines (block types,
CLIP vocabulary and 77 positions, SDXL's two encoders and size conditioning, 9-channel
inpaint UNets, a VAE that downsamples by 8) at widths of 16-64, so a 64x64 image takes
milliseconds. The files they are written to look like users' files: the original
single-file layout, or a diffusers folder.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tools.ldm_writer import to_original_layout, training_leftovers
from webui.models.detect import CONFIG_METADATA_KEY

ARCHES = ("sd1", "sd1-inpaint", "sd2", "sd2-v", "sd2-inpaint", "sdxl", "sdxl-inpaint")
SDXL_TIME_EMBED_DIM = 8
SDXL_POOLED_DIM = 16  # differs from the hidden size so a missing transpose cannot go unnoticed

_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "trained_betas": None,
}

# Token ids as in the released configs (eos 2 makes CLIP pool at the highest id, i.e. <|endoftext|>).
_TEXT = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# Four levels, so images map to latents 8x smaller as with the real VAE.
_VAE = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [16, 16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "act_fn": "silu",
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

_UNET_COMMON = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "norm_num_groups": 32,
}


def _unet(family: str) -> dict[str, Any]:
    if family == "sd1":
        # Two levels, two resnets each, the last level without attention (as SD 1.x's last).
        return {
            **_UNET_COMMON,
            "block_out_channels": [32, 64],
            "layers_per_block": 2,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "use_linear_projection": False,
        }
    if family == "sd2":
        # Three levels of one resnet: other counts than SD 1.x so layout code cannot hard-code them.
        return {
            **_UNET_COMMON,
            "block_out_channels": [32, 32, 64],
            "layers_per_block": 1,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 32,
            "attention_head_dim": [2, 2, 4],
            "use_linear_projection": True,
        }
    # SDXL: no attention at the first level, deeper transformers further down, size conditioning.
    return {
        **_UNET_COMMON,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 1, 2],
        "cross_attention_dim": 64,  # hidden sizes of both encoders, concatenated
        "attention_head_dim": [2, 4, 4],
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
        # Six size/crop numbers, each embedded, plus the pooled text embedding.
        "projection_class_embeddings_input_dim": 6 * SDXL_TIME_EMBED_DIM + SDXL_POOLED_DIM,
    }


def _family(arch: str) -> str:
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHES)}")
    return arch.split("-")[0]


def tiny_configs(arch: str, pooled_dim: int = SDXL_POOLED_DIM) -> dict[str, dict[str, Any]]:
    """JSON-able configs of ``unet``, ``vae``, ``text_encoder`` (+ ``text_encoder_2``), ``scheduler``.

    ``pooled_dim``: SDXL's projection width; the hidden size (32) makes the projection square, as in
    the real SDXL, where only the tensor's name tells its orientation.
    """
    family = _family(arch)
    unet = _unet(family)
    if family == "sdxl":
        unet["projection_class_embeddings_input_dim"] = 6 * SDXL_TIME_EMBED_DIM + pooled_dim
    if arch.endswith("inpaint"):
        unet["in_channels"] = 9  # noisy latents + mask + masked-image latents
    vae = dict(_VAE)
    scheduler = dict(_SCHEDULER)
    if arch == "sd2-v":
        scheduler["prediction_type"] = "v_prediction"
    configs: dict[str, dict[str, Any]] = {"unet": unet, "vae": vae, "scheduler": scheduler}
    if family == "sd1":
        configs["text_encoder"] = dict(_TEXT)
    elif family == "sd2":
        configs["text_encoder"] = {**_TEXT, "hidden_act": "gelu", "num_hidden_layers": 3}
    else:
        vae["scaling_factor"] = 0.13025
        vae["force_upcast"] = True
        configs["text_encoder"] = dict(_TEXT)
        configs["text_encoder_2"] = {
            **_TEXT,
            "architectures": ["CLIPTextModelWithProjection"],
            "hidden_act": "gelu",
            # Ten layers: diffusers recognises SDXL by a tensor of the tenth OpenCLIP block.
            "num_hidden_layers": 10,
            "projection_dim": pooled_dim,
        }
    return copy.deepcopy(configs)


def _build(name: str, config: dict[str, Any]) -> Any:
    if name == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_config(config)
    if name == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(config)
    if name == "scheduler":
        from diffusers import EulerDiscreteScheduler

        return EulerDiscreteScheduler.from_config(config)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = (
        CLIPTextModelWithProjection
        if "CLIPTextModelWithProjection" in config["architectures"]
        else CLIPTextModel
    )
    return cls(CLIPTextConfig(**config))


@torch.no_grad()
def _jitter(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Add small noise everywhere, so that no two tensors are equal (norms start at 1, biases at 0)
    and a swapped or dropped key changes the output instead of going unnoticed."""
    for _, param in sorted(module.named_parameters()):
        param.add_(torch.randn(param.shape, generator=generator) * 0.02)


def tiny_components(arch: str, seed: int = 0, pooled_dim: int = SDXL_POOLED_DIM) -> dict[str, Any]:
    """Real diffusers/transformers modules with seeded random weights, float32, eval mode, no grad.

    Keys: ``unet``, ``vae``, ``text_encoder`` (+ ``text_encoder_2`` for SDXL), ``scheduler``.
    The same (arch, seed) always gives the same weights; the global RNG is left untouched.
    """
    configs = tiny_configs(arch, pooled_dim)
    components: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        for index, (name, config) in enumerate(configs.items()):
            if name == "scheduler":
                continue
            torch.manual_seed(seed * 101 + index)
            module = _build(name, config)
            if module.dtype != torch.float32:  # only if a caller changed torch's default dtype
                module = module.float()
            _jitter(module, torch.Generator().manual_seed(seed * 101 + index + 50))
            components[name] = module.eval().requires_grad_(False)
    components["scheduler"] = _build("scheduler", configs["scheduler"])
    return components


# --------------------------------------------------------------------------- files


def _clean(config: Any) -> dict[str, Any]:
    """A config as plain JSON types, without bookkeeping keys that describe how it was made."""
    drop = {"_use_default_values", "_name_or_path"}
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if k not in drop}))


def _text_config(module: Any) -> dict[str, Any]:
    config = module.config.to_diff_dict()
    config["architectures"] = [type(module).__name__]  # tells the loader which class to build
    return _clean(config)


def embedded_config(arch: str, components: dict[str, Any]) -> dict[str, Any]:
    """The ``atelier.config`` metadata value (before JSON encoding) for these components."""
    config: dict[str, Any] = {"arch": arch}
    config["unet"] = _clean(components["unet"].config)
    config["vae"] = _clean(components["vae"].config)
    config["text_encoder"] = _text_config(components["text_encoder"])
    if "text_encoder_2" in components:
        config["text_encoder_2"] = _text_config(components["text_encoder_2"])
    config["scheduler"] = _clean(components["scheduler"].config)
    return config


def write_single_file(
    path: str | os.PathLike[str],
    arch: str,
    components: dict[str, Any],
    *,
    config_in_metadata: bool = True,
    dtype: torch.dtype | None = None,
    spelling: str = "stability",
    leftovers: bool = False,
    hint_prediction: bool = True,
) -> Path:
    """Save as one ``.safetensors`` in the original SD layout; returns the path.

    With ``config_in_metadata`` the header metadata ``atelier.config`` holds the component
    configs as JSON, so loaders can rebuild models whose sizes match no release; without
    ``hint_prediction`` that config leaves out the scheduler's prediction type, so an SD 2 file
    carries no hint of its parameterisation (the loader must tell from the weights).
    ``spelling`` is how the writer names the OpenCLIP projection ("stability" as released files,
    "diffusers" as diffusers' convert_diffusers_to_original_sdxl.py); ``leftovers`` adds the
    tensors real files carry beside the weights (EMA copy, schedule buffers, position_ids, ...).
    The file appears complete or not at all (written beside it, then renamed).
    """
    from safetensors.torch import save_file

    _family(arch)
    path = Path(path)
    tensors = to_original_layout(
        arch,
        unet=components["unet"],
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        text_encoder_2=components.get("text_encoder_2"),
        spelling=spelling,
    )
    if leftovers:
        tensors.update(training_leftovers(arch, tensors))
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt"}
    if config_in_metadata:
        config = embedded_config(arch, components)
        if not hint_prediction:
            config["scheduler"].pop("prediction_type", None)
        metadata[CONFIG_METADATA_KEY] = json.dumps(config, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _tokenizers(arch: str) -> dict[str, Any]:
    """The real CLIP tokenizers of ``arch`` when the package ships them; none otherwise."""
    try:
        from webui.models.configs import load_clip_tokenizer, tokenizer_pad_tokens
    except ImportError:
        return {}
    pads = tokenizer_pad_tokens(arch) or ["<|endoftext|>"]
    names = ["tokenizer", "tokenizer_2"] if arch.startswith("sdxl") else ["tokenizer"]
    return {name: load_clip_tokenizer(pads[min(i, len(pads) - 1)]) for i, name in enumerate(names)}


def _pipeline_class(arch: str) -> str:
    xl = "XL" if arch.startswith("sdxl") else ""
    return f"StableDiffusion{xl}{'Inpaint' if arch.endswith('inpaint') else ''}Pipeline"


def write_diffusers_folder(path: str | os.PathLike[str], arch: str, components: dict[str, Any]) -> Path:
    """Save as a diffusers folder (model_index.json + one subfolder per component); returns the path.

    Built beside ``path`` and renamed into place; ``path`` must not exist yet or be empty.
    """
    import diffusers

    _family(arch)
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        index: dict[str, Any] = {
            "_class_name": _pipeline_class(arch),
            "_diffusers_version": diffusers.__version__,
        }
        parts = dict(components, **_tokenizers(arch))
        for name, part in sorted(parts.items()):
            part.save_pretrained(tmp / name)
            library = "diffusers" if type(part).__module__.startswith("diffusers") else "transformers"
            index[name] = [library, type(part).__name__]
        index.setdefault("tokenizer", [None, None])
        if arch.startswith("sdxl"):
            index.setdefault("tokenizer_2", [None, None])
            index.update(
                force_zeros_for_empty_prompt=True, feature_extractor=[None, None], image_encoder=[None, None]
            )
            if arch.endswith("inpaint"):
                index["requires_aesthetics_score"] = False
        else:
            index.update(
                safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False
            )
        (tmp / "model_index.json").write_text(
            json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
