"""Tiny ControlNets with random weights, shaped for the tiny checkpoints, written as users' files: the original
single-file layout (with or without ``control_model.``), a diffusers-keyed single file, a diffusers folder,
and a ControlNet-Union folder.

The original layout is written by a mapping of its own (not Atelier's loader's inverse), checked against
diffusers' converter in the tests, so a wrong mapping in the loader cannot hide behind the same mistake here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

HINT_CHANNELS = (8, 8, 16, 16)  # three stride-2 convolutions: map pixels to latents 8x smaller, as SD's
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


@torch.no_grad()
def _jitter(module: torch.nn.Module, seed: int) -> None:
    """Noise on every weight; larger on the zero-initialised output convolutions so the control shows."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(module.named_parameters()):
        scale = 0.3 if name.startswith(("controlnet_", "spatial_ch_projs")) or "conv_out" in name else 0.02
        param.add_(torch.randn(param.shape, generator=generator) * scale)


def tiny_controlnet(unet: Any, seed: int = 0) -> Any:
    """A ControlNetModel copied from ``unet`` (as diffusers trains one), then made different from it."""
    from diffusers import ControlNetModel

    model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    _jitter(model, seed)
    return model.eval().requires_grad_(False)


def tiny_union(unet: Any, seed: int = 0, types: int = 8) -> Any:
    """A ControlNet-Union (ControlNet++) model for an SDXL-shaped ``unet``; ``types`` 8 is the promax kind."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    base = dict(ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS).config)
    width = unet.config.block_out_channels[0]
    config = {k: v for k, v in base.items() if not k.startswith("_") and k != "global_pool_conditions"}
    config.update(num_control_type=types, num_trans_channel=width, num_trans_head=8, num_trans_layer=1,
                  num_proj_channel=width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ControlNetUnionModel.from_config(config)
    _jitter(model, seed)
    return model.eval().requires_grad_(False)


def to_original_layout(model: Any) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel's state dict with the original (cldm) names, without prefix."""
    return original_names(model.state_dict(), model.config.layers_per_block)


def original_names(state: dict[str, Any], per_level: int) -> dict[str, Any]:
    """``state`` (diffusers ControlNetModel names, ``per_level`` resnets per level) with the original names."""
    hint_blocks = len({k.split(".")[2] for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("conv_in",):
            name = f"input_blocks.0.0.{parts[-1]}"
        elif parts[0] in ("time_embedding", "add_embedding"):
            base = "time_embed" if parts[0] == "time_embedding" else "label_emb.0"
            name = f"{base}.{0 if parts[1] == 'linear_1' else 2}.{parts[-1]}"
        elif parts[0] == "down_blocks":
            level, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":
                name = f"input_blocks.{1 + level * (per_level + 1) + per_level}.0.op.{parts[-1]}"
            else:
                index = 1 + level * (per_level + 1) + int(parts[3])
                rest = ".".join(parts[4:])
                if kind == "resnets":
                    head, _, tail = rest.partition(".")
                    name = f"input_blocks.{index}.0.{_RESNET[head]}.{tail}"
                else:
                    name = f"input_blocks.{index}.1.{rest}"
        elif parts[0] == "mid_block":
            index = int(parts[2]) * 2 + (1 if parts[1] == "attentions" else 0)
            rest = ".".join(parts[3:])
            if parts[1] == "resnets":
                head, _, tail = rest.partition(".")
                rest = f"{_RESNET[head]}.{tail}"
            name = f"middle_block.{index}.{rest}"
        elif parts[0] == "controlnet_cond_embedding":
            if parts[1] == "conv_in":
                slot = 0
            elif parts[1] == "conv_out":
                slot = 2 * hint_blocks + 2
            else:
                slot = 2 * int(parts[2]) + 2
            name = f"input_hint_block.{slot}.{parts[-1]}"
        elif parts[0] == "controlnet_down_blocks":
            name = f"zero_convs.{parts[1]}.0.{parts[-1]}"
        elif parts[0] == "controlnet_mid_block":
            name = f"middle_block_out.0.{parts[-1]}"
        else:
            raise ValueError(f"no original name for {key}")
        out[name] = value
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata or {"format": "pt"})
    os.replace(tmp, path)
    return path


def write_original(path: Path, model: Any, prefix: str = "control_model.", extra: dict[str, torch.Tensor] | None = None,
                   pickle: bool = False) -> Path:
    """The original single-file layout (``.safetensors``, or a ``.pth`` state dict with ``pickle``)."""
    tensors = {prefix + k: v for k, v in to_original_layout(model).items()}
    tensors.update(extra or {})
    if pickle:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": tensors}, path)
        return path
    return _save(tensors, path)


def write_diffusers_file(path: Path, model: Any) -> Path:
    """diffusers' names in one file, without config (how many SDXL ControlNets are shared)."""
    return _save(dict(model.state_dict()), path)


def write_diffusers_folder(path: Path, model: Any) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    assert config["_class_name"] in ("ControlNetModel", "ControlNetUnionModel")
    return path
