"""What a ControlNet file holds, from its tensor names and shapes alone (a safetensors header is enough).

- layout ``ldm``: the original ControlNet layout (``input_hint_block``, ``zero_convs``, ``middle_block_out``),
  with or without the ``control_model.`` prefix; v1.0 files that also carry a whole SD model keep only
  ``control_model.*``;
- layout ``diffusers``: diffusers' ControlNetModel names (``controlnet_cond_embedding``,
  ``controlnet_down_blocks``), common for SDXL single files; ``union`` when it is a ControlNet-Union model
  (``task_embedding``, ``control_add_embedding``);
- the family it was made for: SDXL when it has the size/crop embedding, otherwise by its text width
  (768: SD 1.x, 1024: SD 2.x).

T2I-Adapters are recognised before this (``t2i``); files that are something else (a T2I style adapter,
Control-LoRA, ControlLLLite, IP-Adapter, a checkpoint, a LoRA) are refused with a message saying what they are.
Pure: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import AtelierError
from .t2i import unsupported as unsupported_adapter

LDM_PREFIX = "control_model."
_TO_K = re.compile(r"attn2\.to_k\.weight$")


class ControlNetFileError(AtelierError):
    """A ControlNet file that cannot be used; the message names it and says why."""

    def __init__(self, message: str, field: str | None = "model") -> None:
        super().__init__(message, field)


@dataclass(frozen=True)
class ControlNetKind:
    layout: str  # "ldm" | "diffusers"
    union: bool
    prefix: str  # the prefix to strip from tensor names ("control_model." or "")
    sdxl: bool  # has SDXL's size/crop ("add") embedding
    context_dim: int  # width of the text embeddings its cross-attention takes (0: no cross-attention)

    @property
    def family(self) -> str:
        return family_name(self.sdxl, self.context_dim)


def family_name(sdxl: bool, context_dim: int) -> str:
    """How messages name the model family a ControlNet or checkpoint belongs to."""
    if sdxl:
        return "SDXL"
    known = {768: "SD 1.x", 1024: "SD 2.x"}
    return known.get(context_dim, f"SD-shaped (text width {context_dim})")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", value))


def _what_else(keys: list[str]) -> str | None:
    adapter = unsupported_adapter(keys)
    if adapter:
        return adapter
    if any("lora_controlnet" in k for k in keys):
        return "a Control-LoRA (Stability AI's control-lora files), which Atelier does not support yet"
    if any(k.startswith("lllite_") or ".lllite" in k for k in keys):
        return "a ControlLLLite model, which Atelier does not support"
    if any(k.startswith(("image_proj.", "ip_adapter.")) or k in ("image_proj", "ip_adapter") for k in keys):
        return "an IP-Adapter, which Atelier does not support yet"
    if any(k.startswith(("body.", "adapter.body.", "adapter.conv_in")) for k in keys):
        return "a T2I-Adapter of a layout Atelier does not know"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "a Stable Diffusion checkpoint: put it in models/Stable-diffusion"
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or "lora_A" in k for k in keys):
        return "a LoRA: put it in models/Lora"
    return None


def detect_controlnet(shapes: Mapping[str, Any], name: str) -> ControlNetKind:
    """The kind of ControlNet ``shapes`` (tensor name -> shape) describe; ControlNetFileError otherwise."""
    keys = list(shapes)
    prefix = LDM_PREFIX if any(k.startswith(LDM_PREFIX) for k in keys) else ""
    inner = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    if any(k.startswith("input_hint_block.") for k in inner) and any(k.startswith("zero_convs.") for k in inner):
        layout, sdxl = "ldm", any(k.startswith("label_emb.") for k in inner)
    elif any(k.startswith("controlnet_cond_embedding.") for k in inner):
        layout, sdxl = "diffusers", any(k.startswith("add_embedding.") for k in inner)
    else:
        other = _what_else(keys)
        raise ControlNetFileError(f"{name}: not a ControlNet" + (f": it looks like {other}" if other else
                                  " (no input_hint_block.* or controlnet_cond_embedding.* tensors)"))
    union = layout == "diffusers" and any(k.startswith(("task_embedding", "control_add_embedding.")) for k in inner)
    widths = {_shape(shapes[prefix + k])[1] for k in inner if _TO_K.search(k) and len(_shape(shapes[prefix + k])) == 2}
    if len(widths) > 1:
        raise ControlNetFileError(f"{name}: its cross-attention layers disagree on the text width {sorted(widths)}")
    return ControlNetKind(layout, union, prefix, sdxl, widths.pop() if widths else 0)
