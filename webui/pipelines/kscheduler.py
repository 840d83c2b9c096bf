"""A diffusers scheduler that runs a k-diffusion sampler, so A1111's samplers drive diffusers' own pipelines.

The pipelines (txt2img, img2img, inpainting, SDXL, ControlNet, hires) keep their loop: for every timestep they scale
the latents, call the UNet and hand its output to ``step``. Here the timesteps are the sampler's model evaluations
(fractional timesteps from sigma by log-sigma interpolation, as k-diffusion's CompVis wrapper computes them), the
latents live in k-diffusion's sigma space (``x = x0 + sigma * noise``), ``scale_model_input`` divides by
sqrt(sigma^2 + 1) and ``step`` turns the UNet's eps / v prediction into the denoised picture and sends it to the
sampler (a generator in ``ksamplers``), which returns where the model is evaluated next.

img2img follows A1111's plan when the config carries it (``img2img_steps``, ``img2img_t_enc``: A1111's schedule
length and t_enc, see ``pipelines.strength``): the run is the sampler afresh on ``sigmas[steps - t_enc - 1:]``, so
``timesteps`` are that run's evaluations behind one padding entry, with ``order`` 1; the pipeline is called so
that it skips exactly the padding (``strength.pipeline_call``). Without a plan, a pipeline's own slicing
(``timesteps[t_start * order:]`` and ``set_begin_index``) also starts the run fresh on the remaining sigmas.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from .ksamplers import ADAPTIVE_SAMPLERS, RANGE_SAMPLERS, SAMPLERS, Noise, Run
from .ksigmas import ModelSigmas, alphas_cumprod_from_config, schedule_sigmas
from .rng import PhiloxGenerator
from .run_scheduler import RunScheduler

# torchsde compares the tree's float32 ends with float64 queries and warns about the last digit on every step
# (k-diffusion in A1111 prints the same); the queries are within the run's sigmas by construction.
warnings.filterwarnings("ignore", message=r"Should have (ta>=t0|tb<=t1)", category=UserWarning)


class BrownianNoise:
    """Per-step noise from one Brownian tree per image (torchsde), seeded with the image's seed: k-diffusion's
    BrownianTreeNoiseSampler, which A1111 uses for the SDE samplers so a picture does not depend on its batch.

    The trees live on the CPU in float32 whatever the latents' device: torchsde then draws every node's numbers
    from a CPU generator seeded with the node's seed, which is what A1111's replacement of torchsde's draw (its
    randn_local for that seed) gives under RNG source CPU: a CPU generator, then moved to the device. So the noise
    does not depend on the GPU. (Under A1111's GPU source its trees draw from CUDA generators, under NV from its
    Philox generator; neither is followed here.) Each step's noise is moved to the latents' device and dtype.
    The tree is torchsde's BrownianTree (a halfway BrownianInterval, its tolerance and entropy pool) with a
    larger cache of computed intervals: one query needs some 35 of them, and with BrownianTree's 45 a third were
    computed twice. The cache never changes a value."""

    # BrownianTree's own tolerance and entropy pool (they decide the values); the cache only saves recomputation
    TOL, POOL_SIZE, CACHE_SIZE = 1e-6, 24, 128

    def __init__(self, x: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seeds: Sequence[int]) -> None:
        import torchsde

        self.device, self.dtype = x.device, x.dtype
        self.trees = [torchsde.BrownianInterval(float(sigma_min), float(sigma_max), size=tuple(x.shape[1:]),
                                                dtype=torch.float32, device="cpu", entropy=int(seed), tol=self.TOL,
                                                pool_size=self.POOL_SIZE, halfway_tree=True,
                                                cache_size=self.CACHE_SIZE)
                      for seed in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma, device="cpu"), torch.as_tensor(sigma_next, device="cpu")
        low, high = (float(t0), float(t1)) if t0 < t1 else (float(t1), float(t0))
        drawn = [tree(low, high) for tree in self.trees]
        w = drawn[0].unsqueeze(0) if len(drawn) == 1 else torch.stack(drawn)
        if t0 > t1:
            w = w.neg()  # k-diffusion's sign of a decreasing query (exact, as its * -1)
        # out of place: a one-interval answer is the tree's cached tensor itself
        return (w / (t1 - t0).abs().sqrt()).to(self.device, self.dtype)


class PhiloxNoise:
    """Per-step noise from one Philox generator per image (RNG source NV), one draw of an image's shape a step."""

    def __init__(self, generators: Sequence[PhiloxGenerator], shape: tuple[int, ...], device: torch.device) -> None:
        self.generators, self.shape, self.device = list(generators), shape, device

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        drawn = [torch.from_numpy(g.randn(self.shape)).to(torch.float32) for g in self.generators]
        return torch.stack(drawn).to(self.device)


# Room for an adaptive sampler's evaluations (DPM adaptive on SD takes some tens to a few hundred); a run that needs
# more ends there.
MAX_ADAPTIVE_EVALUATIONS = 1000


class KDiffusionScheduler(RunScheduler):
    """k-diffusion's ``sampler`` over A1111's ``schedule_type`` sigmas, for the model's noise schedule."""

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
        sampler: str = "euler",
        schedule_type: str = "Automatic",
        discard_penultimate_sigma: bool = False,
        sdxl_schedule: bool = False,
        noise_sampler_seed: list[int] | None = None,
        philox_noise_seeds: list[int] | None = None,
        philox_noise_offset: int = 0,
        img2img_steps: int = 0,
        img2img_t_enc: int = 0,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown k-diffusion sampler {sampler!r}")
        self.model = ModelSigmas(alphas_cumprod_from_config(self.config))
        self.order = 1 if img2img_steps else max(SAMPLERS[sampler][1], 1)
        self.num_inference_steps: int | None = None
        self.step_sigmas = torch.cat([self.model.sigmas.flip(0), torch.zeros(1)])
        self.full_sigmas = self.step_sigmas
        self.eval_sigmas = self.step_sigmas[:-1]
        self.sigmas = self.step_sigmas
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.float32)
        self.init_noise_sigma = float(self.step_sigmas[0])
        self._begin_index: int | None = None
        self._step_index: int | None = None
        self._run: Run | None = None
        # what the current step() call was given, for the ancestral samplers' noise drawn inside the run
        self._generator: Any = None
        self._shape: tuple[int, ...] = ()
        self._device = torch.device("cpu")
        self.run_finished = False  # an adaptive sampler's run has ended (the pipeline may stop its loop)
        self.expected_evaluations: int | None = None  # an adaptive run's expected length, while it runs

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **_: Any) -> None:
        """The run's evaluations as timesteps. With an img2img plan ``num_inference_steps`` is only what the
        pipeline was told (``strength.pipeline_call``): the run is A1111's slice, behind one padding entry."""
        config = self.config
        self.num_inference_steps = num_inference_steps
        planned = int(config["img2img_steps"])
        self.full_sigmas = schedule_sigmas(config["schedule_type"], planned or num_inference_steps, self.model,
                                           config["discard_penultimate_sigma"], config["sdxl_schedule"])
        if planned:
            first = max(planned - int(config["img2img_t_enc"]) - 1, 0)
            self.step_sigmas = self.full_sigmas[first:]
            evaluations = self._evaluations(self.step_sigmas)
            self.eval_sigmas = torch.cat([evaluations[:1], evaluations])  # the padding the pipeline skips
        else:
            self.step_sigmas = self.full_sigmas
            self.eval_sigmas = self._evaluations(self.step_sigmas)
        self.run_finished = False
        self.expected_evaluations = None
        self.sigmas = torch.cat([self.eval_sigmas, torch.zeros(1)])
        self.timesteps = self.model.sigma_to_t(self.eval_sigmas).to(device)
        # A1111 starts txt2img at noise * sigmas[0], img2img at the picture + noise * its first sigma
        self.init_noise_sigma = float(self.step_sigmas[0])
        self._begin_index = self._step_index = None
        self._run = None

    def _sampler_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        """What the sampler is given: the run's sigmas; for DPM fast in txt2img with the model's whole range at the
        ends, as A1111 calls it (its img2img gives the slice's own range)."""
        if self.config["sampler"] not in RANGE_SAMPLERS or self.config["img2img_steps"]:
            return sigmas
        ranged = sigmas.clone()
        ranged[0], ranged[-2] = self.model.sigmas[-1], self.model.sigmas[0]
        return ranged

    def _evaluations(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The sigmas the sampler evaluates the model at, from a dry run (they never depend on the picture). An
        adaptive sampler's are found while it runs: its first one, then room up to ``MAX_ADAPTIVE_EVALUATIONS``
        that ``step`` fills in as the sampler goes (the pipeline reads each timestep only when it gets there)."""
        if self.config["sampler"] in ADAPTIVE_SAMPLERS:
            return self._sampler_sigmas(sigmas)[:1].float().repeat(MAX_ADAPTIVE_EVALUATIONS)
        sampler = SAMPLERS[self.config["sampler"]][0]
        zero = torch.zeros(1)
        run, points = sampler(zero, self._sampler_sigmas(sigmas), lambda a, b: zero), []
        try:
            _, sigma = next(run)
            while True:
                points.append(sigma)
                _, sigma = run.send(zero)
        except StopIteration:
            pass
        return torch.stack(points).float()

    def index_for_timestep(self, timestep: Any) -> int:
        matches = (self.timesteps.to(torch.as_tensor(timestep).device) == timestep).nonzero()
        return int(matches[0]) if len(matches) else 0

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        sigma = self.eval_sigmas[self._position()]
        return sample * (1 / (sigma ** 2 + 1) ** 0.5)  # k-diffusion's c_in, computed as it does

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.config["img2img_steps"] and self._step_index is None:  # A1111's start: x0 + noise * sigma_sched[0]
            return original_samples + noise * self.step_sigmas[0]
        if self._begin_index is None and self._step_index is None:
            index = self.index_for_timestep(timesteps.reshape(-1)[0])
        else:
            index = self._position()
        return original_samples + noise * self.eval_sigmas[index]

    def _denoised(self, output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            return sample - output * sigma
        if kind == "v_prediction":  # k-diffusion's CompVisVDenoiser, sigma_data 1
            return sample / (sigma ** 2 + 1) - output * (sigma / (sigma ** 2 + 1) ** 0.5)
        if kind == "sample":
            return output
        raise ValueError(f"prediction type {kind!r} is not supported by the k-diffusion samplers")

    def _start(self, sample: torch.Tensor) -> None:
        sampler, per_step, noise_kind = SAMPLERS[self.config["sampler"]]
        # A1111's Brownian tree spans the whole schedule, also when img2img runs only its end
        tree_range = self.full_sigmas
        if self.config["img2img_steps"]:
            sigmas = self.step_sigmas
        elif self._position() and not per_step:
            raise ValueError(f"{self.config['sampler']} cannot start part-way through its run without an img2img "
                             "plan (its evaluations are not a fixed number per step)")
        else:
            sigmas = self.step_sigmas[self._position() // max(per_step, 1):]
        noise: Noise
        if noise_kind == "brownian":
            seeds = self.config["noise_sampler_seed"]
            if seeds is None or len(seeds) != sample.shape[0]:
                seeds = [int(s) for s in torch.randint(0, 2 ** 63 - 1, (sample.shape[0],))]
            positive = tree_range[tree_range > 0]
            noise = BrownianNoise(sample, positive.min(), tree_range.max(), seeds)
        elif self.config["philox_noise_seeds"] and len(self.config["philox_noise_seeds"]) == sample.shape[0]:
            # RNG source NV: A1111 draws the ancestral samplers' noise from each image's Philox generator too,
            # continuing after its starting noise (or a fresh one at seed + ENSD)
            offset = int(self.config["philox_noise_offset"])
            noise = PhiloxNoise([PhiloxGenerator(int(s), offset) for s in self.config["philox_noise_seeds"]],
                                tuple(sample.shape[1:]), sample.device)
        else:
            noise = self._drawn_noise
        self._run = sampler(sample, self._sampler_sigmas(sigmas), noise)
        next(self._run)

    def _found_evaluation(self, position: int, sigma: torch.Tensor) -> None:
        """An adaptive sampler's next evaluation, written into the timesteps the pipeline is iterating (it takes
        each one as a view of this tensor, so it sees the value when it gets there), and the run's expected length
        from how far down the sigmas it has come."""
        if position >= len(self.eval_sigmas):
            return  # past the room: the pipeline's loop ends here
        self.eval_sigmas[position] = sigma
        self.sigmas[position] = sigma
        self.timesteps[position] = self.model.sigma_to_t(sigma.reshape(1).float()).to(self.timesteps.device)[0]
        ends = self._sampler_sigmas(self.step_sigmas)
        start, end = float(ends[0].log()), float(ends[-2].log())
        done = (start - float(sigma.log())) / (start - end) if start != end else 1.0
        ran = position - (self._begin_index or 0)
        self.expected_evaluations = max(ran + 1, round(ran / max(done, 1e-3)))

    def _drawn_noise(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return randn_tensor(self._shape, generator=self._generator, device=self._device, dtype=torch.float32)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        position = self._position()
        x = sample.to(torch.float32)
        self._generator, self._shape, self._device = generator, tuple(x.shape), x.device
        if self._run is None:
            self._start(x)
        sigma = self.eval_sigmas[position]
        denoised = self._denoised(model_output.to(torch.float32), x, sigma)
        assert self._run is not None
        try:
            following, upcoming = self._run.send(denoised)
            if self.config["sampler"] in ADAPTIVE_SAMPLERS:
                self._found_evaluation(position + 1, upcoming)
        except StopIteration as finished:
            following, self._run = finished.value, None
            self.run_finished = self.config["sampler"] in ADAPTIVE_SAMPLERS
        self._step_index = position + 1
        return self._output(following.to(sample.dtype), return_dict)
