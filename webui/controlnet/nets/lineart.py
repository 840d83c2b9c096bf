"""Line art: the realistic / coarse sketch generator (``sk_model.pth``, ``sk_model2.pth``) and the anime
U-Net (``netG.pth``), as the files name their layers.

- ``SketchGenerator``: a CycleGAN-style ResNet generator (3 residual blocks, instance norm without weights)
  mapping RGB in 0..1 to line strength in 0..1 (sigmoid).
- ``AnimeUNet``: pix2pix's 8-level U-Net (64 base channels, instance norm without weights, no dropout)
  mapping RGB in -1..1 to -1..1 (tanh); its input sides must be multiples of 256.
"""

from __future__ import annotations

import torch
from torch import nn

REALISTIC_FILE, COARSE_FILE, ANIME_FILE = "sk_model.pth", "sk_model2.pth", "netG.pth"


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class SketchGenerator(nn.Module):
    def __init__(self, residual_blocks: int = 3) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), _norm(64), nn.ReLU())
        self.model1 = nn.Sequential(nn.Conv2d(64, 128, 3, stride=2, padding=1), _norm(128), nn.ReLU(),
                                    nn.Conv2d(128, 256, 3, stride=2, padding=1), _norm(256), nn.ReLU())
        self.model2 = nn.Sequential(*[_Residual(256) for _ in range(residual_blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), _norm(128), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), _norm(64), nn.ReLU())
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, rgb01: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) RGB in 0..1 -> (H, W) line strength in 0..1 (H, W multiples of 4)."""
        return self.model4(self.model3(self.model2(self.model1(self.model0(rgb01)))))[0, 0]


class _Level(nn.Module):
    """One U-Net level, as pix2pix's UnetSkipConnectionBlock lays out its ``model`` Sequential."""

    def __init__(self, outer: int, inner: int, channels_in: int | None = None, sub: nn.Module | None = None,
                 outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(channels_in or outer, inner, 4, stride=2, padding=1)
        if outermost:
            assert sub is not None
            layers: list[nn.Module] = [down, sub, nn.ReLU(), nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1), nn.Tanh()]
        elif sub is None:  # innermost
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, 2, 1), _norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, _norm(inner), sub, nn.ReLU(),
                      nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1), _norm(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class AnimeUNet(nn.Module):
    def __init__(self, levels: int = 8, base: int = 64) -> None:
        super().__init__()
        level = _Level(base * 8, base * 8)
        for _ in range(levels - 5):
            level = _Level(base * 8, base * 8, sub=level)
        level = _Level(base * 4, base * 8, sub=level)
        level = _Level(base * 2, base * 4, sub=level)
        level = _Level(base, base * 2, sub=level)
        self.model = _Level(1, base, channels_in=3, sub=level, outermost=True)

    def forward(self, rgb11: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) RGB in -1..1 -> (H, W) in -1..1 (dark lines low); H, W multiples of 256."""
        return self.model(rgb11)[0, 0]


def file_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Some copies of netG.pth were saved from DataParallel (``module.`` prefixes)."""
    return {k.replace("module.", ""): v for k, v in tensors.items()}
