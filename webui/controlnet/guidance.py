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
T2I-Adapter units (``adapter``) run their adapter once per pass on the control map (features do not depend on
the step) and hand the features to the UNet as ``down_intrablock_additional_residuals``, as sd-webui-controlnet
does with them:
- the same features guide both halves of the CFG batch; "ControlNet is more important" zeroes the
  unconditional half;
- soft injection ("My prompt is more important", and canny / MLSD in the hires pass) scales the features,
  shallowest first, by weight * (0.25, 0.62, 0.825, 1.0);
- a feature whose size differs from the UNet's at its place (a picture size the adapter's downsampling does
  not divide) is resized to it, nearest neighbour (the extension's aligned adding);
- an adapter that takes one channel (the sketch adapter) gets the map's first channel.
Several units add up. A unit with weight 0 never gets here: the session drops it, so the picture is exactly
the one without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

SOFT_BASE = 0.825
ADAPTER_SOFT = (0.25, 0.62, 0.825, 1.0)


def layer_scales(count: int, weight: float, soft: bool, sdxl: bool) -> list[float]:
    """The scale of each of ``count`` residuals (down blocks first, the mid block last)."""
    if not soft:
        return [weight] * count
    exponents = [12 - i for i in range(count)] if sdxl else [count - 1 - i for i in range(count)]
    return [weight * SOFT_BASE ** float(e) for e in exponents]


def adapter_scales(count: int, weight: float, soft: bool) -> list[float]:
    """The scale of each of an adapter's ``count`` features (shallowest first)."""
    if not soft:
        return [weight] * count
    return [weight * s for s in ADAPTER_SOFT[:count]] + [weight] * max(0, count - len(ADAPTER_SOFT))


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
    adapter: bool = False  # a T2IAdapter (features for the down blocks) instead of a ControlNet
    _ready: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict, repr=False)
    _features: dict[tuple[Any, ...], list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def active(self, fraction: float) -> bool:
        return self.start <= fraction <= self.end

    def hint_for(self, rows: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (rows, str(device), dtype)
        if key not in self._ready:
            self._ready[key] = self.hint.to(device=device, dtype=dtype).repeat(rows, 1, 1, 1)
        return self._ready[key]

    def adapter_features(self, device: torch.device) -> list[torch.Tensor]:
        """The adapter's features of the map (batch 1), computed once per device: they do not change per step."""
        key = (str(device),)
        if key not in self._features:
            hint = self.hint_for(1, device, self.model.dtype)
            if int(self.model.config.in_channels) == 1:
                hint = hint[:, :1]  # the sketch adapter reads one channel, the map's first as in the extension
            self._features[key] = list(self.model(hint))
        return self._features[key]


class ControlNetHook:
    """Called by torch before each UNet forward of one pipeline call; adds the units' residuals."""

    def __init__(self, units: list[GuidedUnit], images: int, sdxl: bool, steps: Any,
                 unet_config: dict[str, Any] | None = None) -> None:
        self.units = units
        self.unet_config = unet_config or {}  # where adapter features go (t2i.residual_sizes)
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
        kwargs = dict(kwargs)
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        for unit in (u for u in active if not u.adapter):
            down, mid = self._run(unit, sample, timestep, context, added)
            if down_total is None or mid_total is None:
                down_total, mid_total = list(down), mid
            else:
                down_total = [a + b for a, b in zip(down_total, down, strict=True)]
                mid_total = mid_total + mid
        if down_total is not None and mid_total is not None:
            kwargs.update(down_block_additional_residuals=tuple(down_total), mid_block_additional_residual=mid_total)
        features: list[torch.Tensor] = []
        for unit in (u for u in active if u.adapter):
            mine = self._adapt(unit, sample)
            features = mine if not features else [a + b for a, b in zip(features, mine, strict=True)]
        if features:
            kwargs["down_intrablock_additional_residuals"] = features  # a fresh list: the UNet pops from it
        return args, kwargs

    def _adapt(self, unit: GuidedUnit, sample: torch.Tensor) -> list[torch.Tensor]:
        """One adapter unit's features, scaled, sized to their places in the UNet, for every row of the batch."""
        from .t2i import residual_sizes

        rows = sample.shape[0]
        features = unit.adapter_features(sample.device)
        scales = adapter_scales(len(features), unit.weight, unit.soft)
        sizes = residual_sizes(self.unet_config, sample.shape[2], sample.shape[3], len(features)) \
            if self.unet_config else [tuple(f.shape[-2:]) for f in features]
        out = []
        for feature, scale, size in zip(features, scales, sizes, strict=False):
            feature = feature.to(sample.dtype) * scale
            if tuple(feature.shape[-2:]) != tuple(size):
                feature = torch.nn.functional.interpolate(feature, size=size, mode="nearest")
            feature = feature.expand(rows, -1, -1, -1).clone()
            if unit.cond_only and rows == 2 * self.images:
                feature[: self.images] = 0  # diffusers batches [unconditional, conditional] under CFG
            out.append(feature)
        return out

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
