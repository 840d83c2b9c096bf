"""Cheap live previews: a linear map from the 4 latent channels to RGB, no VAE decode."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Least-squares fits of latent channels to RGB published for SD 1.x/2.x and SDXL latent spaces.
SD_FACTORS = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]
SDXL_FACTORS = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
SDXL_BIAS = [0.1084, -0.0175, -0.0011]


def latents_to_preview(latents: torch.Tensor, is_sdxl: bool, index: int = 0) -> Image.Image:
    """An RGB preview (at latent resolution × 8, nearest) of image `index` of a latent batch."""
    lat = latents[index].detach().float().cpu()
    if lat.shape[0] != 4:
        lat = lat[:4] if lat.shape[0] > 4 else torch.nn.functional.pad(lat, (0, 0, 0, 0, 0, 4 - lat.shape[0]))
    factors = torch.tensor(SDXL_FACTORS if is_sdxl else SD_FACTORS)
    rgb = torch.einsum("chw,cr->hwr", lat, factors)
    if is_sdxl:
        rgb = rgb + torch.tensor(SDXL_BIAS)
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    return image.resize((image.width * 8, image.height * 8), Image.Resampling.NEAREST)
