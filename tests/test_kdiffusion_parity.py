"""Parity of the engine's samplers with k-diffusion (what A1111 and Forge sample with), fp32 on the CPU.

The model is a small fixed-weight eps network on SD's noise schedule; the engine's path is the scheduler that
``make_scheduler`` builds for an A1111 sampler name (``KDiffusionScheduler`` for the k-diffusion samplers), driven as
the pipelines drive it, with the noise drawn as A1111 draws it (the image's seed for the start, the same generator
continuing for the ancestral samplers' per-step noise, a Brownian tree seeded with the seed for the SDE samplers).
The reference is k-diffusion's own ``sampling.py``, loaded from its wheel (k_diffusion-0.1.1.post1, MIT) with a stub
package so torchvision is never needed; the test is skipped where the wheel is not at hand (``KDIFFUSION_WHEEL``).
DDIM's reference is A1111's timestep DDIM (``sd_samplers_timesteps_impl.ddim``, eta 0), written out below.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from tests.support.fixed_model import CONFIG, alphas_cumprod, eps_model, relative_error
from webui.samplers import resolve_sampler

# scripts/bootstrap.sh downloads the wheel (without installing it) into .venv/reference/.
WHEEL = Path(os.environ.get("KDIFFUSION_WHEEL", Path(__file__).resolve().parents[1] / ".venv" / "reference"
                            / "k_diffusion-0.1.1.post1-py3-none-any.whl"))
pytestmark = [pytest.mark.skipif(not WHEEL.exists(), reason="k-diffusion wheel not at hand"),
              pytest.mark.filterwarnings("ignore::UserWarning")]  # torchsde's last-digit warnings in k-diffusion


def load_kd(whl: Path) -> types.ModuleType:
    """k-diffusion's sampling.py alone, with the one helper of its utils it needs."""
    package = types.ModuleType("k_diffusion")
    package.__path__ = []
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    sys.modules.setdefault("torchdiffeq", types.SimpleNamespace(odeint=None))  # only DPM adaptive's ODE uses it
    source = zipfile.ZipFile(whl).read("k_diffusion/sampling.py").decode()
    module = types.ModuleType("k_diffusion.sampling")
    module.__package__ = "k_diffusion"
    exec(compile(source, "k_diffusion/sampling.py", "exec"), module.__dict__)
    return module


K: types.ModuleType  # set by the test
sig = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
log_sig = sig.log()


def sigma_to_t(s: torch.Tensor) -> torch.Tensor:  # k-diffusion's DiscreteSchedule, interpolating log sigma
    ls = s.log()
    d = ls - log_sig[:, None]
    lo = d.ge(0).cumsum(0).argmax(0).clamp(max=998)
    hi = lo + 1
    w = ((log_sig[lo] - ls) / (log_sig[lo] - log_sig[hi])).clamp(0, 1)
    return ((1 - w) * lo + w * hi).view(s.shape)


def t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sig[lo] + w * log_sig[hi]).exp()


def denoiser(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # DiscreteEpsDDPMDenoiser.forward
    s = s.reshape(-1)
    c_in = 1 / (s ** 2 + 1) ** 0.5
    return x - s.view(-1, 1, 1, 1) * eps_model(x * c_in.view(-1, 1, 1, 1), sigma_to_t(s))


def kd_sigmas(n: int, kind: str | None, discard: bool = False) -> torch.Tensor:
    """A1111's get_sigmas: k-diffusion's schedule functions, one step more and the next-to-last dropped when the
    sampler discards it."""
    n += 1 if discard else 0
    if kind == "karras":
        sigmas = K.get_sigmas_karras(n, sig[0].item(), sig[-1].item())
    elif kind == "exponential":
        sigmas = K.get_sigmas_exponential(n, sig[0].item(), sig[-1].item())
    elif kind == "polyexponential":
        sigmas = K.get_sigmas_polyexponential(n, sig[0].item(), sig[-1].item())
    else:
        sigmas = K.append_zero(t_to_sigma(torch.linspace(999, 0, n)))
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def run_engine(choice, steps: int, noise: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    from webui.pipelines.schedulers import make_scheduler

    scheduler = make_scheduler(choice, CONFIG, noise_seeds=seeds)
    scheduler.set_timesteps(steps)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    for generator in generators:
        torch.randn((1, *noise.shape[1:]), generator=generator)  # the pipeline drew the start noise from it
    x = noise * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        eps = eps_model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, **({"generator": generators} if takes_generator else {})).prev_sample
    return x


@pytest.fixture(scope="module")
def kdiff():
    global K
    saved = {name: sys.modules.get(name) for name in ("k_diffusion", "k_diffusion.utils", "torchdiffeq")}
    K = load_kd(WHEEL)
    yield K
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def draw_noise_from(kdiff, draw) -> None:
    """k-diffusion's per-step ``torch.randn_like(x)`` answered by ``draw(x)``, as A1111's hijack of it does."""
    kdiff.torch = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    kdiff.torch.randn_like = lambda x, **kw: draw(x)


def draw_after_start_noise(kdiff, seeds: list[int], shape: tuple[int, ...]) -> None:
    """Per-step noise from each image's CPU generator after its start noise, as A1111 draws it."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    for generator in generators:
        torch.randn((1, *shape), generator=generator)
    draw_noise_from(kdiff, lambda x: torch.cat([torch.randn((1, *x.shape[1:]), generator=g, dtype=x.dtype)
                                                for g in generators]))


def run_k_diffusion(kdiff, function: str, sigmas: torch.Tensor, noise: torch.Tensor, seeds: list[int],
                    brownian: bool) -> torch.Tensor:
    """k-diffusion as A1111 calls it: x = noise * sigmas[0]; randn_like from each image's generator after its start
    noise; the SDE samplers get a Brownian tree noise sampler seeded with the images' seeds."""
    draw_after_start_noise(kdiff, seeds, tuple(noise.shape[1:]))
    x = noise * sigmas[0]
    extra = {}
    if brownian:
        extra["noise_sampler"] = kdiff.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seeds)
    return getattr(kdiff, function)(denoiser, x, sigmas, disable=True, **extra)


# (A1111 sampler, schedule type, k-diffusion function, k-diffusion sigma schedule, discards the next-to-last sigma,
# Brownian noise); Automatic is the model's own sigmas spaced evenly in timestep (DiscreteSchedule.get_sigmas).
AT_PARITY = [
    ("Euler", "Automatic", "sample_euler", None, False, False),
    ("Euler a", "Automatic", "sample_euler_ancestral", None, False, False),
    ("LMS", "Automatic", "sample_lms", None, False, False),
    ("Heun", "Automatic", "sample_heun", None, False, False),
    ("DPM++ 2M", "Karras", "sample_dpmpp_2m", "karras", False, False),
    ("DPM++ SDE", "Karras", "sample_dpmpp_sde", "karras", False, True),
    ("DPM++ 2M SDE", "Exponential", "sample_dpmpp_2m_sde", "exponential", False, True),
    ("DPM++ 2S a", "Karras", "sample_dpmpp_2s_ancestral", "karras", False, False),
    ("DPM++ 3M SDE", "Exponential", "sample_dpmpp_3m_sde", "exponential", True, True),
    ("DPM2", "Karras", "sample_dpm_2", "karras", True, False),
    ("DPM2 a", "Karras", "sample_dpm_2_ancestral", "karras", True, False),
    ("Euler", "Polyexponential", "sample_euler", "polyexponential", False, False),
    ("LMS", "Karras", "sample_lms", "karras", False, False),
]


@pytest.mark.parametrize(("name", "schedule", "function", "kind", "discard", "brownian"), AT_PARITY)
def test_final_latents_match_k_diffusion(kdiff, name, schedule, function, kind, discard, brownian):
    steps, seeds = 10, [1, 2]
    noise = torch.cat([torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        ours = run_engine(resolve_sampler(name, schedule), steps, noise, seeds)
        theirs = run_k_diffusion(kdiff, function, kd_sigmas(steps, kind, discard), noise, seeds, brownian)
    assert relative_error(ours, theirs) < 1e-4


def test_dpmpp_2m_sde_heun_matches_k_diffusion(kdiff):
    steps, seeds = 10, [3]
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = run_engine(resolve_sampler("DPM++ 2M SDE Heun"), steps, noise, seeds)
        sigmas = kd_sigmas(steps, "exponential")
        x = noise * sigmas[0]
        sampler = kdiff.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seeds)
        theirs = kdiff.sample_dpmpp_2m_sde(denoiser, x, sigmas, disable=True, noise_sampler=sampler,
                                          solver_type="heun")
    assert relative_error(ours, theirs) < 1e-4


def a1111_ddim(x: torch.Tensor, steps: int) -> torch.Tensor:
    """A1111's DDIM (timesteps 1, 1 + 1000 // steps, ..., eta 0): x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].double()
    for index in range(len(timesteps) - 1, -1, -1):
        e_t = eps_model(x, float(timesteps[index]))
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t
    return x


def test_ddim_matches_a1111():
    steps, seeds = 10, [4]
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = run_engine(resolve_sampler("DDIM"), steps, noise, seeds)
        theirs = a1111_ddim(noise, steps)
    assert relative_error(ours, theirs) < 1e-4


def run_engine_img2img(choice, steps: int, strength: float, x0: torch.Tensor, noise: torch.Tensor,
                       seeds: list[int]) -> tuple[torch.Tensor, int]:
    """A whole img2img run as Atelier calls a diffusers img2img pipeline (``strength.plan_img2img``: the count
    and strength it passes) and as the pipeline slices the timesteps; (final latents, evaluations)."""
    from webui.pipelines.schedulers import make_scheduler
    from webui.pipelines.strength import plan_img2img

    plan = plan_img2img(choice, steps, strength, fixed=False)
    scheduler = make_scheduler(choice, CONFIG, noise_seeds=seeds, img2img=(plan.total, plan.t_enc))
    n, passed = plan.pipeline_call()
    scheduler.set_timesteps(n)
    t_start = n - min(int(n * passed), n)  # diffusers' get_timesteps
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    scheduler.set_begin_index(t_start * scheduler.order)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    for generator in generators:
        torch.randn((1, *noise.shape[1:]), generator=generator)  # the pipeline drew the start noise from it
    x = scheduler.add_noise(x0, noise, timesteps[:1])
    for t in timesteps:
        eps = eps_model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, generator=generators).prev_sample
    return x, len(timesteps)


def a1111_img2img(kdiff, function: str, steps: int, strength: float, kind: str | None, x0: torch.Tensor,
                  noise: torch.Tensor, seeds: list[int], brownian: bool, **extra) -> tuple[torch.Tensor, int]:
    """A1111's sample_img2img: t_enc = int(min(strength, 0.999) * steps), k-diffusion on sigmas[steps - t_enc - 1:]
    from x0 + noise * its first sigma, the Brownian tree over the whole schedule; (final latents, steps run)."""
    t_enc = int(min(strength, 0.999) * steps)
    sigmas = kd_sigmas(steps, kind)
    sched = sigmas[steps - t_enc - 1:]
    draw_after_start_noise(kdiff, seeds, tuple(noise.shape[1:]))
    xi = x0 + noise * sched[0]
    if brownian:
        extra["noise_sampler"] = kdiff.BrownianTreeNoiseSampler(xi, sigmas[sigmas > 0].min(), sigmas.max(),
                                                                seed=seeds)
    if function == "sample_dpm_fast":
        return kdiff.sample_dpm_fast(denoiser, xi, sched[-2], sched[0], len(sched) - 1, disable=True,
                                     eta=1.0), t_enc + 1
    return getattr(kdiff, function)(denoiser, xi, sched, disable=True, **extra), t_enc + 1


@pytest.mark.parametrize(("name", "schedule", "function", "kind", "brownian"), [
    ("DPM++ SDE", "Karras", "sample_dpmpp_sde", "karras", True),
    ("Euler a", "Automatic", "sample_euler_ancestral", None, False),
    ("DPM fast", "Automatic", "sample_dpm_fast", None, False),
])
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_img2img_matches_a1111(kdiff, name, schedule, function, kind, brownian, strength):
    """A full img2img run is A1111's: its step count (t_enc + 1), its sigma slice and starting noise level."""
    steps, seeds = 10, [5]
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    x0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours, evaluations = run_engine_img2img(resolve_sampler(name, schedule), steps, strength, x0, noise, seeds)
        theirs, steps_run = a1111_img2img(kdiff, function, steps, strength, kind, x0, noise, seeds, brownian)
    per_step = 2 if name == "DPM++ SDE" else 1
    assert evaluations == (steps_run * per_step - (per_step - 1) if name != "DPM fast" else steps_run)
    assert relative_error(ours, theirs) < 1e-4


def test_dpm_fast_matches_k_diffusion(kdiff):
    """txt2img: k-diffusion's sample_dpm_fast over the model's whole sigma range in ``steps`` evaluations, eta 1
    (A1111's default), per-step noise from the image's generator."""
    steps, seeds = 10, [7, 8]
    noise = torch.cat([torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        ours = run_engine(resolve_sampler("DPM fast"), steps, noise, seeds)
        draw_after_start_noise(kdiff, seeds, (4, 8, 8))
        x = noise * kd_sigmas(steps, None)[0]
        theirs = kdiff.sample_dpm_fast(denoiser, x, sig[0].item(), sig[-1].item(), steps, disable=True, eta=1.0)
    assert relative_error(ours, theirs) < 1e-4


def a1111_ddim_img2img(x0: torch.Tensor, noise: torch.Tensor, steps: int, strength: float) -> torch.Tensor:
    """A1111's DDIM img2img: t_enc = int(min(strength, 0.999) * steps); the picture noised to timesteps[t_enc], then
    DDIM (eta 0) over timesteps[:t_enc]."""
    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    t_enc = int(min(strength, 0.999) * steps)
    a = alphas_cumprod[timesteps[t_enc]]
    x = x0 * a.sqrt() + noise * (1 - a).sqrt()
    sched = timesteps[:t_enc]
    alphas = alphas_cumprod[sched]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(sched[:-1], pad=(1, 0))].double()
    for index in range(len(sched) - 1, -1, -1):
        e_t = eps_model(x, float(sched[index]))
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t
    return x


@pytest.mark.parametrize("strength", [0.3, 0.75])
def test_ddim_img2img_matches_a1111(strength):
    """A1111's DDIM img2img count (t_enc) and starting level (one grid step above the first timestep it runs), on
    diffusers' DDIM as Atelier calls the pipeline."""
    from webui.pipelines.schedulers import make_scheduler, use_a1111_ddim_start
    from webui.pipelines.strength import plan_img2img

    steps = 10
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(9))
    x0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(10))
    choice = resolve_sampler("DDIM")
    plan = plan_img2img(choice, steps, strength, fixed=False)
    with torch.no_grad():
        scheduler = make_scheduler(choice, CONFIG)
        use_a1111_ddim_start(scheduler, plan.total)
        n, passed = plan.pipeline_call()
        scheduler.set_timesteps(n)
        t_start = n - min(int(n * passed), n)
        timesteps = scheduler.timesteps[t_start:]  # diffusers' DDIM has no begin index to set
        x = scheduler.add_noise(x0, noise, timesteps[:1])
        for t in timesteps:
            x = scheduler.step(eps_model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
        theirs = a1111_ddim_img2img(x0, noise, steps, strength)
    assert len(timesteps) == int(strength * steps)
    assert relative_error(x, theirs) < 1e-4


@pytest.mark.parametrize("delta", [0, 31337])
def test_nv_source_ancestral_noise_is_each_images_philox_generator(kdiff, delta):
    """RNG source NV, as A1111 draws it: the starting noise from each image's Philox generator, the ancestral
    sampler's per-step noise from the same generator continuing (or, with ENSD, a fresh one at seed + delta)."""
    from webui.pipelines.noise import philox_step_noise
    from webui.pipelines.rng import PhiloxGenerator
    from webui.pipelines.schedulers import make_scheduler

    steps, seeds, shape = 10, [1, 2], (4, 8, 8)
    noise = torch.stack([torch.from_numpy(PhiloxGenerator(s).randn(shape)) for s in seeds]).float()
    scheduler = make_scheduler(resolve_sampler("Euler a", "Automatic"), CONFIG, noise_seeds=seeds,
                               philox=philox_step_noise(seeds, "NV", delta))
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:  # no torch generators given: a CPU draw would not be A1111's
            x = scheduler.step(eps_model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
        generators = [PhiloxGenerator(s + delta, 0 if delta else 1) for s in seeds]
        draw_noise_from(kdiff, lambda like: torch.stack([torch.from_numpy(g.randn(shape)) for g in generators])
                        .to(like.dtype))
        sigmas = kd_sigmas(steps, None, False)
        theirs = kdiff.sample_euler_ancestral(denoiser, noise * sigmas[0], sigmas, disable=True)
    assert relative_error(x, theirs) < 1e-4
    cpu = run_engine(resolve_sampler("Euler a", "Automatic"), steps, noise, seeds)
    assert relative_error(cpu, theirs) > 1e-2, "CPU generators' per-step noise is another picture"


def test_dpm_adaptive_matches_k_diffusion(kdiff):
    """txt2img: k-diffusion's sample_dpm_adaptive (order 3, its tolerances) over the model's whole sigma range, eta 1
    (A1111's default), per-step noise from the images' generators; the step count does not matter to it. The
    scheduler finds each evaluation while it runs and says when the run is over, where the engine stops the loop."""
    from webui.pipelines.schedulers import make_scheduler

    seeds, steps = [7, 8], 20
    noise = torch.cat([torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        scheduler = make_scheduler(resolve_sampler("DPM adaptive"), CONFIG, noise_seeds=seeds)
        scheduler.set_timesteps(steps)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        for generator in generators:
            torch.randn((1, 4, 8, 8), generator=generator)
        x, evaluations = noise * scheduler.init_noise_sigma, 0
        for t in scheduler.timesteps:  # as the pipelines iterate it: each timestep read when its step comes
            x = scheduler.step(eps_model(scheduler.scale_model_input(x, t), t), t, x, generator=generators).prev_sample
            evaluations += 1
            if scheduler.run_finished:
                break
        draw_after_start_noise(kdiff, seeds, (4, 8, 8))
        start = noise * kd_sigmas(steps, None)[0]
        theirs, info = kdiff.sample_dpm_adaptive(denoiser, start, sig[0].item(), sig[-1].item(), disable=True,
                                                 eta=1.0, return_info=True)
    # the same evaluations, a rejected try among them (its step size shrinks and the try runs again)
    assert scheduler.run_finished and evaluations == info["nfe"] and info["n_reject"] >= 1
    assert relative_error(x, theirs) < 1e-4


def a1111_plms(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """A1111's PLMS over ``timesteps`` from the top: a pseudo improved Euler first step (two evaluations, their eps
    averaged), then Adams-Bashforth of order 2, 3, 4 over the eps; x -> sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].double()

    def previous(x: torch.Tensor, e: torch.Tensor, index: int) -> torch.Tensor:
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * e) / a_t ** 0.5
        return a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e

    old: list[torch.Tensor] = []
    for index in range(len(timesteps) - 1, -1, -1):
        e = eps_model(x, float(timesteps[index]))
        if not old:
            e_next = eps_model(previous(x, e, index), float(timesteps[max(index - 1, 0)]))
            e_prime = (e + e_next) / 2
        elif len(old) == 1:
            e_prime = (3 * e - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = previous(x, e_prime, index)
        old = [*old, e][-3:]
    return x


def a1111_grid(steps: int) -> torch.Tensor:
    return torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def test_plms_matches_a1111():
    steps, seeds = 10, [4]
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = run_engine(resolve_sampler("PLMS"), steps, noise, seeds)
        theirs = a1111_plms(noise, a1111_grid(steps))
    assert relative_error(ours, theirs) < 1e-4


@pytest.mark.parametrize("strength", [0.3, 0.75])
def test_plms_img2img_matches_a1111(strength):
    """A1111's PLMS img2img: the picture noised to timesteps[t_enc], PLMS over timesteps[:t_enc], as Atelier calls the
    pipeline (the plan's count and strength, the pipeline's slicing and begin index)."""
    steps = 10
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(9))
    x0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        ours, evaluations = run_engine_img2img(resolve_sampler("PLMS"), steps, strength, x0, noise, [9])
        t_enc = int(min(strength, 0.999) * steps)
        a = alphas_cumprod[a1111_grid(steps)[t_enc]]
        theirs = a1111_plms(x0 * a.sqrt() + noise * (1 - a).sqrt(), a1111_grid(steps)[:t_enc])
    assert evaluations == t_enc + 1  # the first step evaluates twice
    assert relative_error(ours, theirs) < 1e-4


def brownian_queries(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The steps' (sigma, sigma_next), DPM++ SDE's half steps, and a few backwards (a sampler's renoising)."""
    steps = list(zip(sigmas[:-2], sigmas[1:-1], strict=True))
    return steps + [(s, (s * t).sqrt()) for s, t in steps] + [(t, s) for s, t in steps[:3]]


def test_brownian_noise_is_k_diffusions_to_the_bit(kdiff):
    """The SDE samplers' noise is k-diffusion's BrownianTreeNoiseSampler's (the trees A1111 builds) exactly, for
    each image of a batch, forwards and backwards in sigma."""
    from webui.pipelines.kscheduler import BrownianNoise

    sigmas, seeds = kd_sigmas(10, "exponential"), [11, 12]
    x = torch.zeros((2, 4, 8, 8))
    low, high = sigmas[sigmas > 0].min(), sigmas.max()
    ours, theirs = BrownianNoise(x, low, high, seeds), kdiff.BrownianTreeNoiseSampler(x, low, high, seed=seeds)
    for sigma, sigma_next in brownian_queries(sigmas):
        assert torch.equal(ours(sigma, sigma_next), theirs(sigma, sigma_next))


def test_brownian_noise_is_drawn_on_the_cpu_in_float32(kdiff):
    """Whatever the latents' device and dtype, the trees draw float32 numbers from CPU generators (as A1111's
    replacement of torchsde's draw does) and each step's noise is moved to the latents: float64 latents get the
    float32 noise cast, not a float64 tree's other numbers; latents on another device (meta here: no GPU needed)
    get noise there, from trees that never ran on it."""
    from webui.pipelines.kscheduler import BrownianNoise

    sigmas, seeds = kd_sigmas(10, "karras"), [13]
    low, high = sigmas[sigmas > 0].min(), sigmas.max()
    cpu = kdiff.BrownianTreeNoiseSampler(torch.zeros((1, 4, 8, 8)), low, high, seed=seeds)
    wide = BrownianNoise(torch.zeros((1, 4, 8, 8), dtype=torch.float64), low, high, seeds)
    elsewhere = BrownianNoise(torch.zeros((1, 4, 8, 8), device="meta"), low, high, seeds)
    float64_tree = kdiff.BrownianTreeNoiseSampler(torch.zeros((1, 4, 8, 8), dtype=torch.float64), low, high,
                                                  seed=seeds)
    for sigma, sigma_next in brownian_queries(sigmas):
        expected = cpu(sigma, sigma_next)
        drawn = wide(sigma, sigma_next)
        assert drawn.dtype == torch.float64 and torch.equal(drawn, expected.double())
        assert not torch.equal(float64_tree(sigma, sigma_next), expected.double())  # what a tree on x would draw
        moved = elsewhere(sigma, sigma_next)
        assert moved.device.type == "meta" and moved.shape == expected.shape
