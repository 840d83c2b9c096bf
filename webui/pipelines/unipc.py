"""A1111's UniPC as a diffusers scheduler: the UniPC authors' multistep predictor-corrector in continuous time.

A1111 samples UniPC on the model's discrete schedule made continuous: log alpha is piecewise linear in
t over t_i = (i + 1) / N (N training steps), the run goes from t = 1 down to t = 1 / N in equal steps ("time
uniform"), and the UNet is evaluated at the fractional timesteps (t - 1 / N) * 1000: 999, 949.05, ... for 20
steps. It predicts the clean picture (x0), uses the B(h) = h variant ("bh1"), order 3 and lower orders on the
last steps. diffusers' UniPCMultistepScheduler runs the same solver on whole timesteps and ends at sigma 0, so
its pictures differ; this scheduler gives A1111's.

In pipeline terms every step is one UNet call: at step k the pipeline evaluates the model at the predicted
x of time g_k; ``step`` corrects that x with the new prediction (except at the first step) and predicts x
at g_(k+1). The last prediction is not corrected (it would need a model call the run does not make).

Schedule types do not apply, as in A1111 (its UniPC ignores them); A1111's option ``uni_pc_skip_type`` picks
the spacing instead (time uniform, time quadratic, or uniform in log-SNR). img2img follows A1111's plan when the
config carries it (``img2img_steps``, ``img2img_t_enc``, see ``pipelines.strength``): A1111's timestep
samplers noise the picture to the grid timestep ``timesteps[t_enc]`` and UniPC then runs ``t_enc`` steps from
``timesteps[t_enc - 1] / 1000 + 1 / 1000``; ``timesteps`` holds one padding entry the pipeline skips, as
``KDiffusionScheduler`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from .ksigmas import alphas_cumprod_from_config
from .run_scheduler import RunScheduler

VARIANTS = ("bh1", "bh2")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


class ContinuousSchedule:
    """A discrete model's schedule in continuous time, as the UniPC / DPM-Solver authors define it: log alpha
    linear between the training timesteps' points t_i = (i + 1) / N, extended linearly beyond them."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.train_steps = len(alphas_cumprod)
        self.times = torch.linspace(0.0, 1.0, self.train_steps + 1)[1:]
        self.log_alphas = 0.5 * torch.log(alphas_cumprod.float())
        self.end = 1.0 / self.train_steps

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return _piecewise_linear(t, self.times, self.log_alphas)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def time_of(self, half_log_snr: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(half_log_snr), -2.0 * half_log_snr)
        return _piecewise_linear(log_alpha, self.log_alphas.flip(0), self.times.flip(0))

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The UNet's timestep for continuous time t (999 at t = 1)."""
        return (t - self.end) * 1000.0


def _piecewise_linear(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """y(x) through the points (xp, yp), xp increasing; the outer segments extend beyond the ends."""
    right = torch.searchsorted(xp, x.reshape(-1).contiguous()).clamp(1, len(xp) - 1)
    left = right - 1
    x0, x1, y0, y1 = xp[left], xp[right], yp[left], yp[right]
    return (y0 + (x.reshape(-1) - x0) * (y1 - y0) / (x1 - x0)).reshape(x.shape)


def _solve(rows: list[list[float]], b: list[float]) -> list[float]:
    return torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).tolist()


def _weighted(weights: list[float], tensors: list[torch.Tensor]) -> torch.Tensor:
    total = weights[0] * tensors[0]
    for weight, tensor in zip(weights[1:], tensors[1:], strict=True):
        total = total + weight * tensor
    return total


@dataclass
class _Update:
    """One predictor step's parts that its corrector reuses: x = linear - scale * (sum rho_i D_i + rho_t D_t)."""

    linear: torch.Tensor
    differences: list[torch.Tensor]
    m0: torch.Tensor
    scale: float
    rhos: list[float]

    def corrected(self, m_t: torch.Tensor) -> torch.Tensor:
        newest = m_t - self.m0
        if not self.differences:
            return self.linear - self.scale * (self.rhos[-1] * newest)
        return self.linear - self.scale * (_weighted(self.rhos[:-1], self.differences) + self.rhos[-1] * newest)


class UniPCScheduler(RunScheduler):
    """A1111's UniPC (multistep, predicting x0) over the model's noise schedule made continuous."""

    @register_to_config  # type: ignore[misc]
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        variant: str = "bh1",
        skip_type: str = "time_uniform",
        solver_order: int = 3,
        lower_order_final: bool = True,
        img2img_steps: int = 0,
        img2img_t_enc: int = 0,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown UniPC variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if skip_type not in SKIP_TYPES:
            raise ValueError(f"unknown UniPC skip type {skip_type!r}; choose one of {', '.join(SKIP_TYPES)}")
        acp = alphas_cumprod_from_config(self.config)
        self.alphas_cumprod = acp
        self.schedule = ContinuousSchedule(acp)
        self.num_inference_steps: int | None = None
        self._use_grid(torch.linspace(1.0, self.schedule.end, num_train_timesteps + 1))
        self.init_noise_sigma = 1.0
        self._begin_index: int | None = None
        self._step_index: int | None = None
        self._reset_run()

    def _reset_run(self) -> None:
        self._run_start: int | None = None  # the grid index the multistep run started at
        self._history: list[tuple[torch.Tensor, int]] = []  # (x0 prediction, grid index), newest last
        self._pending: _Update | None = None  # the last prediction, for its correction

    def _use_grid(self, grid: torch.Tensor, device: str | torch.device | None = None) -> None:
        self.grid = grid
        self.timesteps = self.schedule.model_timestep(grid[:-1]).to(device)
        # the grid's alpha, sigma and half log-SNR, computed in float32 as A1111 does, then used as floats
        self._alphas = self.schedule.alpha(grid).tolist()
        self._sigmas = self.schedule.sigma(grid).tolist()
        self._lambdas = self.schedule.half_log_snr(grid).tolist()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **_: Any) -> None:
        """The run's times. With an img2img plan ``num_inference_steps`` is only what the pipeline was told
        (``strength.pipeline_call``): the run is A1111's ``t_enc`` steps, behind one padding entry."""
        self.num_inference_steps = num_inference_steps
        planned = int(self.config["img2img_steps"])
        if planned:
            run = max(int(self.config["img2img_t_enc"]), 1)
            grid = self._grid(run, start=float(self._plan_timesteps()[run - 1]) / 1000 + 1 / 1000)
            self._use_grid(torch.cat([grid[:1], grid]), device)  # the padding the pipeline skips
        else:
            self._use_grid(self._grid(num_inference_steps, start=1.0), device)
        self._begin_index = self._step_index = None
        self._reset_run()

    def _plan_timesteps(self) -> torch.Tensor:
        """A1111's timestep samplers' grid for the plan's schedule: 1, 1 + 1000 // steps, ..., at most 999."""
        steps, train = int(self.config["img2img_steps"]), int(self.config["num_train_timesteps"])
        return torch.clip(torch.arange(0, train, train // max(steps, 1)) + 1, 0, train - 1)

    def _grid(self, steps: int, start: float) -> torch.Tensor:
        """steps + 1 continuous times from ``start`` to 1 / N."""
        end = self.schedule.end
        skip = self.config["skip_type"]
        if skip == "time_uniform":
            return torch.linspace(start, end, steps + 1)
        if skip == "time_quadratic":
            return torch.linspace(start ** 0.5, end ** 0.5, steps + 1).pow(2)
        ends = self.schedule.half_log_snr(torch.tensor([start, end]))
        return self.schedule.time_of(torch.linspace(float(ends[0]), float(ends[1]), steps + 1))

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample  # A1111's timestep samplers give the UNet x as it is

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.config["img2img_steps"] and self._step_index is None:
            # A1111's start: the picture noised to the grid timestep one above the first one the run evaluates
            run = max(int(self.config["img2img_t_enc"]), 1)
            acp = self.alphas_cumprod[self._plan_timesteps()[min(run, len(self._plan_timesteps()) - 1)]]
            return original_samples * acp.sqrt() + noise * (1 - acp).sqrt()
        t = torch.as_tensor(timesteps, dtype=torch.float32).reshape(-1).cpu() / 1000.0 + self.schedule.end
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        alpha = self.schedule.alpha(t).view(shape).to(original_samples.device, original_samples.dtype)
        sigma = self.schedule.sigma(t).view(shape).to(original_samples.device, original_samples.dtype)
        return original_samples * alpha + noise * sigma

    def _x0(self, output: torch.Tensor, sample: torch.Tensor, index: int) -> torch.Tensor:
        """The model's prediction of the clean picture at grid point ``index`` (A1111 converts to eps first)."""
        kind = self.config["prediction_type"]
        if kind == "sample":
            return output
        if kind == "epsilon":
            eps = output
        elif kind == "v_prediction":  # A1111's CompVisTimestepsVDenoiser: the whole timestep's alphas
            a = self.alphas_cumprod[int(self.schedule.model_timestep(self.grid[index]))]
            eps = a.sqrt() * output + (1 - a).sqrt() * sample
        else:
            raise ValueError(f"prediction type {kind!r} is not supported by UniPC")
        return (sample - self._sigmas[index] * eps) / self._alphas[index]

    def _order_into(self, j: int, steps: int) -> int:
        """The order of the update into grid point j (1-based) of a run of ``steps``."""
        order = min(int(self.config["solver_order"]), steps)
        if j < order:
            return j
        return min(order, steps + 1 - j) if self.config["lower_order_final"] else order

    def _predict(self, index: int, order: int, base: torch.Tensor) -> tuple[torch.Tensor, _Update]:
        """x at grid point ``index`` from ``base`` and the newest ``order`` predictions (UniPC's B(h) form), and
        what the correction of that update needs once the model has been evaluated there."""
        m0, i0 = self._history[-1]
        lambda0 = self._lambdas[i0]
        h = self._lambdas[index] - lambda0
        ratios, differences = [], []
        for m_i, i in reversed(self._history[-order:-1]):
            r = (self._lambdas[i] - lambda0) / h
            ratios.append(r)
            differences.append((m_i - m0) / r)
        hh = -h  # predicting x0
        h_phi_1 = math.expm1(hh)
        b_h = hh if self.config["variant"] == "bh1" else math.expm1(hh)
        powers = [*ratios, 1.0]
        rows, b = [], []
        h_phi_k, factorial = h_phi_1 / hh - 1, 1
        for i in range(1, order + 1):
            rows.append([p ** (i - 1) for p in powers])
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        scale = self._alphas[index] * b_h
        linear = (self._sigmas[index] / self._sigmas[i0]) * base - (self._alphas[index] * h_phi_1) * m0
        rhos_c = [0.5] if order == 1 else _solve(rows, b)
        update = _Update(linear, differences, m0, scale, rhos_c)
        if not differences:
            return linear, update
        rhos_p = [0.5] if order == 2 else _solve([row[:-1] for row in rows[:-1]], b[:-1])
        return linear - scale * _weighted(rhos_p, differences), update

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        return_dict: bool = True,
        **_: Any,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        position = self._position()
        if self._run_start is None:
            self._run_start = position
        start = self._run_start
        steps = len(self.grid) - 1 - start
        j = position - start  # this call evaluated grid point j of the run
        x = sample.to(torch.float32)
        m = self._x0(model_output.to(torch.float32), x, position)
        current = x if self._pending is None else self._pending.corrected(m)
        self._history = [*self._history, (m, position)][-max(int(self.config["solver_order"]), 1):]
        following, self._pending = self._predict(position + 1, self._order_into(j + 1, steps), current)
        self._step_index = position + 1
        if j + 1 == steps:
            self._reset_run()
        return self._output(following.to(sample.dtype), return_dict)

