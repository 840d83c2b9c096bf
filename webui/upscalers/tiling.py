"""Tiled inference for any image-to-image model that enlarges by a whole factor: pure torch.

The picture is cut into as few overlapping tiles as the tile size allows, all of one size, and each tile's
output is weighted before it is added: where two tiles overlap, the outer quarter
of each one's share weighs nothing (those pixels saw the least context inside their tile, which is what makes
seams visible) and the middle half is a linear cross-fade. Weights are per axis and sum to one at every
pixel, so a model that only looks a few pixels around gives the untiled result exactly, and others differ
from it by little, with no visible edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def tile_layout(size: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """(tile length, starts) along one side: as few tiles as ``tile`` allows, shrunk evenly so that neighbours
    overlap by at least ``overlap`` pixels and no more than needed (a 256-pixel side with tiles of up to 192
    gets two tiles of 136, not two of 192 that would compute half the picture twice)."""
    if size <= tile:
        return size, [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    length = min(tile, math.ceil((size + (count - 1) * overlap) / count))
    return length, [i * (size - length) // (count - 1) for i in range(count)]


def axis_weights(size: int, tile: int, overlap: int, scale: int) -> tuple[int, list[tuple[int, torch.Tensor]]]:
    """The tile length and, for each tile along one side, (output start, weights over its output); the weights
    of all tiles add up to 1 at every output pixel."""
    length, starts = tile_layout(size, tile, overlap)
    out_length = length * scale
    band = overlap * scale  # the overlap in output pixels
    margin = band / 4
    distance = torch.arange(out_length, dtype=torch.float64) + 0.5
    weights = []
    for i, start in enumerate(starts):
        w = torch.ones(out_length, dtype=torch.float64)
        if band > 0:
            ramp_in = ((distance - margin) / (band - 2 * margin)).clamp(0, 1)
            if i > 0:  # a tile before this one overlaps its first pixels
                w = w * ramp_in
            if i < len(starts) - 1:  # and one after it its last pixels
                w = w * ramp_in.flip(0)
        weights.append((start * scale, w))
    total = torch.zeros(size * scale, dtype=torch.float64)
    for start, w in weights:
        total[start:start + out_length] += w
    return length, [(start, (w / total[start:start + out_length]).float()) for start, w in weights]


def upscale_tiled(model_fn: ModelFn, image: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """``model_fn`` applied to ``image`` (1, C, H, W) tile by tile; returns (1, C', H*scale, W*scale) float32 on
    ``image``'s device. ``tile`` 0 (or a picture no larger than one tile) runs the model once on the whole."""
    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        return _checked(model_fn(image), height, width, scale).to(image.device, torch.float32)
    overlap = max(0, min(overlap, tile // 2 - 1))
    tile_h, rows = axis_weights(height, tile, overlap, scale)
    tile_w, cols = axis_weights(width, tile, overlap, scale)
    out: torch.Tensor | None = None
    for y, wy in rows:
        for x, wx in cols:
            y0, x0 = y // scale, x // scale
            piece = _checked(model_fn(image[:, :, y0:y0 + tile_h, x0:x0 + tile_w]), tile_h, tile_w, scale)
            piece = piece.to(image.device, torch.float32)
            if out is None:
                out = torch.zeros(1, piece.shape[1], height * scale, width * scale, device=image.device)
            weight = (wy[:, None] * wx[None, :]).to(image.device)
            out[:, :, y:y + tile_h * scale, x:x + tile_w * scale] += piece * weight
    assert out is not None
    return out


def _checked(output: torch.Tensor, height: int, width: int, scale: int) -> torch.Tensor:
    if output.dim() != 4 or tuple(output.shape[2:]) != (height * scale, width * scale):
        raise ValueError(f"the model returned {tuple(output.shape)} for a {height}x{width} input; expected "
                         f"{scale}x larger")
    return output
