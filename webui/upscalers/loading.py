"""One upscaler file -> a ready super-resolution model, without running anything the file contains.

Weights are read by the same reader as checkpoints (``read_checkpoint_file``): safetensors through its
validated header, ``.pth`` / ``.pt`` with ``torch.load(weights_only=True)``, which refuses a pickle that asks
to run code. Only the tensors reach spandrel (``load_from_state_dict``), which tells the architecture and its
hyper-parameters from their names and shapes; spandrel never opens a file here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.header import CorruptCheckpointError
from ..models.loader import BUILD_LOCK, CheckpointLoadError, read_checkpoint_file
from .errors import UpscalerError
from .spandrel_import import import_spandrel

MAX_SCALE = 16  # larger "scales" are not super-resolution models anyone ships


@dataclass
class UpscalerModel:
    """A loaded model (on the CPU, fp32 until a job moves it) and what the tiler needs to know about it."""

    name: str
    path: Path
    architecture: str  # spandrel's name, e.g. "ESRGAN", "RealESRGAN Compact", "SwinIR"
    scale: int
    descriptor: Any  # spandrel's ImageModelDescriptor: call it with a (1, 3, h, w) tensor in [0, 1]
    supports_half: bool
    supports_bfloat16: bool
    tiling_discouraged: bool  # the architecture wants the whole picture at once (spandrel's advice)

    @property
    def nbytes(self) -> int:
        module = self.descriptor.model
        return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def load_upscaler(name: str, path: Path, field: str = "upscaler") -> UpscalerModel:
    """Raises UpscalerError (naming the file) for a file that is unsafe, damaged or not an upscaler."""
    try:
        tensors, _ = read_checkpoint_file(path, torch.float32, skip=())
    except (CheckpointLoadError, CorruptCheckpointError) as exc:  # unsafe pickles, damaged files: named in the message
        raise UpscalerError(f"Upscaler {exc}", field) from exc
    if not tensors:
        raise UpscalerError(f"Upscaler {path.name}: the file holds no tensors", field)
    try:
        spandrel = import_spandrel()
    except ImportError as exc:
        raise UpscalerError(f"Upscaler {path.name}: upscaler models need the spandrel package, which cannot be "
                            f"imported ({exc}); reinstall Atelier's requirements", field) from exc
    try:
        with BUILD_LOCK:  # no other thread's weightless-module construction meanwhile (models/loader.py)
            descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(tensors)
    except spandrel.UnsupportedModelError as exc:
        raise UpscalerError(f"Upscaler {path.name}: not an upscaler model of a known architecture (ESRGAN, "
                            "Real-ESRGAN, SwinIR, DAT, HAT, ...)", field) from exc
    except Exception as exc:  # a known architecture's names with wrong shapes, missing tensors...
        details = " ".join(str(exc).split())[:300] or "no details"
        raise UpscalerError(f"Upscaler {path.name}: cannot be loaded ({type(exc).__name__}: {details})",
                            field) from exc
    _check_usable(descriptor, spandrel, path, field)
    descriptor.model.eval().requires_grad_(False)
    return UpscalerModel(name, path, descriptor.architecture.name, int(descriptor.scale), descriptor,
                         bool(descriptor.supports_half), bool(descriptor.supports_bfloat16),
                         descriptor.tiling != spandrel.ModelTiling.SUPPORTED)


def _check_usable(descriptor: Any, spandrel: Any, path: Path, field: str) -> None:
    """Only RGB-in, RGB-out super-resolution: a denoiser, face restorer or inpainter would not enlarge anything."""
    kind = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerError(f"Upscaler {path.name}: a {kind} {descriptor.purpose.lower()} model, not an upscaler",
                            field)
    if descriptor.purpose != "SR" or not 1 < descriptor.scale <= MAX_SCALE:
        what = {"FaceSR": "face restoration", "Restoration": "restoration (1x)"}.get(descriptor.purpose,
                                                                                    descriptor.purpose)
        raise UpscalerError(f"Upscaler {path.name}: a {kind} {what} model, not an upscaler (it does not enlarge "
                            "pictures)", field)
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerError(f"Upscaler {path.name}: works on {descriptor.input_channels}-channel pictures; only "
                            "RGB (3-channel) upscalers are supported", field)
