"""One T2I-Adapter file (or diffusers folder) -> a diffusers ``T2IAdapter``, for ``loader`` to hand out like a
ControlNet. The tensors come from ``loader`` (safetensors, or ``.pth`` through ``torch.load(weights_only=True)``);
original names are converted by ``t2i``; the config comes from the tensors (and a folder's config.json); the
module is built without random initialisation. An adapter made for another model family is refused by name."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..models.loader import CheckpointLoadError, instantiate_module
from . import t2i
from .detect import ControlNetFileError

log = logging.getLogger(__name__)


def _refuse(label: str, problem: str, checkpoint: str) -> ControlNetFileError:
    return ControlNetFileError(f"T2I-Adapter {label} cannot guide checkpoint {checkpoint}: {problem}. "
                               "Choose an adapter made for the checkpoint's model family.")


def diffusers_shapes(label: str, kind: t2i.AdapterKind, shapes: Mapping[str, Any], unet_config: Mapping[str, Any],
                     checkpoint: str) -> dict[str, Any]:
    """``shapes`` (or tensors) under diffusers' names; original files are SD 1.x adapters, refused on SDXL here
    (their block numbering can only be split by the UNet's levels)."""
    if kind.layout == "diffusers":
        return {k: v for k, v in shapes.items() if k.startswith(t2i.DIFFUSERS_PREFIX)}
    if unet_config.get("addition_embed_type") == "text_time":
        raise _refuse(label, "it is made for SD 1.x and the checkpoint is SDXL", checkpoint)
    try:
        names = t2i.original_to_diffusers(list(shapes), kind.light, len(unet_config["block_out_channels"]))
    except t2i.AdapterLayoutError as exc:
        raise ControlNetFileError(f"{label}: {exc}") from exc
    return {names[k]: v for k, v in shapes.items() if k in names}


def config_for(label: str, kind: t2i.AdapterKind, shapes: Mapping[str, Any], unet_config: Mapping[str, Any],
               checkpoint: str, file_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The adapter's config, checked against the checkpoint's UNet (ControlNetFileError naming the file)."""
    renamed = diffusers_shapes(label, kind, shapes, unet_config, checkpoint)
    try:
        config = t2i.derive_config(renamed, file_config)
    except t2i.AdapterLayoutError as exc:
        raise ControlNetFileError(f"{label}: not a T2I-Adapter layout Atelier knows ({exc})") from exc
    problem = t2i.mismatch(config, unet_config)
    if problem:
        raise _refuse(label, problem, checkpoint)
    return config


def build_adapter(label: str, kind: t2i.AdapterKind, tensors: dict[str, torch.Tensor], unet_config: Mapping[str, Any],
                  dtype: torch.dtype, checkpoint: str, file_config: Mapping[str, Any] | None = None) -> Any:
    """The eval-mode ``T2IAdapter`` holding ``tensors`` (the file's, any layout)."""
    config = config_for(label, kind, {k: tuple(v.shape) for k, v in tensors.items()}, unet_config, checkpoint,
                        file_config)
    renamed = diffusers_shapes(label, kind, tensors, unet_config, checkpoint)
    from diffusers import T2IAdapter

    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        return instantiate_module(lambda: T2IAdapter(**fields), renamed, dtype, "T2I-Adapter", label)
    except CheckpointLoadError as exc:
        raise ControlNetFileError(str(exc)) from exc
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ControlNetFileError(f"{label}: cannot build this T2I-Adapter ({exc})") from exc
