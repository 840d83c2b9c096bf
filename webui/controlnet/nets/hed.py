"""Soft edges: ControlNet 1.1's Apache-2.0 HED (``ControlNetHED.pth``).

Five VGG-like stages, each ending in a 1x1 "projection" to one edge channel; the map is the sigmoid of the
mean of the five projections, each enlarged to the input size. Input: RGB in 0..255 (the net subtracts its
learnt ``norm``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FILE = "ControlNetHED.pth"


class _Stage(nn.Module):
    """``convs.{i}`` 3x3 convolutions with ReLU, then ``projection`` to one channel."""

    def __init__(self, channels_in: int, channels: int, depth: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(channels_in if i == 0 else channels, channels, 3, padding=1)
                                     for i in range(depth)])
        self.projection = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if pool:
            x = F.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HEDNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.block1 = _Stage(3, 64, 2)
        self.block2 = _Stage(64, 128, 2)
        self.block3 = _Stage(128, 256, 3)
        self.block4 = _Stage(256, 512, 3)
        self.block5 = _Stage(512, 512, 3)

    def forward(self, rgb255: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) RGB in 0..255 -> (H, W) edge strength in 0..1."""
        height, width = rgb255.shape[-2:]
        x = rgb255 - self.norm
        projections = []
        for index, stage in enumerate((self.block1, self.block2, self.block3, self.block4, self.block5)):
            x, projection = stage(x, pool=index > 0)
            projections.append(F.interpolate(projection, (height, width), mode="bilinear", align_corners=False))
        return torch.sigmoid(torch.cat(projections, 1).mean(1))[0]
