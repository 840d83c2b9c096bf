"""Straight lines: M-LSD large (``mlsd_large_512_fp32.pth``): a MobileNetV2 trunk (TFLite padding) and a
decoder that predicts, at half the input resolution, a line-centre heat map and each centre's displacement
to the line's two ends. Input: RGB plus a channel of ones, scaled to -1..1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FILE = "mlsd_large_512_fp32.pth"
TOP_K = 200  # line centres considered


class _ConvBNReLU6(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = 0 if stride == 2 else (kernel - 1) // 2  # stride 2 pads right/bottom only, as TFLite does
        super().__init__(nn.Conv2d(channels_in, channels_out, kernel, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(channels_out), nn.ReLU6())
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class _InvertedResidual(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = channels_in * expand
        self.residual = stride == 1 and channels_in == channels_out
        layers: list[nn.Module] = [_ConvBNReLU6(channels_in, hidden, kernel=1)] if expand != 1 else []
        layers += [_ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, channels_out, 1, bias=False), nn.BatchNorm2d(channels_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class _Trunk(nn.Module):
    TAPS = (1, 3, 6, 10, 13)  # feature maps handed to the decoder (strides 2, 4, 8, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        features: list[nn.Module] = [_ConvBNReLU6(4, 32, stride=2)]
        channels = 32
        # MobileNetV2's (expansion, width, repeats, stride), cut after the 96-wide stage.
        for expand, width, repeat, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                              (6, 96, 3, 1)):
            for i in range(repeat):
                features.append(_InvertedResidual(channels, width, stride if i == 0 else 1, expand))
                channels = width
        self.features = nn.Sequential(*features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                taps.append(x)
        return taps


def _conv_bn(channels_in: int, channels_out: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, kernel, padding=padding, dilation=dilation),
                         nn.BatchNorm2d(channels_out), nn.ReLU())


class _Merge(nn.Module):  # "block type A": a skip connection and the (enlarged) deeper features, side by side
    def __init__(self, skip: int, deep: int, upscale: bool = True) -> None:
        super().__init__()
        self.conv1, self.conv2, self.upscale = _conv_bn(deep, 64, 1), _conv_bn(skip, 64, 1), upscale

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.conv1(deep)
        if self.upscale:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(skip), deep), 1)


class _Refine(nn.Module):  # "block type B"
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv_bn(128, 128, 3), _conv_bn(128, 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class _Head(nn.Module):  # "block type C"
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = _conv_bn(64, 64, 3, dilation=5), _conv_bn(64, 64, 3), nn.Conv2d(64, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MLSDNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Trunk()
        self.block15, self.block16 = _Merge(64, 96, upscale=False), _Refine()
        self.block17, self.block18 = _Merge(32, 64), _Refine()
        self.block19, self.block20 = _Merge(24, 64), _Refine()
        self.block21, self.block22 = _Merge(16, 64), _Refine()
        self.block23 = _Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, 7:]  # channel 0: centres; 1-4: displacements to the ends


def to_input(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 4, H, W): RGB and a fourth channel of ones, all then scaled by x / 127.5 - 1 (so
    the fourth channel is just below -1, as the net was trained)."""
    x = np.concatenate([rgb.astype(np.float32), np.ones(rgb.shape[:2] + (1,), np.float32)], axis=-1) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def segments(output: torch.Tensor, score_threshold: float, distance_threshold: float) -> np.ndarray:
    """(N, 4) line segments x0, y0, x1, y1 in input pixels, from the net's (1, 9, h, w) output."""
    _, _, height, width = output.shape
    heat = torch.sigmoid(output[:, 0:1])
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)  # local maxima only
    scores, indices = torch.topk(peaks.reshape(-1), min(TOP_K, height * width))
    ys, xs = (indices // width).cpu().numpy(), (indices % width).cpu().numpy()
    displacement = output[0, 1:5].permute(1, 2, 0).float().cpu().numpy()  # (h, w, 4): start x, y, end x, y
    found = []
    for y, x, score in zip(ys, xs, scores.cpu().numpy(), strict=True):
        dx0, dy0, dx1, dy1 = displacement[y, x]
        if score > score_threshold and np.hypot(dx0 - dx1, dy0 - dy1) > distance_threshold:
            found.append((x + dx0, y + dy0, x + dx1, y + dy1))
    return 2 * np.array(found, dtype=np.float32).reshape(-1, 4)  # the net works at half resolution
