"""A small fixed-weight eps model on SD 1.x's noise schedule, for the sampler parity tests (fp32 on the CPU)."""

from __future__ import annotations

import torch

torch.manual_seed(0)
conv = torch.nn.Conv2d(4, 4, 3, padding=1)
for parameter in conv.parameters():
    torch.nn.init.normal_(parameter, std=0.1)


def eps_model(x: torch.Tensor, t) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    return torch.tanh(conv(x)) * (0.5 + t.view(-1, 1, 1, 1) / 1000)


betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # SD's scaled_linear
alphas_cumprod = torch.cumprod(1 - betas, 0).float()
CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).norm() / theirs.norm()).item()
