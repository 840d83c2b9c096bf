"""Depth: Depth Anything v1 (``depth_anything_vitl14.pth``, the checkpoint of LiheYoung/Depth-Anything), run
by transformers' DepthAnythingForDepthEstimation with a config read off the file's tensors (so the ViT-S/B/L
releases all load) and the original tensor names converted to transformers' (the DINOv2 trunk's fused
``qkv`` split into query, key and value; the DPT head's ``refinenet4..1`` become fusion layers 0..3).

As the original feeds its head: the last four transformer blocks, layer-normed, without the class token.
Input: RGB in 0..1 normalised with ImageNet's mean and spread, sides multiples of 14, at least 518.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from . import WrongWeights

FILE = "depth_anything_vitl14.pth"
SIDE, MULTIPLE = 518, 14
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


_RENAMES = [
    (r"^pretrained\.cls_token$", "backbone.embeddings.cls_token"),
    (r"^pretrained\.mask_token$", "backbone.embeddings.mask_token"),
    (r"^pretrained\.pos_embed$", "backbone.embeddings.position_embeddings"),
    (r"^pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
    (r"^pretrained\.blocks\.(\d+)\.attn\.proj\.", r"backbone.encoder.layer.\1.attention.o_proj."),
    (r"^pretrained\.blocks\.(\d+)\.ls(\d)\.gamma$", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (r"^pretrained\.blocks\.(\d+)\.", r"backbone.encoder.layer.\1."),  # norm1, norm2, mlp.fc1, mlp.fc2
    (r"^pretrained\.norm\.", "backbone.layernorm."),
    (r"^depth_head\.projects\.(\d)\.", r"neck.reassemble_stage.layers.\1.projection."),
    (r"^depth_head\.resize_layers\.(\d)\.", r"neck.reassemble_stage.layers.\1.resize."),
    (r"^depth_head\.scratch\.output_conv1\.", "head.conv1."),
    (r"^depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
    (r"^depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
]
_REFINE = re.compile(r"^depth_head\.scratch\.refinenet(\d)\.(.*)$")
_SCRATCH = re.compile(r"^depth_head\.scratch\.layer(\d)_rn\.weight$")
_QKV = re.compile(r"^pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def _fusion_name(rest: str) -> str:
    rest = rest.replace("out_conv.", "projection.")
    return re.sub(r"resConfUnit(\d)\.conv(\d)", r"residual_layer\1.convolution\2", rest)


def to_transformers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original checkpoint's tensors under transformers' names (names it does not know pass unchanged,
    so the load check reports them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if (m := _QKV.match(key)) is not None:
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"backbone.encoder.layer.{m[1]}.attention.{part}.{m[2]}"] = chunk.contiguous()
            continue
        if (m := _REFINE.match(key)) is not None:
            out[f"neck.fusion_stage.layers.{4 - int(m[1])}.{_fusion_name(m[2])}"] = value
            continue
        if (m := _SCRATCH.match(key)) is not None:
            out[f"neck.convs.{int(m[1]) - 1}.weight"] = value
            continue
        for pattern, replacement in _RENAMES:
            if re.match(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        out[key] = value
    return out


# The original names of the tensors the config is read from (for messages).
_ORIGINAL = {"backbone.embeddings.position_embeddings": "pretrained.pos_embed",
             "backbone.embeddings.patch_embeddings.projection.weight": "pretrained.patch_embed.proj.weight",
             "backbone.encoder.layer.0.mlp.fc1.weight": "pretrained.blocks.0.mlp.fc1.weight",
             "neck.convs.0.weight": "depth_head.scratch.layer1_rn.weight",
             "head.conv2.weight": "depth_head.scratch.output_conv2.0.weight",
             **{f"neck.reassemble_stage.layers.{i}.projection.weight": f"depth_head.projects.{i}.weight"
                for i in range(4)}}


def _shape(tensors: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in tensors:
        raise WrongWeights(f"it has no {_ORIGINAL.get(key, key)} tensor")
    return tuple(tensors[key].shape)


def build(tensors: dict[str, torch.Tensor]) -> nn.Module:
    """transformers' Depth Anything, shaped as the (transformers-named) ``tensors`` say."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    positions, hidden = _shape(tensors, "backbone.embeddings.position_embeddings")[1:]
    patch = _shape(tensors, "backbone.embeddings.patch_embeddings.projection.weight")[-1]
    layers = len({k.split(".")[3] for k in tensors if k.startswith("backbone.encoder.layer.")})
    mlp = _shape(tensors, "backbone.encoder.layer.0.mlp.fc1.weight")[0]
    grid = int(round((positions - 1) ** 0.5))
    trunk = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         mlp_ratio=mlp // hidden, image_size=grid * patch, patch_size=patch, layerscale_value=1.0,
                         apply_layernorm=True, reshape_hidden_states=False)
    trunk.out_indices = list(range(layers - 3, layers + 1))  # the last four blocks (1-based: 0 is the embedding)
    config = DepthAnythingConfig(
        backbone_config=trunk, patch_size=patch, reassemble_hidden_size=hidden,
        neck_hidden_sizes=[_shape(tensors, f"neck.reassemble_stage.layers.{i}.projection.weight")[0] for i in range(4)],
        fusion_hidden_size=_shape(tensors, "neck.convs.0.weight")[0],
        head_hidden_size=_shape(tensors, "head.conv2.weight")[0], depth_estimation_type="relative")
    return DepthAnythingForDepthEstimation(config)


def input_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) scaled so both sides reach 518, aspect kept, each rounded to a multiple of 14 (up
    where rounding would fall below 518), as the original's "lower bound" resize."""
    scale = max(SIDE / height, SIDE / width)

    def fit(x: float) -> int:
        y = int(np.round(x / MULTIPLE) * MULTIPLE)
        return y if y >= SIDE else int(np.ceil(x / MULTIPLE) * MULTIPLE)

    return fit(scale * height), fit(scale * width)


def predict(net: nn.Module, rgb: np.ndarray, device: torch.device) -> np.ndarray:
    """Relative depth (near is high) of an RGB uint8 picture, min-max scaled to a uint8 map of its size."""
    import cv2

    height, width = rgb.shape[:2]
    in_h, in_w = input_size(height, width)
    x = cv2.resize(rgb.astype(np.float32) / 255.0, (in_w, in_h), interpolation=cv2.INTER_CUBIC)
    x = (x - MEAN) / STD
    pixels = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)
    depth = net(pixel_values=pixels).predicted_depth[:, None]
    depth = torch.nn.functional.interpolate(depth, (height, width), mode="bilinear", align_corners=False)[0, 0]
    depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-8) * 255.0
    return depth.float().cpu().numpy().astype(np.uint8)
