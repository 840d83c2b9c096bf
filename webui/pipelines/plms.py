"""A1111's PLMS as a diffusers scheduler (``sd_samplers_timesteps_impl.plms``), img2img included.

A1111 runs PLMS on its timestep grid 1, 1 + 1000 // steps, ... (at most 999), from the top: the first step is a
pseudo improved Euler step (the model evaluated twice: at x and at the Euler step's end, the two noise predictions
averaged), the next ones linear multistep (Adams-Bashforth of order 2, 3, then 4) over the noise predictions.
Each step goes x -> sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, a_prev the next lower grid timestep's alpha (the
model's alpha at timestep 0 after the last). diffusers' PNDM does the same in txt2img, but its img2img slicing
drops the duplicated timestep of the first step and evaluates the model at the wrong level after it; A1111's img2img
noises the picture to ``timesteps[t_enc]`` and runs PLMS over ``timesteps[:t_enc]``, which this scheduler follows
when the config carries A1111's plan (``img2img_steps``, ``img2img_t_enc``; ``timesteps`` then holds one padding
entry the pipeline skips, as the other Atelier schedulers do).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from .ksigmas import alphas_cumprod_from_config
from .run_scheduler import RunScheduler


class PLMSScheduler(RunScheduler):
    """A1111's PLMS over the model's discrete schedule."""

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
        img2img_steps: int = 0,
        img2img_t_enc: int = 0,
    ) -> None:
        self.alphas_cumprod = alphas_cumprod_from_config(self.config)
        self.num_inference_steps: int | None = None
        self.init_noise_sigma = 1.0
        self._begin_index: int | None = None
        self._step_index: int | None = None
        self._use_run(self._grid(num_train_timesteps))

    def _grid(self, steps: int) -> torch.Tensor:
        train = int(self.config["num_train_timesteps"])
        return torch.clip(torch.arange(0, train, train // max(steps, 1)) + 1, 0, train - 1)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **_: Any) -> None:
        """The run's model evaluations. With an img2img plan ``num_inference_steps`` is only what the pipeline was
        told (``strength.pipeline_call``): the run is A1111's ``t_enc`` lowest grid timesteps, behind a padding."""
        self.num_inference_steps = num_inference_steps
        planned = int(self.config["img2img_steps"])
        if planned:
            run = self._grid(planned)[: max(int(self.config["img2img_t_enc"]), 1)]
            self._use_run(run, padded=True, device=device)
        else:
            self._use_run(self._grid(num_inference_steps), device=device)

    def _use_run(self, run: torch.Tensor, padded: bool = False, device: str | torch.device | None = None) -> None:
        """``run``: the grid timesteps of the run, ascending. Its evaluations go from the top, with the first
        step's second one at the next lower timestep."""
        acp = self.alphas_cumprod
        self._run_alphas = acp[run]
        self._run_alphas_prev = acp[torch.nn.functional.pad(run[:-1], pad=(1, 0))].double()
        top = len(run) - 1
        # (grid index of the step, whether this call is the first step's second evaluation)
        calls = [(top, False), (top, True)] + [(index, False) for index in range(top - 1, -1, -1)]
        self._calls = [calls[0]] + calls if padded else calls
        timesteps = [int(run[max(index - 1, 0)]) if second else int(run[index]) for index, second in self._calls]
        self.timesteps = torch.tensor(timesteps, dtype=torch.long).to(device)
        self._begin_index = self._step_index = None
        self._old_eps: list[torch.Tensor] = []
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, eps) at the first step's start

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample  # A1111's timestep samplers give the UNet x as it is

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.config["img2img_steps"] and self._step_index is None:
            # A1111's start: the picture noised to the grid timestep one above the highest the run evaluates
            grid = self._grid(int(self.config["img2img_steps"]))
            timesteps = grid[min(max(int(self.config["img2img_t_enc"]), 1), len(grid) - 1)].reshape(1)
        acp = self.alphas_cumprod[torch.as_tensor(timesteps).reshape(-1).long().cpu()]
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        acp = acp.view(shape).to(original_samples.device, original_samples.dtype)
        return original_samples * acp.sqrt() + noise * (1 - acp).sqrt()

    def _eps(self, output: torch.Tensor, sample: torch.Tensor, timestep: int) -> torch.Tensor:
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            return output
        a = self.alphas_cumprod[timestep]
        if kind == "v_prediction":  # A1111's CompVisTimestepsVDenoiser
            return a.sqrt() * output + (1 - a).sqrt() * sample
        raise ValueError(f"prediction type {kind!r} is not supported by PLMS")

    def _previous(self, x: torch.Tensor, eps: torch.Tensor, index: int) -> torch.Tensor:
        a_t, a_prev = self._run_alphas[index].item(), self._run_alphas_prev[index].item()
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        return_dict: bool = True,
        **_: Any,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        position = self._position()
        index, second = self._calls[position]
        x = sample.to(torch.float32)
        eps = self._eps(model_output.to(torch.float32), x, int(self.timesteps[position]))
        old = self._old_eps
        if second:
            assert self._first is not None
            start, first_eps = self._first
            following = self._previous(start, (first_eps + eps) / 2, index)
            self._old_eps = [first_eps]
        elif not old and self._first is None:  # the first step's Euler half
            self._first = (x, eps)
            following = self._previous(x, eps, index)
        else:
            if len(old) == 1:
                combined = (3 * eps - old[-1]) / 2
            elif len(old) == 2:
                combined = (23 * eps - 16 * old[-1] + 5 * old[-2]) / 12
            else:
                combined = (55 * eps - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
            following = self._previous(x, combined, index)
            self._old_eps = [*old, eps][-3:]
        self._step_index = position + 1
        return self._output(following.to(sample.dtype), return_dict)
