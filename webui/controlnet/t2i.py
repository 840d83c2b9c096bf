"""T2I-Adapters: what a file holds, its tensor names in diffusers' ``T2IAdapter`` layout, its config, and whether
it fits a checkpoint's UNet, from tensor names and shapes alone (a safetensors header is enough). Pure: no torch.

Layouts users have:
- TencentARC's original single files for SD 1.x (``t2iadapter_canny_sd14v1.pth``, ``..._sd15v2``): the full
  adapter (``conv_in``, ``body.K.block1`` / ``block2`` / ``in_conv``, K = level * blocks_per_level + j) or the
  light one of the color adapter (``body.L.in_conv``, ``body.L.body.J.block1``, ``body.L.out_conv``);
- diffusers' names (``adapter.conv_in``, ``adapter.body.L.resnets.J.block1``), single file or folder with a
  config.json (``adapter_type`` full_adapter, full_adapter_xl or light_adapter), for SD 1.x and SDXL.

Not supported, and said so: the style adapter (``t2iadapter_style_sd14v1``, CLIP-vision tokens appended to the
prompt, another architecture), CoAdapters, and original full adapters trained with skip convolutions
(``skep``) or strided-convolution downsampling (``down_opt.op``), which no released model uses.

The features go where diffusers' UNet takes ``down_intrablock_additional_residuals`` (the places the extension
injects them): after the last resnet of each down block (after the downsampler for a block without attention),
and a feature left over after the down blocks (SDXL's fourth) after the mid block.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DIFFUSERS_PREFIX = "adapter."
CLASS_NAME = "T2IAdapter"
FULL, FULL_XL, LIGHT = "full_adapter", "full_adapter_xl", "light_adapter"

_FULL_ORIG = re.compile(r"^body\.(\d+)\.(block1|block2|in_conv|skep|down_opt\.op)\.(weight|bias)$")
_LIGHT_ORIG = re.compile(r"^body\.(\d+)\.(?:(in_conv|out_conv)|body\.(\d+)\.(block1|block2))\.(weight|bias)$")
_DIFF_BODY = re.compile(r"^body\.(\d+)\.(?:(in_conv|out_conv)|resnets\.(\d+)\.(block1|block2))\.(weight|bias)$")


class AdapterLayoutError(ValueError):
    """The tensors do not form a T2I-Adapter this module can describe (the message says why)."""


@dataclass(frozen=True)
class AdapterKind:
    layout: str  # "original" | "diffusers"
    light: bool  # the light adapter (TencentARC's color adapter)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", value))


def unsupported(keys: list[str]) -> str | None:
    """What an adapter-like file is when it is one Atelier cannot run (None otherwise)."""
    if any(k.startswith(("style_embedding", "transformer_layes.")) for k in keys) and "proj" in keys:
        return ("a T2I style adapter (t2iadapter_style: CLIP-vision tokens added to the prompt), which Atelier "
                "does not support; the full and light T2I-Adapters (canny, sketch, depth, openpose, seg, color...) "
                "are supported")
    if any(k.startswith(("fuser.", "coadapter_fuser.")) for k in keys):
        return "a CoAdapter fuser, which Atelier does not support"
    return None


def detect_adapter(keys: list[str]) -> AdapterKind | None:
    """The kind of T2I-Adapter the tensor names describe, or None when they are no T2I-Adapter."""
    if f"{DIFFUSERS_PREFIX}body.0.resnets.0.block1.weight" in keys:
        return AdapterKind("diffusers", f"{DIFFUSERS_PREFIX}conv_in.weight" not in keys)
    if "body.0.body.0.block1.weight" in keys and "body.0.out_conv.weight" in keys:
        return AdapterKind("original", True)
    if "conv_in.weight" in keys and "body.0.block1.weight" in keys:
        return AdapterKind("original", False)
    return None


def original_to_diffusers(keys: list[str], light: bool, levels: int) -> dict[str, str]:
    """Original name -> diffusers ``T2IAdapter`` name. ``levels``: the features the full adapter makes (the
    UNet's down blocks it was trained for, 4 for SD 1.x): its blocks are numbered through all levels, so the
    count per level is the total over ``levels`` (equal widths hide where a level starts)."""
    out: dict[str, str] = {}
    if light:
        for key in keys:
            if m := _LIGHT_ORIG.match(key):
                level, conv, resnet, part, param = m.groups()
                inner = conv if conv else f"resnets.{resnet}.{part}"
                out[key] = f"{DIFFUSERS_PREFIX}body.{level}.{inner}.{param}"
        return out
    found = [(int(m[1]), m[2], m[3], key) for key in keys if (m := _FULL_ORIG.match(key))]
    extra = sorted({part for _, part, _, _ in found if part in ("skep", "down_opt.op")})
    if extra:
        raise AdapterLayoutError(f"an original T2I-Adapter variant with {' and '.join(extra)} convolutions, "
                                 "which Atelier does not support")
    blocks = max((index for index, *_ in found), default=-1) + 1
    if levels <= 0 or blocks % levels:
        raise AdapterLayoutError(f"{blocks} adapter blocks do not split into {levels} levels")
    per_level = blocks // levels
    for index, part, param, key in found:
        level, j = divmod(index, per_level)
        if part == "in_conv":
            if j != 0:
                raise AdapterLayoutError(f"{key} inside a level ({per_level} blocks per level)")
            out[key] = f"{DIFFUSERS_PREFIX}body.{level}.in_conv.{param}"
        else:
            out[key] = f"{DIFFUSERS_PREFIX}body.{level}.resnets.{j}.{part}.{param}"
    for key in keys:
        if key.startswith("conv_in."):
            out[key] = DIFFUSERS_PREFIX + key
    return out


def derive_config(shapes: Mapping[str, Any], file_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``T2IAdapter`` config of diffusers-named ``shapes`` (a folder's config.json, when given, says the
    kind; without one, a full adapter whose first convolution takes 16x16-unshuffled pixels is the SDXL one)."""
    inner = {k[len(DIFFUSERS_PREFIX):]: _shape(v) for k, v in shapes.items() if k.startswith(DIFFUSERS_PREFIX)}
    levels: dict[int, int] = {}
    for key in inner:
        if m := _DIFF_BODY.match(key):
            resnets = int(m[3]) + 1 if m[3] is not None else 0
            levels[int(m[1])] = max(levels.get(int(m[1]), 0), resnets)
    if not levels or sorted(levels) != list(range(len(levels))):
        raise AdapterLayoutError("no adapter blocks")
    if len(set(levels.values())) != 1:
        raise AdapterLayoutError(f"levels with different resnet counts {sorted(set(levels.values()))}")

    def shape(key: str) -> tuple[int, ...]:
        if key not in inner:
            raise AdapterLayoutError(f"no tensor {DIFFUSERS_PREFIX}{key}")
        return inner[key]

    blocks = len(levels)
    declared = (file_config or {}).get("adapter_type")
    light = "conv_in.weight" not in inner
    if light:
        if declared not in (None, LIGHT):
            raise AdapterLayoutError(f"a light adapter's tensors with adapter_type {declared!r}")
        unshuffled = shape("body.0.in_conv.weight")[1]
        channels = [shape(f"body.{i}.out_conv.weight")[0] for i in range(blocks - 1)]
        kind, factor = LIGHT, int((file_config or {}).get("downscale_factor", 8))
    else:
        unshuffled = shape("conv_in.weight")[1]
        channels = [shape(f"body.{i}.resnets.0.block1.weight")[0] for i in range(blocks)]
        if declared in (FULL, FULL_XL):
            kind = declared
        elif declared is None:
            kind = FULL_XL if unshuffled in (256, 768) else FULL  # 1 or 3 channels, 16x16 or 8x8 unshuffled
        else:
            raise AdapterLayoutError(f"unknown adapter_type {declared!r}")
        factor = int((file_config or {}).get("downscale_factor", 16 if kind == FULL_XL else 8))
    if unshuffled % (factor * factor):
        raise AdapterLayoutError(f"its first convolution takes {unshuffled} channels, not a multiple of "
                                 f"{factor}x{factor} unshuffled pixels")
    return {"_class_name": CLASS_NAME, "in_channels": unshuffled // (factor * factor), "channels": channels,
            "num_res_blocks": levels[0], "downscale_factor": factor, "adapter_type": kind}


def feature_channels(config: Mapping[str, Any]) -> list[int]:
    """The width of each feature the adapter makes, shallowest first."""
    channels = list(config["channels"])
    return channels + [channels[-1]] if config["adapter_type"] == LIGHT else channels


def residual_channels(unet_config: Mapping[str, Any], count: int) -> list[int]:
    """The widths of the first ``count`` places a UNet with ``unet_config`` takes adapter features."""
    widths = list(unet_config["block_out_channels"])
    if count > len(widths) and unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None:
        widths.append(widths[-1])  # the mid block takes one more, as SDXL's fourth feature
    return widths[:count]


def residual_sizes(unet_config: Mapping[str, Any], height: int, width: int, count: int) -> list[tuple[int, int]]:
    """The (height, width) of the first ``count`` feature places for latents of height x width: the size inside
    each down block (after its downsampler for one without attention, where diffusers adds it), then the mid
    block's."""
    types = list(unet_config["down_block_types"])
    sizes: list[tuple[int, int]] = []
    h, w = height, width
    for index, kind in enumerate(types):
        last = index == len(types) - 1
        after = (-(-h // 2), -(-w // 2)) if not last else (h, w)  # a stride-2 convolution rounds up
        sizes.append((h, w) if "CrossAttn" in kind else after)
        h, w = after
    sizes.append((h, w))
    return sizes[:count]


def family(config: Mapping[str, Any]) -> str:
    return "SDXL" if config.get("adapter_type") == FULL_XL else "SD 1.x"


def mismatch(config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> str | None:
    """Why an adapter with ``config`` cannot guide a UNet with ``unet_config`` (None: it can)."""
    from .detect import family_name

    unet_xl = unet_config.get("addition_embed_type") == "text_time"
    unet_family = family_name(unet_xl, int(unet_config.get("cross_attention_dim") or 0))
    if (config.get("adapter_type") == FULL_XL) != unet_xl:
        return f"it is made for {family(config)} and the checkpoint is {unet_family}"
    features = feature_channels(config)
    places = residual_channels(unet_config, len(features))
    if features[: len(places)] != places or len(features) > len(places):
        return (f"its features ({features}) do not fit the checkpoint's UNet blocks "
                f"({list(unet_config['block_out_channels'])})")
    return None
