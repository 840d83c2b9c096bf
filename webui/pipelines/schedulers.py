"""Build a fresh diffusers scheduler for one job from the model's scheduler config.

Schedulers keep per-run state (timesteps, step index, noise samplers) and are not
thread-safe, so every job gets its own object; nothing here is cached or shared.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping, Sequence

import diffusers
from diffusers import SchedulerMixin

from ..samplers import SamplerChoice


@functools.cache
def accepted_keys(class_name: str) -> frozenset[str]:
    """Constructor arguments of a diffusers scheduler class."""
    cls = getattr(diffusers, class_name)
    params = inspect.signature(cls.__init__).parameters
    return frozenset(n for n, p in params.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)


def make_scheduler(
    choice: SamplerChoice,
    base_config: Mapping[str, object],
    noise_seeds: Sequence[int] | None = None,
) -> SchedulerMixin:
    """A new scheduler of `choice`'s class: the model's noise schedule plus the sampler's overrides.

    Keys of `base_config` the class does not take are dropped; keys the config only holds
    because its own class defaulted them (diffusers' `_use_default_values`) are dropped too,
    so the target class's defaults apply to them as diffusers' `from_config` would do.
    `noise_seeds`, one per image of the batch, seed DPM++ SDE's Brownian noise as A1111 does,
    so its pictures follow the seed; other samplers take their noise from the pipeline.
    """
    cls = getattr(diffusers, choice.scheduler_class)
    accepted = accepted_keys(choice.scheduler_class)
    defaulted = set(base_config.get("_use_default_values") or ())  # type: ignore[call-overload]
    kwargs = {k: v for k, v in base_config.items() if k in accepted and k not in defaulted}
    kwargs.update(choice.kwargs)
    if noise_seeds is not None and "noise_sampler_seed" in accepted:
        kwargs["noise_sampler_seed"] = [int(s) for s in noise_seeds]
    return cls(**copy.deepcopy(kwargs))
