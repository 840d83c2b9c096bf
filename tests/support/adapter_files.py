"""Tiny T2I-Adapters with seeded random weights, shaped for the tiny checkpoints, written as users' files:
TencentARC's original single-file names (``.pth`` or ``.safetensors``), diffusers' names in one file, and a
diffusers folder.

The original names are written by a mapping of its own (diffusers' conversion script's facts, read the other
way), not Atelier's loader's, so a wrong mapping in the loader cannot hide behind the same mistake here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from tests.support.controlnet_files import _save

# Widths per feature place of the tiny UNets (tests/support/tiny_models.py): SD 1.x [32, 64] two levels; SDXL
# [32, 64, 64] three levels plus the mid block.
SHAPES = {
    "sd1": {"channels": [32, 64], "num_res_blocks": 2, "downscale_factor": 8, "adapter_type": "full_adapter"},
    "sdxl": {"channels": [32, 64, 64, 64], "num_res_blocks": 2, "downscale_factor": 16,
             "adapter_type": "full_adapter_xl"},
    "light": {"channels": [32, 64], "num_res_blocks": 2, "downscale_factor": 8, "adapter_type": "light_adapter"},
}


@torch.no_grad()
def tiny_adapter(kind: str, seed: int = 0, in_channels: int = 3) -> Any:
    from diffusers import T2IAdapter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T2IAdapter(in_channels=in_channels, **SHAPES[kind])
    return model.eval().requires_grad_(False)


_BODY = re.compile(r"^adapter\.body\.(\d+)\.(?:(in_conv|out_conv)|resnets\.(\d+)\.(block1|block2))\.(weight|bias)$")


def original_names(model: Any) -> dict[str, torch.Tensor]:
    """The state dict under TencentARC's names: the full adapter numbers its resnets through all levels
    (``body.{level * blocks + j}``), the light one nests them (``body.{level}.body.{j}``)."""
    light = model.config.adapter_type == "light_adapter"
    blocks = model.config.num_res_blocks
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("adapter.conv_in."):
            out[key[len("adapter."):]] = value
            continue
        m = _BODY.match(key)
        assert m is not None, key
        level, conv, resnet, part, param = int(m[1]), m[2], m[3], m[4], m[5]
        if light:
            name = f"body.{level}.{conv}" if conv else f"body.{level}.body.{resnet}.{part}"
        elif conv:
            name = f"body.{level * blocks}.{conv}"
        else:
            name = f"body.{level * blocks + int(resnet)}.{part}"
        out[f"{name}.{param}"] = value
    return out


def write_original(path: Path, model: Any) -> Path:
    """TencentARC's layout: a plain state dict pickled in a ``.pth``, or the same names in a ``.safetensors``."""
    tensors = {k: v.contiguous() for k, v in original_names(model).items()}
    if path.suffix == ".pth":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, path)
        return path
    return _save(tensors, path)


def write_diffusers_file(path: Path, model: Any) -> Path:
    return _save(dict(model.state_dict()), path)


def write_diffusers_folder(path: Path, model: Any) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path
