"""Diffusers components -> one state dict in the original Stable Diffusion single-file layout.

The inverse of diffusers' single-file converters (``diffusers.loaders.single_file_utils``):
what this writes, ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
``convert_ldm_clip_checkpoint`` / ``convert_open_clip_checkpoint`` turn back into the same
tensors. Block counts are read off the state dicts, so any depth/width converts, not only
the released sizes. Used to write test models, benchmark files and the demo model in the format
users have; the runtime only needs the UNet's names (``webui.models.ldm_layout``, for LoRAs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from webui.models.ldm_layout import UNET_PREFIX, unet_to_ldm
from webui.models.ldm_layout import unmapped as _unmapped

__all__ = [
    "SPELLINGS",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "text_encoder_prefixes",
    "to_original_layout",
    "training_leftovers",
    "vae_to_ldm",
]

VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

StateDict = dict[str, torch.Tensor]

# How the file's writer spelled the OpenCLIP text projection: "stability" as in the released files
# (``text_projection``, transposed), "diffusers" as diffusers' scripts/convert_diffusers_to_original_sdxl.py
# writes it (``text_projection.weight``, Linear layout). Both circulate on model sites.
SPELLINGS = ("stability", "diffusers")


def text_encoder_prefixes(arch: str) -> list[tuple[str, str]]:
    """(layout, key prefix) of each text encoder of ``arch``; layout is "clip" (HF names) or "open_clip"."""
    if arch.startswith("sdxl"):
        return [("clip", SDXL_CLIP_PREFIX), ("open_clip", SDXL_OPEN_CLIP_PREFIX)]
    if arch.startswith("sd2"):
        return [("open_clip", SD2_OPEN_CLIP_PREFIX)]
    if arch.startswith("sd1"):
        return [("clip", SD1_CLIP_PREFIX)]
    raise ValueError(f"unknown architecture {arch!r}")


def to_original_layout(
    arch: str,
    *,
    unet: torch.nn.Module | Mapping[str, torch.Tensor],
    vae: torch.nn.Module | Mapping[str, torch.Tensor],
    text_encoder: torch.nn.Module | Mapping[str, torch.Tensor],
    text_encoder_2: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
    spelling: str = "stability",
) -> StateDict:
    """One flat state dict as in an original SD/SDXL ``.safetensors`` (modules or diffusers state dicts in).

    ``spelling`` is one of ``SPELLINGS``.

    Tensors are detached and may share memory with the given modules; ``.contiguous()`` or
    ``.clone()`` them before saving or changing them.
    """
    if spelling not in SPELLINGS:
        raise ValueError(f"unknown spelling {spelling!r}; expected one of {', '.join(SPELLINGS)}")
    encoders = text_encoder_prefixes(arch)
    if len(encoders) == 2 and text_encoder_2 is None:
        raise ValueError(f"{arch} needs text_encoder_2")
    if len(encoders) == 1 and text_encoder_2 is not None:
        raise ValueError(f"{arch} has one text encoder; text_encoder_2 was given")

    out: StateDict = {}
    _add(out, UNET_PREFIX, unet_to_ldm(_state_dict(unet)))
    _add(out, VAE_PREFIX, vae_to_ldm(_state_dict(vae)))
    for (layout, prefix), module in zip(encoders, (text_encoder, text_encoder_2), strict=False):
        sd = _state_dict(module)
        _add(out, prefix, clip_to_hf_ldm(sd) if layout == "clip" else clip_to_open_clip(sd, spelling))
    return out


def training_leftovers(arch: str, tensors: Mapping[str, torch.Tensor]) -> StateDict:
    """Tensors real checkpoints carry beside the weights, which inference never uses.

    - ``model_ema.*``: the EMA copy of the UNet as the original trainer names it (dots dropped), plus its
      ``decay`` and ``num_updates``; halved here, so a loader that took the EMA copy by mistake shows it.
    - SD 1.x / 2.x: the DDPM schedule buffers (``betas``, ``alphas_cumprod``, ...); SDXL: ``denoiser.sigmas``.
    - ``logit_scale`` of the OpenCLIP encoders; int64 ``position_ids`` of the CLIP-L encoders (and of
      OpenCLIP under diffusers' spelling, as its converter wrote with older transformers).
    """
    out: StateDict = {}
    for key, value in tensors.items():
        if key.startswith(UNET_PREFIX):
            out["model_ema." + key.removeprefix("model.").replace(".", "")] = value * 0.5
    out["model_ema.decay"] = torch.tensor(0.9999)
    out["model_ema.num_updates"] = torch.tensor(470000, dtype=torch.int32)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    if arch.startswith("sdxl"):
        out["denoiser.sigmas"] = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
    else:
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        schedule = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": previous,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "log_one_minus_alphas_cumprod": (1 - alphas_cumprod).log(),
            "sqrt_recip_alphas_cumprod": (1 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
            "posterior_variance": betas * (1 - previous) / (1 - alphas_cumprod),
        }
        out.update({name: value.float() for name, value in schedule.items()})
    for layout, prefix in text_encoder_prefixes(arch):
        if layout == "clip":
            out[prefix + "text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
        else:
            out[prefix + "logit_scale"] = torch.tensor(4.6052)
            if prefix + "text_projection.weight" in tensors:  # diffusers' spelling
                out[prefix + "text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return out


def _state_dict(obj: Any) -> StateDict:
    sd = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj
    return {k: v.detach() for k, v in sd.items()}


def _add(out: StateDict, prefix: str, part: StateDict) -> None:
    for key, value in part.items():
        out[prefix + key] = value


# --------------------------------------------------------------------------- VAE

_VAE_RESNET = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.resnets\.(\d+)\.(.+)$")
_VAE_SAMPLER = re.compile(
    r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.0\.(.+)$"
)
_VAE_MID = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_VAE_ATTENTION_PARTS = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    # Names of diffusers before 0.14, still found in some saved state dicts.
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}


def vae_to_ldm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """AutoencoderKL state dict -> keys under ``first_stage_model.`` (prefix not included).

    The decoder's up blocks are numbered in reverse in the original (up.0 is the last one
    run), and the mid-block attention is four 1x1 convs ([C, C, 1, 1]) where diffusers has linears.
    """
    up_blocks = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("decoder.up_blocks.")), default=-1)
    out: StateDict = {}
    for key, value in sd.items():
        if m := _VAE_RESNET.match(key):
            coder, block, layer = m[1], int(m[3]), int(m[4])
            suffix = m[5].replace("conv_shortcut", "nin_shortcut")
            level = block if coder == "encoder" else up_blocks - 1 - block
            out[f"{coder}.{'down' if coder == 'encoder' else 'up'}.{level}.block.{layer}.{suffix}"] = value
        elif m := _VAE_SAMPLER.match(key):
            coder, block, suffix = m[1], int(m[3]), m[5]
            if coder == "encoder":
                out[f"encoder.down.{block}.downsample.{suffix}"] = value
            else:
                out[f"decoder.up.{up_blocks - 1 - block}.upsample.{suffix}"] = value
        elif m := _VAE_MID.match(key):
            coder, kind, index, suffix = m[1], m[2], int(m[3]), m[4]
            if kind == "resnets":
                suffix = suffix.replace("conv_shortcut", "nin_shortcut")
                out[f"{coder}.mid.block_{index + 1}.{suffix}"] = value
                continue
            if index != 0:
                raise _unmapped("VAE", key)
            module, _, param = suffix.rpartition(".")
            if module not in _VAE_ATTENTION_PARTS:
                raise _unmapped("VAE", key)
            if param == "weight" and module != "group_norm" and value.ndim == 2:
                value = value[:, :, None, None]
            out[f"{coder}.mid.attn_1.{_VAE_ATTENTION_PARTS[module]}.{param}"] = value
        elif key.startswith(("encoder.conv_norm_out.", "decoder.conv_norm_out.")):
            out[key.replace(".conv_norm_out.", ".norm_out.")] = value
        elif key.startswith(("encoder.conv_", "decoder.conv_", "quant_conv.", "post_quant_conv.")):
            out[key] = value
        else:
            raise _unmapped("VAE", key)
    return out


# --------------------------------------------------------------------------- text encoders


def _hf_clip_names(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """HF CLIP keys with the ``text_model.`` wrapper, without buffers.

    transformers 5 saves CLIPTextModel flat (``embeddings.*``, ``encoder.*``) while
    CLIPTextModelWithProjection still nests under ``text_model.``; original files always nest.
    """
    out: StateDict = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue  # a buffer rebuilt at load; recent transformers no longer save it either
        if key.startswith("text_model.") or key == "text_projection.weight":
            out[key] = value
        else:
            out["text_model." + key] = value
    return out


def clip_to_hf_ldm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """CLIP-L as SD 1.x / SDXL's first encoder store it: HF names under ``<prefix>text_model.``."""
    return _hf_clip_names(sd)


_OPEN_CLIP_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
_OPEN_CLIP_PARTS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_QKV = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")


def clip_to_open_clip(sd: Mapping[str, torch.Tensor], spelling: str = "stability") -> StateDict:
    """OpenCLIP text tower (SD 2.x, SDXL's second encoder) under ``<prefix>`` (not included).

    q/k/v projections are one ``attn.in_proj_*`` tensor in q, k, v order; ``text_projection``
    is stored as [hidden, projection], the transpose of the diffusers linear weight (under the
    "diffusers" spelling: ``text_projection.weight``, the linear weight as it is).
    """
    out: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in _hf_clip_names(sd).items():
        if key in _OPEN_CLIP_FIXED:
            out[_OPEN_CLIP_FIXED[key]] = value
        elif key == "text_projection.weight":
            if spelling == "diffusers":
                out["text_projection.weight"] = value
            else:
                out["text_projection"] = value.T.contiguous()
        elif m := _OPEN_CLIP_LAYER.match(key):
            layer, suffix = int(m[1]), m[2]
            if q := _QKV.match(suffix):
                qkv.setdefault((layer, q[2]), {})[q[1]] = value
                continue
            module, _, param = suffix.rpartition(".")
            if module not in _OPEN_CLIP_PARTS:
                raise _unmapped("text encoder", key)
            out[f"transformer.resblocks.{layer}.{_OPEN_CLIP_PARTS[module]}.{param}"] = value
        else:
            raise _unmapped("text encoder", key)
    for (layer, param), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"text encoder layer {layer} lacks some of q/k/v {param}")
        joined = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = joined
    return out
