"""The noise levels (sigmas) a k-diffusion-style sampler walks, with A1111's numbers for every schedule type.

``ModelSigmas`` is the model's own discrete noise schedule as k-diffusion's CompVis wrapper holds it (sigma of each
training timestep, in float32, computed from betas in float64 as the original LDM code does), with its mapping
between sigma and fractional timestep (interpolating log sigma). ``schedule_sigmas`` gives the n + 1 sigmas (ending
in 0) of one run for an A1111 schedule-type label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch

# Align Your Steps' published 10-step sigmas (NVIDIA), for SD 1.x and SDXL; other step counts interpolate them.
_AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
_AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)
# A1111 gives a zero-SNR schedule this last alphas_cumprod instead of 0, so the top sigma stays finite.
_ZERO_SNR_LAST = 4.8973451890853435e-08


def alphas_cumprod_from_config(config: Mapping[str, object]) -> torch.Tensor:
    """The model's alphas_cumprod (float32) from a diffusers scheduler config, computed in float64 first."""
    steps = int(config.get("num_train_timesteps", 1000))  # type: ignore[call-overload]
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))  # type: ignore[arg-type]
    kind = config.get("beta_schedule", "scaled_linear")
    trained = config.get("trained_betas")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float64)  # type: ignore[arg-type]
    elif kind == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    elif kind == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                              for i in range(steps)], dtype=torch.float64)
    else:
        raise ValueError(f"beta schedule {kind!r} is not supported by the k-diffusion samplers")
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    if config.get("rescale_betas_zero_snr"):
        root = alphas_cumprod.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * first / (first - last)
        alphas_cumprod = root ** 2
        alphas_cumprod[-1] = _ZERO_SNR_LAST
    return alphas_cumprod.float()


class ModelSigmas:
    """k-diffusion's discrete schedule of a CompVis model: sigmas of timesteps 0..T-1 and the t <-> sigma maps."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


def _zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _uniform(n: int, m: ModelSigmas, sdxl: bool) -> torch.Tensor:
    return _zero(m.t_to_sigma(torch.linspace(len(m.sigmas) - 1, 0, n)))


def _karras(n: int, m: ModelSigmas, sdxl: bool, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    low, high = m.sigma_min ** (1 / rho), m.sigma_max ** (1 / rho)
    return _zero((high + ramp * (low - high)) ** rho)


def _exponential(n: int, m: ModelSigmas, sdxl: bool) -> torch.Tensor:
    return _zero(torch.linspace(math.log(m.sigma_max), math.log(m.sigma_min), n).exp())


def _polyexponential(n: int, m: ModelSigmas, sdxl: bool, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    low = math.log(m.sigma_min)
    return _zero(torch.exp(ramp * (math.log(m.sigma_max) - low) + low))


def _timestep_spaced(n: int, m: ModelSigmas, sgm: bool) -> torch.Tensor:
    start, end = m.sigma_to_t(torch.tensor(m.sigma_max)), m.sigma_to_t(torch.tensor(m.sigma_min))
    ts = torch.linspace(float(start), float(end), n + 1)[:-1] if sgm else torch.linspace(float(start), float(end), n)
    return torch.tensor([float(m.t_to_sigma(t)) for t in ts] + [0.0], dtype=torch.float32)


def _sgm_uniform(n: int, m: ModelSigmas, sdxl: bool) -> torch.Tensor:
    return _timestep_spaced(n, m, sgm=True)


def _normal(n: int, m: ModelSigmas, sdxl: bool) -> torch.Tensor:
    return _timestep_spaced(n, m, sgm=False)


def _kl_optimal(n: int, m: ModelSigmas, sdxl: bool) -> torch.Tensor:
    alpha_min, alpha_max = torch.arctan(torch.tensor(m.sigma_min)), torch.arctan(torch.tensor(m.sigma_max))
    index = torch.arange(n + 1)
    return torch.tan(index / n * alpha_min + (1.0 - index / n) * alpha_max)


def _align_your_steps(n: int, m: ModelSigmas, sdxl: bool) -> torch.Tensor:
    published = np.array(_AYS_SDXL if sdxl else _AYS_SD1)
    if n == len(published):
        values = published
    else:  # log-linear interpolation of the decreasing list to n values
        ys = np.log(published[::-1])
        values = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(published)), ys))[::-1]
    return torch.tensor([*values.tolist(), 0.0], dtype=torch.float32)


def _simple(n: int, m: ModelSigmas, sdxl: bool) -> torch.Tensor:
    stride = len(m.sigmas) / n
    return torch.tensor([float(m.sigmas[-(1 + int(k * stride))]) for k in range(n)] + [0.0], dtype=torch.float32)


def _ddim(n: int, m: ModelSigmas, sdxl: bool) -> torch.Tensor:
    stride = max(len(m.sigmas) // n, 1)
    picked = [float(m.sigmas[k]) for k in range(1, len(m.sigmas), stride)]
    return torch.tensor([*picked[::-1], 0.0], dtype=torch.float32)


def _beta(n: int, m: ModelSigmas, sdxl: bool, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    from scipy import stats

    fractions = [stats.beta.ppf(x, alpha, beta) for x in 1 - np.linspace(0, 1, n)]
    return torch.tensor([m.sigma_min + f * (m.sigma_max - m.sigma_min) for f in fractions] + [0.0],
                        dtype=torch.float32)


def _turbo(n: int, m: ModelSigmas, sdxl: bool) -> torch.Tensor:
    ts = torch.flip(torch.arange(1, n + 1) * float(1000.0 / n) - 1, (0,)).round().long().clip(0, len(m.sigmas) - 1)
    return _zero(m.sigmas[ts])


SCHEDULES: Mapping[str, Callable[[int, ModelSigmas, bool], torch.Tensor]] = {
    "Uniform": _uniform, "Karras": _karras, "Exponential": _exponential, "Polyexponential": _polyexponential,
    "SGM Uniform": _sgm_uniform, "KL Optimal": _kl_optimal, "Align Your Steps": _align_your_steps,
    "Simple": _simple, "Normal": _normal, "DDIM": _ddim, "Beta": _beta, "Turbo": _turbo,
}


def schedule_sigmas(label: str, steps: int, model: ModelSigmas, discard_penultimate: bool = False,
                    sdxl: bool = False) -> torch.Tensor:
    """The sigmas of a run of ``steps`` steps ("Automatic" is Uniform, the model's own spacing). Discarding the
    next-to-last sigma (DPM2, DPM++ 3M SDE) asks for one step more and drops it, as A1111 does."""
    function = SCHEDULES["Uniform" if label == "Automatic" else label]
    sigmas = function(steps + 1 if discard_penultimate else steps, model, sdxl)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas
