"""What Atelier's own diffusers-compatible schedulers share: the pipeline's view of where a run stands."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput


class RunScheduler(SchedulerMixin, ConfigMixin):  # type: ignore[misc]
    """A scheduler that holds one run: the pipeline calls ``step`` once per timestep, maybe starting part-way
    (``set_begin_index``, as diffusers' img2img pipelines do)."""

    order = 1
    _begin_index: int | None = None
    _step_index: int | None = None

    def __len__(self) -> int:
        return int(self.config["num_train_timesteps"])

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def _position(self) -> int:
        """The index of the timestep this step() call belongs to."""
        if self._step_index is not None:
            return self._step_index
        return self._begin_index or 0

    @staticmethod
    def _output(prev_sample: torch.Tensor, return_dict: bool) -> SchedulerOutput | tuple[torch.Tensor]:
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)
