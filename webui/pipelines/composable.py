"""Composable prompts (``a red circle :1.2 AND a blue background :0.8``) with A1111's semantics.

Each ``AND`` part is conditioned on its own and its guidance delta is weighted:

    denoised = uncond + cfg * sum_i w_i * (cond_i - uncond)

diffusers' pipelines compute ``uncond + cfg * (cond - uncond)`` on a batch ``[uncond, cond]``. For the call,
the pipeline's UNet is replaced (``pipe.register_modules``, as the refiner does) by ``ComposableUNet``, which
runs the uncond rows and one copy of the cond rows per part in one batch and hands back
``uncond + sum_i w_i * (cond_i - uncond)`` as the cond prediction: the pipeline's own CFG then gives A1111's
formula, and every sampler, img2img, inpainting and the hires pass work unchanged. Everything else the pipeline
asks of its UNet (config, dtype, device, offload hooks) is the real UNet's.
"""

from __future__ import annotations

from typing import Any

import torch

from .conditioning import ScheduledConditioning


class ComposableUNet:
    """Stands in for a pipeline's UNet while a composed prompt is sampled. ``step`` (1-based) picks each part's
    conditioning under prompt editing; the job's step callback moves it on."""

    def __init__(self, inner: Any, conditioning: ScheduledConditioning, count: int) -> None:
        self.inner = inner
        self.conditioning = conditioning
        self.count = count  # images in the call
        self.step = 1

    def __getattr__(self, name: str) -> Any:  # only reached for what this class does not define
        return getattr(self.__dict__["inner"], name)

    def __call__(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                 *args: Any, **kwargs: Any) -> Any:
        count = self.count
        rows = sample.shape[0]
        guided = rows == 2 * count  # [uncond, cond]; without guidance (CFG <= 1) only the cond rows
        parts = self.conditioning.parts_at(self.step)
        part_count = len(parts)
        # Row order of the expanded batch: the uncond rows, then the cond rows once per part.
        uncond_rows = list(range(count)) if guided else list(range(rows))
        cond_rows = list(range(count, 2 * count)) if guided else list(range(rows))
        index = torch.tensor(uncond_rows + cond_rows * part_count, device=sample.device)
        negative = self.conditioning.at(self.step)[1]

        def expand(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
                return value.index_select(0, index.to(value.device))
            if isinstance(value, dict):
                return {key: expand(item) for key, item in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(expand(item) for item in value)
            return value

        hidden = expand(encoder_hidden_states)
        unconds = hidden[:count] if guided else negative.embeds.to(hidden).expand(count, -1, -1)
        embeds = [unconds] + [c.embeds.to(hidden).expand(count, -1, -1) for _, c in parts]
        hidden = torch.cat(embeds)
        kwargs = {key: expand(value) for key, value in kwargs.items()}
        added = kwargs.get("added_cond_kwargs")
        if isinstance(added, dict) and isinstance(added.get("text_embeds"), torch.Tensor):  # SDXL: each part's pooled
            pooled = added["text_embeds"]
            pooled_u = pooled[:count] if guided else _pooled(negative, pooled, count)
            added["text_embeds"] = torch.cat([pooled_u] + [_pooled(c, pooled, count) for _, c in parts])
        out = self.inner(expand(sample), expand(timestep), hidden, *[expand(a) for a in args], **kwargs)
        prediction = out[0] if isinstance(out, tuple) else out.sample
        uncond, conds = prediction[:count], prediction[count:].split(count)
        combined = uncond + sum(weight * (cond - uncond) for (weight, _), cond in zip(parts, conds, strict=True))
        result = torch.cat([uncond, combined]) if guided else combined
        return (result,) if isinstance(out, tuple) else type(out)(sample=result)


def _pooled(conditioning: Any, like: torch.Tensor, count: int) -> torch.Tensor:
    if conditioning.pooled is None:
        return like[-count:]
    return conditioning.pooled.to(like).expand(count, -1)


def install(pipe: Any, conditioning: ScheduledConditioning, count: int) -> ComposableUNet | None:
    """Put a ComposableUNet in front of the pipeline's UNet when the prompt is composed (None: nothing to do)."""
    if not conditioning.composed:
        return None
    proxy = ComposableUNet(pipe.unet, conditioning, count)
    pipe.register_modules(unet=proxy)
    return proxy


def uninstall(pipe: Any, proxy: ComposableUNet | None) -> None:
    if proxy is not None and pipe.unet is proxy:
        pipe.register_modules(unet=proxy.inner)


def swap_unet(pipe: Any, unet: Any, conditioning: ScheduledConditioning | None = None) -> None:
    """Give the pipeline another UNet (the refiner's), behind the composable proxy when one is installed."""
    current = pipe.unet
    if isinstance(current, ComposableUNet):
        current.inner = unet
        if conditioning is not None:
            current.conditioning = conditioning
    else:
        pipe.register_modules(unet=unet)
