"""Where a ControlNet sits while a pass runs, following the checkpoint's offload plan (models/offload.py):

- no accelerator: in RAM, nothing to do;
- offload "none": on the device for the whole job (like the checkpoint), back to RAM when the job ends;
- offload "model": on the device for the pass (the UNet and it are both needed every step, as in diffusers'
  ControlNet pipelines), back to RAM after it;
- offload "sequential", or the unit's ``low_vram``: streamed layer by layer with accelerate's CPU offload hooks,
  removed after the pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..models.offload import OffloadMode

STAY, JOB, PASS, STREAM = "stay", "job", "pass", "stream"


def placement(device_type: str, mode: OffloadMode | None, low_vram: bool) -> str:
    """Which of the four placements a pass uses (pure; what ``place`` then does)."""
    if device_type == "cpu":
        return STAY
    if low_vram or mode is OffloadMode.SEQUENTIAL:
        return STREAM
    if mode is OffloadMode.MODEL:
        return PASS
    return JOB


def _nothing() -> None:
    return None


def place(model: Any, device: torch.device, mode: OffloadMode | None, low_vram: bool, on_device: set[int],
          key: int) -> Callable[[], None]:
    """Place ``model`` for a pass; returns what undoes it after the pass. ``on_device`` collects the models
    left on the device until the job ends (the session moves them back)."""
    where = placement(device.type, mode, low_vram)
    if where == STAY:
        return _nothing
    if where == STREAM:
        from accelerate import cpu_offload
        from accelerate.hooks import remove_hook_from_module

        if key in on_device:
            model.to("cpu")
            on_device.discard(key)
        cpu_offload(model, execution_device=device)
        return lambda: remove_hook_from_module(model, recurse=True)
    model.to(device)
    if where == PASS:
        return lambda: model.to("cpu")
    on_device.add(key)
    return _nothing
