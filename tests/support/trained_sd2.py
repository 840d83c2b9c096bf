"""Tiny SD 2.x models trained briefly, one to predict the noise (epsilon) and one to predict v.

Both start from the same random weights and see the same data, noise and timesteps; only the training
target differs. The data are latents with a clear non-zero mean per channel (as real latents have), so
what each model learned to predict at high noise levels is unmistakable. A few dozen steps suffice for
the parameterisation to show (the pictures are not meant to be good).
"""

from __future__ import annotations

from typing import Any

import torch

from tests.support.tiny_models import tiny_components
from webui.models import configs

_MEAN = torch.tensor([0.8, -0.6, 0.4, -0.2]).view(1, 4, 1, 1)


def _empty_prompt_context(text_encoder: Any) -> torch.Tensor:
    tokenizer = configs.load_clip_tokenizer(configs.tokenizer_pad_tokens("sd2")[0])
    ids = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def trained_sd2(prediction_type: str, steps: int = 60, seed: int = 11) -> dict[str, Any]:
    """tiny_components("sd2") with its UNet trained for ``prediction_type`` ("epsilon" or "v_prediction")."""
    components = tiny_components("sd2", seed=seed)
    unet = components["unet"].train().requires_grad_(True)
    context = _empty_prompt_context(components["text_encoder"])
    scheduler = components["scheduler"]
    alphas_cumprod = scheduler.alphas_cumprod.float()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small run faster on one thread, and far faster on a busy machine
    try:
        _train(unet, context, alphas_cumprod, prediction_type, steps, seed)
    finally:
        torch.set_num_threads(threads)
    components["unet"] = unet.eval().requires_grad_(False)
    components["scheduler"] = type(scheduler).from_config({**scheduler.config, "prediction_type": prediction_type})
    return components


def _train(unet: Any, context: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str, steps: int,
           seed: int) -> None:
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(seed)
    batch, side = 8, 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            coarse = torch.randn(batch, 4, 2, 2, generator=generator)
            x0 = _MEAN + 0.3 * torch.nn.functional.interpolate(coarse, size=side, mode="bilinear")
            noise = torch.randn(batch, 4, side, side, generator=generator)
            t = torch.randint(0, len(alphas_cumprod), (batch,), generator=generator)
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
            pred = unet(noisy, t, encoder_hidden_states=context.expand(batch, -1, -1)).sample
            loss = torch.nn.functional.mse_loss(pred, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
