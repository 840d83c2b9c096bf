"""Surface normals: Bae et al.'s NNET ("Estimating and Exploiting the Aleatoric Uncertainty in Surface Normal
Estimation", ICCV 2021), the ScanNet-trained ``scannet.pt`` of lllyasviel/Annotators.

Encoder: an EfficientNet-B5 in the layout of geffnet's ``tf_efficientnet_b5_ap`` (kept under
``encoder.original_model.``): width x1.6 and depth x2.2 over EfficientNet-B0's seven stages, TensorFlow
"same" padding (strided convolutions pad more on the right and bottom), batch norm with eps 1e-3, swish,
squeeze-excite at a quarter of each block's input width. Decoder: four upsampling blocks joined to encoder
features at 1/16, 1/8, 1/4 and 1/2 of the input, a 1/8 prediction, then three "pixel-wise MLP" refinements
(1x1 convolutions over the doubled features plus the previous prediction), the last at full resolution. Each
prediction is a unit normal (x, y, z) plus a concentration ``kappa``.

Input: RGB in 0..1 normalised with ImageNet's mean and spread, sides multiples of 32. The file is
``{"model": state_dict}``; copies saved from DataParallel carry ``module.`` prefixes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FILE = "scannet.pt"
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

BN_EPS = 1e-3  # TensorFlow's batch norm epsilon, kept by the tf_ ports
WIDTH, DEPTH = 1.6, 2.2  # EfficientNet-B5's multipliers
# EfficientNet-B0's stages: (block kind, repeats, kernel, stride, expansion, channels); SE ratio 0.25 in all.
B0_STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
             ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320))
SE_RATIO = 0.25


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def widen(channels: int) -> int:
    return make_divisible(channels * WIDTH)


def deepen(repeats: int) -> int:
    return int(math.ceil(repeats * DEPTH))


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's "SAME": the output is ceil(input / stride), the extra
    padding of an even total going to the right and bottom."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(channels_in, channels_out, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                                        reversed(self.stride), strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads) if any(pads) else x, self.weight, None, self.stride, 0, 1, self.groups)


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class SqueezeExcite(nn.Module):
    """Channel gates from the mean of each channel: 1x1 down to ``reduced``, swish, 1x1 back up, sigmoid."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


def _se_width(channels_in: int) -> int:
    return max(1, int(channels_in * SE_RATIO + 0.5))


class DepthwiseSeparable(nn.Module):
    """Depthwise conv, swish, squeeze-excite, 1x1 projection (no activation); a skip when shapes allow."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.residual = stride == 1 and channels_in == channels_out
        self.conv_dw = SameConv2d(channels_in, channels_in, kernel, stride, groups=channels_in)
        self.bn1 = _norm(channels_in)
        self.se = SqueezeExcite(channels_in, _se_width(channels_in))
        self.conv_pw = SameConv2d(channels_in, channels_out, 1)
        self.bn2 = _norm(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        return y + x if self.residual else y


class InvertedResidual(nn.Module):
    """1x1 expansion, depthwise conv, squeeze-excite (sized from the block's input), 1x1 linear projection."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = make_divisible(channels_in * expansion)
        self.residual = stride == 1 and channels_in == channels_out
        self.conv_pw = SameConv2d(channels_in, mid, 1)
        self.bn1 = _norm(mid)
        self.conv_dw = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _norm(mid)
        self.se = SqueezeExcite(mid, _se_width(channels_in))
        self.conv_pwl = SameConv2d(mid, channels_out, 1)
        self.bn3 = _norm(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(self.conv_pw(x)))
        y = self.se(F.silu(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.residual else y


class EfficientNetB5(nn.Module):
    """The trunk, without its classifier. ``bn2`` (after the head conv) is in the file but the decoder reads
    the head conv's output before it, as the original does."""

    def __init__(self) -> None:
        super().__init__()
        stem = widen(32)
        self.conv_stem = SameConv2d(3, stem, 3, 2)
        self.bn1 = _norm(stem)
        stages: list[nn.Module] = []
        channels = stem
        for kind, repeats, kernel, stride, expansion, width in B0_STAGES:
            out = widen(width)
            blocks: list[nn.Module] = []
            for index in range(deepen(repeats)):
                step = stride if index == 0 else 1
                blocks.append(DepthwiseSeparable(channels, out, kernel, step) if kind == "ds"
                              else InvertedResidual(channels, out, kernel, step, expansion))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        head = widen(1280)
        self.conv_head = SameConv2d(channels, head, 1)
        self.bn2 = _norm(head)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The features the decoder joins: the outputs of stages 1, 2, 3 and 5 (1/2, 1/4, 1/8, 1/16) and of
        the head conv (1/32)."""
        x = F.silu(self.bn1(self.conv_stem(x)))
        stage_outputs = []
        for stage in self.blocks:
            x = stage(x)
            stage_outputs.append(x)
        return [stage_outputs[0], stage_outputs[1], stage_outputs[2], stage_outputs[4], self.conv_head(x)]


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.original_model = EfficientNetB5()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.original_model(x)


class UpSample(nn.Module):
    """Bilinear (corner-aligned) up to the skip feature's size, joined to it, two 3x3 conv + BN + leaky ReLU."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.BatchNorm2d(channels_out),
                                  nn.LeakyReLU(), nn.Conv2d(channels_out, channels_out, 3, padding=1),
                                  nn.BatchNorm2d(channels_out), nn.LeakyReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([x, skip], 1))


def _pixel_mlp(channels_in: int) -> nn.Sequential:
    """Four 1x1 (Conv1d over flattened pixels) layers to a 4-channel prediction."""
    return nn.Sequential(nn.Conv1d(channels_in, 128, 1), nn.ReLU(), nn.Conv1d(128, 128, 1), nn.ReLU(),
                         nn.Conv1d(128, 128, 1), nn.ReLU(), nn.Conv1d(128, 4, 1))


def normalise_prediction(out: torch.Tensor) -> torch.Tensor:
    """(x, y, z) scaled to unit length; kappa made positive (ELU + 1, at least 0.01)."""
    direction, kappa = out[:, :3], out[:, 3:4]
    direction = direction / (direction.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    return torch.cat([direction, F.elu(kappa) + 1.0 + 0.01], 1)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        skips = [widen(c) for c in (16, 24, 40, 112)]  # 24, 40, 64, 176: stages 1, 2, 3, 5
        head = widen(1280)
        self.conv2 = nn.Conv2d(head, head, 1)
        self.up1 = UpSample(head + skips[3], 1024)
        self.up2 = UpSample(1024 + skips[2], 512)
        self.up3 = UpSample(512 + skips[1], 256)
        self.up4 = UpSample(256 + skips[0], 128)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = _pixel_mlp(512 + 4)
        self.out_conv_res2 = _pixel_mlp(256 + 4)
        self.out_conv_res1 = _pixel_mlp(128 + 4)

    @staticmethod
    def _refine(mlp: nn.Module, features: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Features and the previous prediction doubled in size, joined, and run through ``mlp`` per pixel."""
        joined = torch.cat([F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=True),
                            F.interpolate(previous, scale_factor=2, mode="bilinear", align_corners=True)], 1)
        batch, channels, height, width = joined.shape
        out = mlp(joined.reshape(batch, channels, height * width))
        return normalise_prediction(out).reshape(batch, 4, height, width)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The predictions at 1/8, 1/4, 1/2 and full resolution."""
        half, quarter, eighth, sixteenth, head = features
        d2 = self.up2(self.up1(self.conv2(head), sixteenth), eighth)
        d3 = self.up3(d2, quarter)
        d4 = self.up4(d3, half)
        res8 = normalise_prediction(self.out_conv_res8(d2))
        res4 = self._refine(self.out_conv_res4, d2, res8)
        res2 = self._refine(self.out_conv_res2, d3, res4)
        res1 = self._refine(self.out_conv_res1, d4, res2)
        return [res8, res4, res2, res1]


class NormalBaeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) normalised RGB (sides multiples of 32) -> (1, 3, H, W) unit normals."""
        return self.decoder(self.encoder(x))[-1][:, :3]


def file_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies saved from DataParallel carry ``module.`` prefixes (the original loader strips them)."""
    return {k.replace("module.", ""): v for k, v in tensors.items()}


def to_picture(normal: np.ndarray) -> np.ndarray:
    """(H, W, 3) normals in -1..1 -> uint8 RGB as the extension draws them: (n + 1) / 2, clipped, x 255,
    truncated; x, y, z go to red, green, blue unflipped."""
    return (((normal + 1.0) * 0.5).clip(0, 1) * 255.0).clip(0, 255).astype(np.uint8)


def predict(net: nn.Module, rgb: np.ndarray, device: torch.device) -> np.ndarray:
    """The normal map (uint8 RGB, same size) of an RGB uint8 picture whose sides are multiples of 32."""
    x = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    pixels = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)
    normal = net(pixels)[0].float().permute(1, 2, 0).cpu().numpy()
    return to_picture(normal)
