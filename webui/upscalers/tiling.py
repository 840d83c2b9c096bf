"""Tiled inference for any image-to-image model that enlarges by a whole factor: pure torch.

The picture is cut into overlapping tiles (the last tile of a row or column is moved back so every tile has
full size) and each tile's output is weighted before it is added: where two tiles overlap, the outer quarter
of each one's share weighs nothing (those pixels saw the least context inside their tile, which is what makes
seams visible) and the middle half is a linear cross-fade. Weights are per axis and sum to one at every
pixel, so a model that only looks a few pixels around gives the untiled result exactly, and others differ
from it by little, with no visible edge.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where tiles begin along one side: every ``tile - overlap`` pixels, the last one flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def axis_weights(size: int, tile: int, overlap: int, scale: int) -> list[tuple[int, torch.Tensor]]:
    """(output start, weights over the tile's output) for each tile along one side; the weights of all tiles
    add up to 1 at every output pixel."""
    starts = tile_starts(size, tile, overlap)
    length = min(tile, size) * scale
    band = overlap * scale  # the overlap in output pixels
    margin = band / 4
    distance = torch.arange(length, dtype=torch.float64) + 0.5
    weights = []
    for i, start in enumerate(starts):
        w = torch.ones(length, dtype=torch.float64)
        if band > 0:
            ramp_in = ((distance - margin) / (band - 2 * margin)).clamp(0, 1)
            if i > 0:  # a tile before this one overlaps its first pixels
                w = w * ramp_in
            if i < len(starts) - 1:  # and one after it its last pixels
                w = w * ramp_in.flip(0)
        weights.append((start * scale, w))
    total = torch.zeros(size * scale, dtype=torch.float64)
    for start, w in weights:
        total[start:start + length] += w
    return [(start, (w / total[start:start + length]).float()) for start, w in weights]


def upscale_tiled(model_fn: ModelFn, image: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """``model_fn`` applied to ``image`` (1, C, H, W) tile by tile; returns (1, C', H*scale, W*scale) float32 on
    ``image``'s device. ``tile`` 0 (or a picture no larger than one tile) runs the model once on the whole."""
    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        return _checked(model_fn(image), height, width, scale).to(image.device, torch.float32)
    overlap = max(0, min(overlap, tile // 2 - 1))
    rows = axis_weights(height, tile, overlap, scale)
    cols = axis_weights(width, tile, overlap, scale)
    tile_h, tile_w = min(tile, height), min(tile, width)
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
