"""Soft edges: PiDiNet (``table5_pidinet.pth``, the "carv4" net with dilation 24 and spatial attention).

Pixel-difference convolutions: a depthwise 3x3 kernel applied as a central ("cd"), angular ("ad") or radial
("rd", on a 5x5 ring) difference, or as a plain convolution ("cv"). The file stores the plain 3x3 kernels
(under ``module.``, inside ``state_dict``); the differences are taken at run time. Input: BGR in 0..1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FILE = "table5_pidinet.pth"
WIDTH, DILATION = 60, 24
# The kind of each of the 16 pixel-difference layers (init block first), repeating cd, ad, rd, cv.
KINDS = ("cd", "ad", "rd", "cv") * 4
_CLOCKWISE = [3, 0, 1, 6, 4, 2, 7, 8, 5]
_RING_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]
_RING_INNER = [6, 7, 8, 11, 13, 16, 17, 18]


def pixel_difference_conv(kind: str, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A 3x3 convolution (stride 1, padding 1) taken as the pixel difference ``kind`` asks for."""
    if kind == "cv":
        return F.conv2d(x, weight, padding=1, groups=groups)
    if kind == "cd":  # each neighbour minus the centre: the plain response less the kernel's sum at the centre
        return F.conv2d(x, weight, padding=1, groups=groups) - F.conv2d(x, weight.sum((2, 3), keepdim=True),
                                                                        groups=groups)
    out_ch, in_ch = weight.shape[:2]
    flat = weight.reshape(out_ch, in_ch, 9)
    if kind == "ad":  # each neighbour minus the next one clockwise
        return F.conv2d(x, (flat - flat[:, :, _CLOCKWISE]).reshape(weight.shape), padding=1, groups=groups)
    ring = torch.zeros(out_ch, in_ch, 25, dtype=weight.dtype, device=weight.device)  # "rd": outer minus inner
    ring[:, :, _RING_OUTER] = flat[:, :, 1:]
    ring[:, :, _RING_INNER] = -flat[:, :, 1:]
    return F.conv2d(x, ring.reshape(out_ch, in_ch, 5, 5), padding=2, groups=groups)


class _PixelDifference(nn.Module):
    def __init__(self, kind: str, channels_in: int, channels_out: int, groups: int = 1) -> None:
        super().__init__()
        self.kind, self.groups = kind, groups
        self.weight = nn.Parameter(torch.empty(channels_out, channels_in // groups, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # as nn.Conv2d starts (the file replaces it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_difference_conv(self.kind, x, self.weight, self.groups)


class _Block(nn.Module):
    def __init__(self, kind: str, channels_in: int, channels_out: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.shortcut = nn.Conv2d(channels_in, channels_out, 1)
        self.conv1 = _PixelDifference(kind, channels_in, channels_in, groups=channels_in)
        self.conv2 = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.max_pool2d(x, 2, 2)
        y = self.conv2(F.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.stride > 1 else x)


class _Dilations(nn.Module):  # the paper's CDCM
    def __init__(self, channels_in: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 1)
        for index, dilation in enumerate((5, 7, 9, 11), start=1):
            self.add_module(f"conv2_{index}", nn.Conv2d(channels, channels, 3, dilation=dilation, padding=dilation,
                                                        bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(x))
        return sum((getattr(self, f"conv2_{i}")(x) for i in range(1, 5)), torch.zeros_like(x))


class _Attention(nn.Module):  # the paper's CSAM
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class _Reduce(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c = WIDTH
        self.init_block = _PixelDifference(KINDS[0], 3, c)
        widths = (c, 2 * c, 4 * c, 4 * c)
        layer = 1
        channels_in = c
        for stage, width in enumerate(widths, start=1):
            for index in range(1, 4 if stage == 1 else 5):
                stride = 2 if index == 1 and stage > 1 else 1
                self.add_module(f"block{stage}_{index}", _Block(KINDS[layer], channels_in, width, stride))
                channels_in, layer = width, layer + 1
        self.dilations = nn.ModuleList(_Dilations(w, DILATION) for w in widths)
        self.attentions = nn.ModuleList(_Attention(DILATION) for _ in widths)
        self.conv_reduces = nn.ModuleList(_Reduce(DILATION) for _ in widths)
        self.classifier = nn.Conv2d(4, 1, 1)

    def forward(self, bgr01: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) BGR in 0..1 -> (H, W) edge strength in 0..1 (the fused output)."""
        height, width = bgr01.shape[-2:]
        x = self.init_block(bgr01)
        edges = []
        for stage in range(4):
            for index in range(1, 4 if stage == 0 else 5):
                x = getattr(self, f"block{stage + 1}_{index}")(x)
            reduced = self.conv_reduces[stage](self.attentions[stage](self.dilations[stage](x)))
            edges.append(F.interpolate(reduced, (height, width), mode="bilinear", align_corners=False))
        return torch.sigmoid(self.classifier(torch.cat(edges, 1)))[0, 0]


def file_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original file keeps its tensors under ``module.`` (it was saved from DataParallel)."""
    return {k.removeprefix("module."): v for k, v in tensors.items()}
