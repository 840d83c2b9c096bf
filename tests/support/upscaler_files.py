"""Upscaler model files written as trainers and model sites distribute them, for tests: tiny but real
Real-ESRGAN Compact (SRVGG) networks that spandrel recognises, as .safetensors, plain .pth state dicts,
BasicSR's {"params_ema": ...} .pth, and hostile pickles."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from webui.upscalers.spandrel_import import import_spandrel


def compact_state(scale: int = 2, seed: int = 0, num_conv: int = 2, num_feat: int = 8) -> dict[str, torch.Tensor]:
    """The state dict of a Compact network with seeded random weights (its output is nearest-neighbour
    enlargement plus a learned residual, so pictures stay recognisable)."""
    import_spandrel()
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=scale)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def write_upscaler(path: Path, state: dict[str, torch.Tensor], wrapper: str | None = None) -> Path:
    """``state`` as ``path`` (.safetensors, or a torch.save pickle of plain tensors, optionally inside
    ``{wrapper: state}`` as BasicSR saves Real-ESRGAN models)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({wrapper: state} if wrapper else state, path)
    return path


class _Call:
    """Pickles as a call of ``func(*args)``: what a malicious model file hides inside its data."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def write_hostile_pth(path: Path, marker: Path) -> Path:
    """A real upscaler's weights with a payload that would create ``marker`` if unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": compact_state(), "evil": _Call(os.system, f"touch {marker}")}, path)
    return path
