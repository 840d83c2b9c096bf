"""Diffusers UNet parameter names -> the original Stable Diffusion single-file layout's names.

The runtime needs this one direction for LoRAs: kohya files for SDXL name UNet layers as the original
layout does (``input_blocks_4_1_...``), and the loaded model has diffusers' names. Block counts are read
off the state dict, so any depth/width maps, not only the released sizes. Whole-model conversion (VAE,
text encoders, one file), used only to write test and demo checkpoints, is ``tools/ldm_writer.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["UNET_PREFIX", "unet_to_ldm", "unmapped"]

UNET_PREFIX = "model.diffusion_model."
V = TypeVar("V")  # tensors when converting weights; anything when only the names matter (LoRA key lookup)


def unmapped(what: str, key: str) -> ValueError:
    # Refusing beats dropping: a silently missing tensor would only show up as a broken image.
    return ValueError(f"{what} tensor {key!r} has no place in the original layout")


# --------------------------------------------------------------------------- UNet

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # SDXL's size/crop conditioning; SD's class conditioning uses the same slot.
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_BLOCK_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_SAMPLER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.+)$")
_MID_LAYER = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _layers_per_block(sd: Mapping[str, Any], blocks: str) -> int:
    """Resnets per block, which the original layout (and diffusers' converter) needs to be uniform."""
    counts: dict[int, int] = {}
    for key in sd:
        m = _BLOCK_LAYER.match(key)
        if m and m[1] == blocks and m[3] == "resnets":
            counts[int(m[2])] = max(counts.get(int(m[2]), 0), int(m[4]) + 1)
    if not counts:
        raise ValueError(f"UNet state dict has no {blocks}")
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"UNet {blocks} have differing resnet counts {counts}; the original layout needs one"
        )
    return next(iter(counts.values()))


def _rename_head(suffix: str, table: Mapping[str, str]) -> str:
    head, _, rest = suffix.partition(".")
    return f"{table.get(head, head)}.{rest}"


def unet_to_ldm(sd: Mapping[str, V]) -> dict[str, V]:
    """UNet2DConditionModel state dict -> keys under ``model.diffusion_model.`` (prefix not included).

    Layout: input_blocks.0 is conv_in; each down block b with L resnets fills input_blocks
    1+b*(L+1) .. +L-1 as [resnet, transformer], then its downsampler as ``.0.op``. Each up
    block (L+1 resnets) fills output_blocks b*(L+1).. as [resnet, transformer, upsampler].
    Transformer internals keep their diffusers names, which the original code shares.
    """
    down_layers = _layers_per_block(sd, "down_blocks")
    up_layers = _layers_per_block(sd, "up_blocks")
    up_with_attention = {
        int(k.split(".")[1]) for k in sd if k.startswith("up_blocks.") and ".attentions." in k
    }
    out: dict[str, V] = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_FIXED:
            out[f"{_UNET_FIXED[module]}.{param}"] = value
        elif m := _BLOCK_LAYER.match(key):
            kind, block, layer, suffix = m[1], int(m[2]), int(m[4]), m[5]
            if kind == "down_blocks":
                index = 1 + block * (down_layers + 1) + layer
            else:
                index = block * up_layers + layer
            group = "input_blocks" if kind == "down_blocks" else "output_blocks"
            if m[3] == "resnets":
                out[f"{group}.{index}.0.{_rename_head(suffix, _UNET_RESNET_PARTS)}"] = value
            else:
                out[f"{group}.{index}.1.{suffix}"] = value
        elif m := _SAMPLER.match(key):
            block, param = int(m[2]), m[4]
            if m[1] == "down_blocks":
                out[f"input_blocks.{1 + block * (down_layers + 1) + down_layers}.0.op.{param}"] = value
            else:
                # The upsampler follows the transformer when the block has one.
                slot = 2 if block in up_with_attention else 1
                out[f"output_blocks.{block * up_layers + up_layers - 1}.{slot}.conv.{param}"] = value
        elif m := _MID_LAYER.match(key):
            # middle_block alternates resnet, transformer, resnet.
            layer, suffix = int(m[2]), m[3]
            if m[1] == "resnets":
                out[f"middle_block.{2 * layer}.{_rename_head(suffix, _UNET_RESNET_PARTS)}"] = value
            else:
                out[f"middle_block.{2 * layer + 1}.{suffix}"] = value
        else:
            raise unmapped("UNet", key)
    return out
