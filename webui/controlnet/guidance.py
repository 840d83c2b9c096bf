"""The ControlNet step: before every UNet call of a pipeline, each active unit's ControlNet runs on the same
inputs and its residuals, scaled, are handed to the UNet as ``down_block_additional_residuals`` and
``mid_block_additional_residual`` (the UNet's own ControlNet inputs, which diffusers' ControlNet pipelines
fill the same way). It is a removable forward pre-hook on the pipeline's UNet, so txt2img, img2img,
inpainting and the hires pass keep their own pipelines, step callbacks, progress and interrupt.

Per unit, as sd-webui-controlnet's hook.py does:
- weight: every residual times the unit's weight ("Balanced");
- "My prompt is more important": soft injection, residual i of n times weight * 0.825^(12 - i) (the deepest
  gets the full weight, the shallowest about a tenth). For SDXL the extension keeps the first 10 of the
  SD 1.x list of 13 (exponents 12..3), and so does this;
- "ControlNet is more important": soft injection on the conditional half of the CFG batch only; the
  unconditional half gets no control (the extension's cfg_injection). The ControlNet then runs on the
  conditional rows only, as diffusers' guess mode does;
- guidance start / end: the unit acts at step i of n (of this pass) while start <= i / n <= end;
- in the hires pass canny and MLSD units always use soft injection (the extension's forced soft injection);
- models trained with global average pooling (v1.1 shuffle) get their residuals averaged over the picture, and
  guide the conditional half only (the extension's hook treats them like cfg_injection).
Several units add up. A unit with weight 0 never gets here: the session drops it, so the picture is exactly
the one without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

SOFT_BASE = 0.825


def layer_scales(count: int, weight: float, soft: bool, sdxl: bool) -> list[float]:
    """The scale of each of ``count`` residuals (down blocks first, the mid block last)."""
    if not soft:
        return [weight] * count
    exponents = [12 - i for i in range(count)] if sdxl else [count - 1 - i for i in range(count)]
    return [weight * SOFT_BASE ** float(e) for e in exponents]


@dataclass
class GuidedUnit:
    model: Any  # ControlNetModel | ControlNetUnionModel
    hint: torch.Tensor  # (1, 3, H, W) float in [0, 1] (-1 where an inpaint map masks), the fitted control map
    weight: float
    start: float
    end: float
    soft: bool
    cond_only: bool
    global_pool: bool = False
    union_type: int | None = None  # ControlNet-Union control type
    num_types: int = 0
    _ready: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    def active(self, fraction: float) -> bool:
        return self.start <= fraction <= self.end

    def hint_for(self, rows: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (rows, str(device), dtype)
        if key not in self._ready:
            self._ready[key] = self.hint.to(device=device, dtype=dtype).repeat(rows, 1, 1, 1)
        return self._ready[key]


class ControlNetHook:
    """Called by torch before each UNet forward of one pipeline call; adds the units' residuals."""

    def __init__(self, units: list[GuidedUnit], images: int, sdxl: bool, steps: Any) -> None:
        self.units = units
        self.images = images  # pictures in the call: the batch is twice that with CFG
        self.sdxl = sdxl
        self.steps = steps  # () -> denoising steps of this call (the pipeline's num_timesteps)
        self.calls = 0

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        step = self.calls
        self.calls += 1
        fraction = step / max(int(self.steps()), 1)
        active = [unit for unit in self.units if unit.active(fraction)]
        if not active:
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        context = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        added = kwargs.get("added_cond_kwargs")
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        for unit in active:
            down, mid = self._run(unit, sample, timestep, context, added)
            if down_total is None or mid_total is None:
                down_total, mid_total = list(down), mid
            else:
                down_total = [a + b for a, b in zip(down_total, down, strict=True)]
                mid_total = mid_total + mid
        assert down_total is not None and mid_total is not None
        kwargs = dict(kwargs, down_block_additional_residuals=tuple(down_total),
                      mid_block_additional_residual=mid_total)
        return args, kwargs

    def _run(self, unit: GuidedUnit, sample: torch.Tensor, timestep: Any, context: torch.Tensor,
             added: dict[str, torch.Tensor] | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        rows = sample.shape[0]
        guided = rows == 2 * self.images  # diffusers batches [unconditional, conditional] under CFG
        cond_only = unit.cond_only and guided
        model = unit.model
        x = sample[:, : model.config.in_channels]  # an inpainting UNet's 9 channels: the latents are the first 4
        if cond_only:
            x, context = x[self.images:], context[self.images:]
            if added is not None:
                added = {k: v[self.images:] for k, v in added.items()}
            if torch.is_tensor(timestep) and timestep.ndim > 0 and timestep.shape[0] == rows:
                timestep = timestep[self.images:]
        hint = unit.hint_for(x.shape[0], x.device, model.dtype)
        extra: dict[str, Any] = {}
        if unit.union_type is not None:
            control_type = torch.zeros(x.shape[0], unit.num_types, device=x.device, dtype=model.dtype)
            control_type[:, unit.union_type] = 1
            extra = {"controlnet_cond": [hint], "control_type": control_type, "control_type_idx": [unit.union_type]}
        else:
            extra = {"controlnet_cond": hint}
        down, mid = model(x, timestep, encoder_hidden_states=context, added_cond_kwargs=added,
                          conditioning_scale=1.0, return_dict=False, **extra)
        scales = layer_scales(len(down) + 1, unit.weight, unit.soft, self.sdxl)
        scaled = [d * s for d, s in zip(down, scales, strict=False)]
        mid = mid * scales[-1]
        if unit.global_pool:
            scaled = [torch.mean(d, dim=(2, 3), keepdim=True) for d in scaled]
            mid = torch.mean(mid, dim=(2, 3), keepdim=True)
        if cond_only:
            scaled = [torch.cat([torch.zeros_like(d), d]) for d in scaled]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return scaled, mid
