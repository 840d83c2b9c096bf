"""Parity of the engine's samplers with k-diffusion (what A1111 and Forge sample with), fp32 on the CPU.

The model is a small fixed-weight eps network on SD's noise schedule; the engine's path is the diffusers scheduler
that ``make_scheduler`` builds for an A1111 sampler name, driven as the pipelines drive it, with the noise drawn as
A1111 draws it (the image's seed for the start, the same generator continuing for the per-step noise). The
reference is k-diffusion's own ``sampling.py``, loaded from its wheel (k_diffusion-0.1.1.post1, MIT) with a stub
package so torchvision is never needed; the test is skipped where the wheel is not at hand (``KDIFFUSION_WHEEL``).
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

from webui.samplers import resolve_sampler

# scripts/bootstrap.sh downloads the wheel (without installing it) into .venv/reference/.
WHEEL = Path(os.environ.get("KDIFFUSION_WHEEL", Path(__file__).resolve().parents[1] / ".venv" / "reference"
                            / "k_diffusion-0.1.1.post1-py3-none-any.whl"))
pytestmark = pytest.mark.skipif(not WHEEL.exists(), reason="k-diffusion wheel not at hand")


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
torch.manual_seed(0)
conv = torch.nn.Conv2d(4, 4, 3, padding=1)
for p in conv.parameters():
    torch.nn.init.normal_(p, std=0.1)


def eps_model(x: torch.Tensor, t) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    return torch.tanh(conv(x)) * (0.5 + t.view(-1, 1, 1, 1) / 1000)


betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # SD's scaled_linear
alphas_cumprod = torch.cumprod(1 - betas, 0).float()
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


def kd_sigmas(n: int, kind: str | None) -> torch.Tensor:
    if kind == "karras":
        return K.get_sigmas_karras(n, sig[0].item(), sig[-1].item())
    if kind == "exponential":
        return K.get_sigmas_exponential(n, sig[0].item(), sig[-1].item())
    return K.append_zero(t_to_sigma(torch.linspace(999, 0, n)))


CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def run_diffusers(choice, steps: int, noise: torch.Tensor, seed: int) -> torch.Tensor:
    from webui.pipelines.schedulers import make_scheduler

    scheduler = make_scheduler(choice, CONFIG, noise_seeds=[seed])
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    torch.randn(noise.shape, generator=generator)  # the pipeline drew the start noise from it
    x = noise * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        eps = eps_model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, **({"generator": generator} if takes_generator else {})).prev_sample
    return x


@pytest.fixture(scope="module")
def kdiff():
    saved = {name: sys.modules.get(name) for name in ("k_diffusion", "k_diffusion.utils", "torchdiffeq")}
    yield load_kd(WHEEL)
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


# (A1111 sampler, schedule type, k-diffusion function, k-diffusion sigma schedule); Automatic is the model's
# own sigmas spaced evenly in timestep (k-diffusion's DiscreteSchedule.get_sigmas).
AT_PARITY = [("Euler", "Automatic", "sample_euler", None), ("Euler a", "Automatic", "sample_euler_ancestral", None),
             ("LMS", "Automatic", "sample_lms", None), ("Heun", "Automatic", "sample_heun", None)]


@pytest.mark.parametrize(("name", "schedule", "function", "kind"), AT_PARITY)
def test_final_latents_match_k_diffusion(kdiff, name, schedule, function, kind):
    global K
    K = kdiff
    steps, seed = 10, 1
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = run_diffusers(resolve_sampler(name, schedule), steps, noise, seed)
        sigmas = kd_sigmas(steps, kind)
        generator = torch.Generator().manual_seed(seed)
        torch.randn(noise.shape, generator=generator)  # the start noise came first from the image's generator
        kdiff.torch = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
        kdiff.torch.randn_like = lambda x, **kw: torch.randn(x.shape, generator=generator, dtype=x.dtype)
        theirs = getattr(kdiff, function)(denoiser, noise * sigmas[0], sigmas, disable=True)
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-4
