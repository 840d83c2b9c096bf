"""ControlNet tensor names and model configs, worked out from the tensors themselves.

``ldm_to_diffusers`` renames an original-layout ControlNet (what ``cldm.py`` trained: ``input_blocks``,
``middle_block``, ``input_hint_block``, ``zero_convs``, ``middle_block_out``) to diffusers' ``ControlNetModel``
names, the inverse of the UNet mapping in ``webui/models/ldm_layout.py`` for the UNet's encoder half, plus the
ControlNet's own parts. Block counts are read off the names, so any depth and width maps.

``derive_config`` reads the structure (levels, widths, resnets and transformer depths per level, text width,
projection kind, hint encoder widths, SDXL embedding, union fields) off diffusers-named shapes; ``build_config``
fills what weights cannot tell (attention heads, the time-embedding width) from the checkpoint's UNet config,
as diffusers' ``ControlNetModel.from_unet`` does, over the templates shipped in ``configs/``.

Pure: no torch.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

_RESNET_PARTS = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_FIXED = {"input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
          "time_embed.2": "time_embedding.linear_2", "label_emb.0.0": "add_embedding.linear_1",
          "label_emb.0.2": "add_embedding.linear_2", "middle_block_out.0": "controlnet_mid_block"}
_INPUT = re.compile(r"^input_blocks\.(\d+)\.(\d+)\.(.+)$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)\.(.+)$")
_HINT = re.compile(r"^input_hint_block\.(\d+)\.(weight|bias)$")
_ZERO = re.compile(r"^zero_convs\.(\d+)\.0\.(weight|bias)$")


def _resnet(rest: str) -> str:
    for ldm, diffusers in _RESNET_PARTS.items():
        if rest.startswith(ldm + "."):
            return diffusers + rest[len(ldm):]
    return rest


def ldm_to_diffusers(keys: list[str]) -> dict[str, str]:
    """Original-layout name (prefix already stripped) -> diffusers name, for every key that has one.

    Layout: input_blocks.0 is conv_in; level b with n resnets fills input_blocks 1+b(n+1) ... as [resnet,
    transformer], then ``.0.op`` is its downsampler; middle_block is resnet, transformer, resnet;
    input_hint_block's convolutions sit at even indices (conv_in, blocks..., conv_out last)."""
    downsamplers = sorted(int(m[1]) for k in keys if (m := _INPUT.match(k)) and m[3].startswith("op."))
    per_level = downsamplers[0] - 1 if downsamplers else max(
        (int(m[1]) for k in keys if (m := _INPUT.match(k))), default=0)
    hints = sorted({int(m[1]) for k in keys if (m := _HINT.match(k))})
    out: dict[str, str] = {}
    for key in keys:
        module, _, param = key.rpartition(".")
        if module in _FIXED:
            out[key] = f"{_FIXED[module]}.{param}"
        elif (m := _INPUT.match(key)) and int(m[1]) > 0:
            index, slot, rest = int(m[1]), int(m[2]), m[3]
            level, pos = divmod(index - 1, per_level + 1)
            if pos == per_level and rest.startswith("op."):
                out[key] = f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
            elif slot == 0:
                out[key] = f"down_blocks.{level}.resnets.{pos}.{_resnet(rest)}"
            elif slot == 1:
                out[key] = f"down_blocks.{level}.attentions.{pos}.{rest}"
        elif m := _MIDDLE.match(key):
            index, rest = int(m[1]), m[2]
            if index % 2 == 0:
                out[key] = f"mid_block.resnets.{index // 2}.{_resnet(rest)}"
            else:
                out[key] = f"mid_block.attentions.{index // 2}.{rest}"
        elif m := _HINT.match(key):
            index = int(m[1])  # convolutions at even places, SiLUs between them
            if index == 0:
                part = "conv_in"
            elif index == hints[-1]:
                part = "conv_out"
            else:
                part = f"blocks.{index // 2 - 1}"
            out[key] = f"controlnet_cond_embedding.{part}.{m[2]}"
        elif m := _ZERO.match(key):
            out[key] = f"controlnet_down_blocks.{m[1]}.{m[2]}"
    return out


# --------------------------------------------------------------------------- configs

_DOWN = re.compile(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.")
_TRANSFORMER = re.compile(r"^(down_blocks\.(\d+)\.attentions\.0|mid_block\.attentions\.0)\.transformer_blocks\.(\d+)\.")
# Fields a ControlNet shares with the UNet it was trained from (those diffusers' from_unet copies) that
# its weights do not show.
UNET_FIELDS = ("flip_sin_to_cos", "freq_shift", "only_cross_attention", "downsample_padding", "mid_block_scale_factor",
               "act_fn", "norm_num_groups", "norm_eps", "attention_head_dim", "num_attention_heads",
               "upcast_attention", "resnet_time_scale_shift", "addition_time_embed_dim", "class_embed_type",
               "num_class_embeds", "encoder_hid_dim", "encoder_hid_dim_type")


class LayoutError(ValueError):
    """The tensors do not form a ControlNet this module can describe."""


@functools.cache
def _template(name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


def template(union: bool, sdxl: bool) -> dict[str, Any]:
    """The shipped config of the released model of that kind (a fresh copy)."""
    return copy.deepcopy(_template("union-sdxl" if union else ("sdxl" if sdxl else "sd15")))


def derive_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The config fields diffusers-named ``shapes`` determine."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise LayoutError(f"no tensor {key}")
        return tuple(shapes[key])

    levels: dict[int, dict[str, int]] = {}
    for key in shapes:
        if m := _DOWN.match(key):
            level = levels.setdefault(int(m[1]), {"resnets": 0, "attentions": 0})
            level[m[2]] = max(level[m[2]], int(m[3]) + 1)
    if not levels or sorted(levels) != list(range(len(levels))):
        raise LayoutError("no down blocks")
    counts = {level["resnets"] for level in levels.values()}
    if len(counts) != 1:
        raise LayoutError(f"levels with different resnet counts {sorted(counts)}")
    depth: dict[str, int] = {}
    for key in shapes:
        if m := _TRANSFORMER.match(key):
            depth[m[1]] = max(depth.get(m[1], 0), int(m[3]) + 1)
    config: dict[str, Any] = {
        "in_channels": shape("conv_in.weight")[1],
        "block_out_channels": [shape(f"down_blocks.{b}.resnets.0.conv1.weight")[0] for b in sorted(levels)],
        "layers_per_block": counts.pop(),
        "down_block_types": ["CrossAttnDownBlock2D" if levels[b]["attentions"] else "DownBlock2D"
                             for b in sorted(levels)],
        "transformer_layers_per_block": [depth.get(f"down_blocks.{b}.attentions.0", 1) for b in sorted(levels)],
        "conditioning_channels": shape("controlnet_cond_embedding.conv_in.weight")[1],
    }
    hint_blocks = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("controlnet_cond_embedding.blocks.")})
    config["conditioning_embedding_out_channels"] = [shape("controlnet_cond_embedding.conv_in.weight")[0]] + [
        shape(f"controlnet_cond_embedding.blocks.{i}.weight")[0] for i in hint_blocks if i % 2 == 1]
    attention = [k for k in shapes if k.endswith("attn2.to_k.weight")]
    if attention:
        config["cross_attention_dim"] = shape(attention[0])[1]
        projections = [k for k in shapes if k.endswith(".proj_in.weight")]
        config["use_linear_projection"] = bool(projections) and len(shape(projections[0])) == 2
    if "mid_block.attentions.0.norm.weight" in shapes:
        config["mid_block_type"] = "UNetMidBlock2DCrossAttn"
        mid_depth = depth.get("mid_block.attentions.0", 1)
        if mid_depth != config["transformer_layers_per_block"][-1]:
            # diffusers builds the mid block with the last level's depth; a model whose deepest level has no
            # attention takes its mid-block depth there (the count is unused by a DownBlock2D).
            if config["down_block_types"][-1] == "DownBlock2D":
                config["transformer_layers_per_block"][-1] = mid_depth
            else:
                raise LayoutError(f"mid block with {mid_depth} transformer layers after a level with "
                                  f"{config['transformer_layers_per_block'][-1]}")
    elif "mid_block.resnets.0.conv1.weight" in shapes:
        config["mid_block_type"] = "UNetMidBlock2D"
    else:
        config["mid_block_type"] = None
    if "add_embedding.linear_1.weight" in shapes:
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = shape("add_embedding.linear_1.weight")[1]
    else:
        config["addition_embed_type"] = None
        config["projection_class_embeddings_input_dim"] = None
    if "task_embedding" in shapes:
        types, channels = shape("task_embedding")
        config.update(num_control_type=types, num_trans_channel=channels,
                      num_trans_layer=len({k.split(".")[1] for k in shapes if k.startswith("transformer_layes.")}),
                      num_proj_channel=shape("spatial_ch_projs.weight")[0])
        config["addition_time_embed_dim"] = shape("control_add_embedding.linear_1.weight")[1] // types
    return config


def build_config(derived: Mapping[str, Any], union: bool, unet_config: Mapping[str, Any] | None = None,
                 file_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config to build the model from: the shipped template, then the checkpoint UNet's shared fields,
    then the file's own config (diffusers folders), then what the weights show."""
    sdxl = derived.get("addition_embed_type") == "text_time"
    config = template(union, sdxl)
    if unet_config is not None:
        config.update({k: copy.deepcopy(unet_config[k]) for k in UNET_FIELDS if k in unet_config})
        levels = len(derived["block_out_channels"])
        for key in ("attention_head_dim", "num_attention_heads", "only_cross_attention"):
            value = config.get(key)
            if isinstance(value, (list, tuple)) and len(value) != levels:
                config[key] = template(union, sdxl)[key]  # the UNet has another depth: the release's values
    if file_config is not None:
        config.update({k: copy.deepcopy(v) for k, v in file_config.items() if not k.startswith("_")})
    config.update(copy.deepcopy(dict(derived)))
    if union:
        config["_class_name"] = "ControlNetUnionModel"
        config.pop("mid_block_type", None)  # the union model always has a cross-attention mid block
    else:
        config["_class_name"] = "ControlNetModel"
        for key in ("num_control_type", "num_trans_channel", "num_trans_head", "num_trans_layer", "num_proj_channel"):
            config.pop(key, None)
    return config


def mismatch(config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> str | None:
    """Why a ControlNet with ``config`` cannot guide a UNet with ``unet_config`` (None: it can)."""
    from .detect import family_name

    cn_xl = config.get("addition_embed_type") == "text_time"
    unet_xl = unet_config.get("addition_embed_type") == "text_time"
    cn_family = family_name(cn_xl, int(config.get("cross_attention_dim") or 0))
    unet_family = family_name(unet_xl, int(unet_config.get("cross_attention_dim") or 0))
    if cn_xl != unet_xl or config.get("cross_attention_dim") != unet_config.get("cross_attention_dim"):
        return f"it is made for {cn_family} and the checkpoint is {unet_family}"
    if list(config["block_out_channels"]) != list(unet_config["block_out_channels"]) or \
            config["layers_per_block"] != unet_config["layers_per_block"]:
        return (f"its blocks ({list(config['block_out_channels'])} x {config['layers_per_block']}) do not match the "
                f"checkpoint's UNet ({list(unet_config['block_out_channels'])} x {unet_config['layers_per_block']})")
    if config.get("in_channels") != unet_config.get("out_channels", 4):
        return f"it takes {config.get('in_channels')}-channel latents and the checkpoint makes " \
               f"{unet_config.get('out_channels', 4)}"
    return None
