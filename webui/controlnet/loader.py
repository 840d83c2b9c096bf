"""One ControlNet file (or diffusers folder) -> a diffusers ``ControlNetModel`` / ``ControlNetUnionModel``, or a
``T2IAdapter`` when the file is a T2I-Adapter (``adapter_loader``; it then travels the same way as a ControlNet).

Offline and without running pickled code: safetensors headers are checked first (so a wrong or damaged file
fails before anything is read), ``.pth``/``.ckpt`` files open only with ``torch.load(weights_only=True)``
(``webui.models.loader.read_checkpoint_file``), original-layout names are converted by ``layout``, the config
comes from the tensors plus the checkpoint's UNet config, and the module is built without random
initialisation. A ControlNet made for another model family than the checkpoint is refused by name.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.header import CorruptCheckpointError, read_header
from ..models.loader import CheckpointLoadError, instantiate_module, modules_nbytes, read_checkpoint_file
from . import layout, t2i
from .adapter_loader import build_adapter, config_for
from .detect import ControlNetFileError, ControlNetKind, detect_controlnet

log = logging.getLogger(__name__)

# A v1.0 ControlNet file may carry a whole SD model beside control_model.*; none of it is needed.
_NOT_CONTROL = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "model_ema.", "optimizer.")


@dataclass(frozen=True)
class ControlNetSource:
    """What to load: the weights file, the folder's config.json for diffusers folders, and a name for messages."""

    label: str
    weights: Path
    config: Path | None = None


@dataclass
class LoadedControlNet:
    label: str
    model: Any  # diffusers ControlNetModel or ControlNetUnionModel, eval mode, no grad
    union: bool
    family: str
    global_pool: bool  # average the residuals over the picture (v1.1 "shuffle" models)
    load_seconds: float = 0.0
    adapter: bool = False  # a T2IAdapter: its features go to the UNet's down blocks

    @property
    def nbytes(self) -> int:
        return modules_nbytes([self.model])

    @property
    def num_control_types(self) -> int:
        return int(getattr(self.model.config, "num_control_type", 0) or 0)


def _diffusers_shapes(kind: ControlNetKind, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    inner = {k[len(kind.prefix):]: v for k, v in shapes.items() if k.startswith(kind.prefix)}
    if kind.layout == "diffusers":
        return inner
    names = layout.ldm_to_diffusers(list(inner))
    return {names[k]: v for k, v in inner.items() if k in names}


def _global_pool(source: ControlNetSource, file_config: dict[str, Any] | None) -> bool:
    if file_config is not None and "global_pool_conditions" in file_config:
        return bool(file_config["global_pool_conditions"])
    sidecar = source.weights.with_suffix(".yaml")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8", errors="replace")[:100_000]
        return bool(re.search(r"global_average_pooling:\s*[Tt]rue", text))
    return "shuffle" in source.weights.stem.lower()  # the extension's guess for v1.1 shuffle models


def _file_config(source: ControlNetSource) -> dict[str, Any] | None:
    if source.config is None:
        return None
    try:
        config = json.loads(source.config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ControlNetFileError(f"{source.label}: unreadable {source.config.name} ({exc})") from exc
    if not isinstance(config, dict):
        raise ControlNetFileError(f"{source.label}: {source.config.name} is not a JSON object")
    return config


def inspect(source: ControlNetSource) -> tuple[ControlNetKind, dict[str, Any]] | None:
    """Kind and config fields of a safetensors ControlNet from its header alone (None for pickled files)."""
    if source.weights.suffix.lower() != ".safetensors":
        return None
    try:
        header = read_header(source.weights)
    except CorruptCheckpointError as exc:
        raise ControlNetFileError(f"{source.label}: {exc}") from exc
    shapes = {k: v.shape for k, v in header.tensors.items()}
    kind = detect_controlnet(shapes, source.label)
    try:
        return kind, layout.derive_config(_diffusers_shapes(kind, shapes))
    except layout.LayoutError as exc:
        raise ControlNetFileError(f"{source.label}: not a ControlNet layout Atelier knows ({exc})") from exc


def check_header(source: ControlNetSource, unet_config: dict[str, Any], checkpoint: str) -> None:
    """Refuse a safetensors file that cannot guide the checkpoint from its header alone (nothing to do for
    pickled files, which are checked once read)."""
    if source.weights.suffix.lower() != ".safetensors":
        return
    try:
        shapes = {k: v.shape for k, v in read_header(source.weights).tensors.items()}
    except CorruptCheckpointError as exc:
        raise ControlNetFileError(f"{source.label}: {exc}") from exc
    adapter = t2i.detect_adapter(list(shapes))
    if adapter is not None:
        config_for(source.label, adapter, shapes, unet_config, checkpoint, _file_config(source))
        return
    early = inspect(source)
    if early is not None:
        check_fits(source, early[1], unet_config, checkpoint)


def check_fits(source: ControlNetSource, derived: dict[str, Any], unet_config: dict[str, Any],
               checkpoint: str) -> None:
    problem = layout.mismatch(derived, unet_config)
    if problem:
        raise ControlNetFileError(f"ControlNet {source.label} cannot guide checkpoint {checkpoint}: {problem}. "
                                  "Choose a ControlNet made for the checkpoint's model family.")


def load_controlnet(source: ControlNetSource, unet_config: dict[str, Any], dtype: torch.dtype,
                    checkpoint: str = "the checkpoint") -> LoadedControlNet:
    """Load ``source`` for a checkpoint whose UNet has ``unet_config``. Raises ControlNetFileError naming it."""
    start = time.perf_counter()
    check_header(source, unet_config, checkpoint)
    try:
        tensors, _ = read_checkpoint_file(source.weights, dtype, skip=_NOT_CONTROL)
    except (CheckpointLoadError, CorruptCheckpointError) as exc:
        raise ControlNetFileError(f"{source.label}: {exc}") from exc
    adapter = t2i.detect_adapter(list(tensors))
    if adapter is not None:
        model = build_adapter(source.label, adapter, tensors, unet_config, dtype, checkpoint, _file_config(source))
        elapsed = time.perf_counter() - start
        log.info("Loaded T2I-Adapter %s (%s) in %.1f s", source.label, model.config.adapter_type, elapsed)
        return LoadedControlNet(source.label, model, False, t2i.family(model.config), False, elapsed, adapter=True)
    kind = detect_controlnet({k: tuple(v.shape) for k, v in tensors.items()}, source.label)
    inner = {k[len(kind.prefix):]: v for k, v in tensors.items() if k.startswith(kind.prefix)}
    del tensors
    if kind.layout == "ldm":
        names = layout.ldm_to_diffusers(list(inner))
        inner = {names[k]: v for k, v in inner.items() if k in names}
    try:
        derived = layout.derive_config({k: tuple(v.shape) for k, v in inner.items()})
    except layout.LayoutError as exc:
        raise ControlNetFileError(f"{source.label}: not a ControlNet layout Atelier knows ({exc})") from exc
    check_fits(source, derived, unet_config, checkpoint)
    file_config = _file_config(source)
    config = layout.build_config(derived, kind.union, unet_config, file_config)
    global_pool = _global_pool(source, file_config)
    config["global_pool_conditions"] = False  # pooled here, after the unit's scaling (as the extension does)

    from diffusers import ControlNetModel, ControlNetUnionModel

    cls = ControlNetUnionModel if kind.union else ControlNetModel
    try:
        model = instantiate_module(lambda: cls.from_config(config), inner, dtype, "ControlNet", source.label)
    except CheckpointLoadError as exc:
        raise ControlNetFileError(str(exc)) from exc
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ControlNetFileError(f"{source.label}: cannot build this ControlNet ({exc})") from exc
    elapsed = time.perf_counter() - start
    log.info("Loaded ControlNet %s (%s%s) in %.1f s", source.label, kind.family, ", union" if kind.union else "",
             elapsed)
    return LoadedControlNet(source.label, model, kind.union, kind.family, global_pool, elapsed)
