"""Tell an SD 2.x UNet's parameterisation (epsilon or v-prediction) from what it predicts.

Nothing in an SD 2 file's tensor names or shapes says whether it was trained to predict the noise
(epsilon: SD 2 "base" at 512 and its fine-tunes) or v (SD 2.x 768-v and its fine-tunes); sampling with
the wrong one gives a broken picture. A1111 runs the UNet once on a fixed input at the last timestep and
looks at the output. The same idea here, put in terms of the two targets:

At the last training timestep the noisy latent is almost pure noise (the signal's weight sqrt(alpha_bar)
is ~0.07), so
- an epsilon model must return (nearly) its input: the noise;
- a v model returns sqrt(alpha_bar)*noise - sqrt(1 - alpha_bar)*x0, about minus its guess of the clean
  latent, which at this noise level carries no trace of the particular noise drawn.
So the relative distance between the prediction and the noise, |pred - noise| / |noise|, is near 0 for
epsilon and about 1 or more for v. One UNet call on a 16x16 latent with the empty prompt's conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Midway between what an epsilon model gives (a trained one: < 0.3) and a v model (>= ~0.9).
V_ABOVE = 0.5
_LATENT_SIDE = 16  # divisible by every SD UNet's downsampling, and cheap
_SEED = 20  # a fixed draw: the same file always gets the same answer


@dataclass(frozen=True)
class PredictionProbe:
    v_prediction: bool
    noise_error: float  # |prediction - noise| / |noise| at the last timestep

    def describe(self) -> str:
        return (f"its UNet's prediction at the last timestep is {self.noise_error:.2f} from the noise "
                "(an epsilon model's is near 0, a v model's near 1)")


@torch.no_grad()
def probe_prediction(unet: Any, text_encoder: Any, tokenizer: Any, num_train_timesteps: int = 1000) -> PredictionProbe:
    """Run `unet` once on seeded noise at the last timestep, conditioned on the empty prompt."""
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    context = text_encoder(ids.to(device))[0].to(dtype)
    generator = torch.Generator().manual_seed(_SEED)
    channels = int(unet.config.in_channels)
    noise = torch.randn((1, channels, _LATENT_SIDE, _LATENT_SIDE), generator=generator)
    timestep = torch.tensor([num_train_timesteps - 1], device=device)
    pred = unet(noise.to(device, dtype), timestep, encoder_hidden_states=context).sample.float().cpu()
    error = float((pred - noise).norm() / noise.norm())
    if error != error:  # NaN (broken weights): no sign of epsilon, so the default, v
        error = float("inf")
    return PredictionProbe(error > V_ABOVE, error)
