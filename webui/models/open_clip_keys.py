"""The OpenCLIP text tower's original names -> transformers' CLIP names (SD 2.x, SDXL's second encoder).

Pure (no torch import): it renames and splits whatever tensors it is given. The joint q/k/v projection
(``attn.in_proj_*``) is split into three views of the same memory, not copies, so converting costs no
RAM. Keys that are not part of the text model (``logit_scale``, ``position_ids``, the visual tower)
are left out. ``tools/ldm_writer.clip_to_open_clip`` is the inverse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["open_clip_to_hf"]

_FIXED = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")


def open_clip_to_hf(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Tensors under ``prefix`` renamed for ``CLIPTextModel(WithProjection)`` (``text_model.`` wrapper kept).

    The projection comes in two spellings: Stability's files store ``text_projection`` as
    [hidden, projection], the transpose of the Linear weight; diffusers'
    convert_diffusers_to_original_sdxl.py stores ``text_projection.weight`` in Linear layout. SDXL's is
    square (1280 x 1280), so the orientation follows the name, never the shape.
    """
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in _FIXED:
            out[_FIXED[name]] = value
        elif m := _IN_PROJ.match(name):
            layer, param = m[1], m[2]
            for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"text_model.encoder.layers.{layer}.self_attn.{part}_proj.{param}"] = chunk
        elif (m := _LAYER.match(name)) and m[2] in _PARTS:
            out[f"text_model.encoder.layers.{m[1]}.{_PARTS[m[2]]}.{m[3]}"] = value
    released, linear = sd.get(prefix + "text_projection"), sd.get(prefix + "text_projection.weight")
    if released is not None:  # the released spelling wins if a file has both
        out["text_projection.weight"] = released.T.contiguous()
    elif linear is not None:
        out["text_projection.weight"] = linear
    return out
