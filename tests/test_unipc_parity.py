"""UniPC as A1111 samples it (``sd_samplers_timesteps_impl.unipc`` with A1111's default options: variant bh1,
time-uniform skip, order 3, lower order final, predicting x0), against the engine's scheduler driven as the
pipelines drive it, fp32 on the CPU with a fixed-weight model on SD's noise schedule.

There is no package holding the UniPC authors' code, so the reference is written out here in their algorithm's
own shape: a loop that calls the model itself, a list of the last `order` predictions, the predictor and the
corrector as one update, in float64 from the schedule's float32 numbers and the model's float32 outputs (A1111
computes in float32; the two agree far inside the 1e-4 asked). The engine's scheduler instead receives one model
output per call and keeps the pending correction between calls, so the test checks that restructuring, the
continuous-time grid, the fractional timesteps the UNet sees and A1111's img2img start.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.fixed_model import CONFIG, alphas_cumprod, eps_model, relative_error
from webui.pipelines.schedulers import make_scheduler
from webui.pipelines.strength import plan_img2img
from webui.samplers import resolve_sampler


def v_model(x: torch.Tensor, t) -> torch.Tensor:
    return eps_model(x, t) * 0.8 - 0.1 * x


# The continuous schedule: log alpha at t_i = (i + 1) / 1000, linear in between.
KNOTS_T = torch.linspace(0.0, 1.0, 1001)[1:].double()
KNOTS_LOG_ALPHA = 0.5 * torch.log(alphas_cumprod).double()


def log_alpha(t: float) -> float:
    i = min(max(int(torch.searchsorted(KNOTS_T, torch.tensor(t, dtype=torch.float64))), 1), 999)
    t0, t1 = float(KNOTS_T[i - 1]), float(KNOTS_T[i])
    y0, y1 = float(KNOTS_LOG_ALPHA[i - 1]), float(KNOTS_LOG_ALPHA[i])
    return y0 + (t - t0) * (y1 - y0) / (t1 - t0)


def alpha_sigma_lambda(t: float) -> tuple[float, float, float]:
    a = torch.tensor(log_alpha(t), dtype=torch.float64)
    alpha, sigma = a.exp(), (1 - (2 * a).exp()).sqrt()
    return float(alpha), float(sigma), float(a - sigma.log())


def reference_unipc(model, x: torch.Tensor, steps: int, t_start: float = 1.0, v: bool = False,
                    order: int = 3) -> tuple[torch.Tensor, list[float]]:
    """UniPC-bh1 multistep from t_start to 1/1000 in equal time steps; (final x, the UNet timesteps called)."""
    x = x.double()
    grid = [t_start + (0.001 - t_start) * k / steps for k in range(steps + 1)]
    called: list[float] = []

    def data_prediction(x: torch.Tensor, t: float) -> torch.Tensor:
        t_input = (t - 0.001) * 1000
        called.append(t_input)
        out = model(x.float(), t_input).double()  # the model in float32, as A1111 runs it
        if v:  # A1111 turns v into eps with the whole timestep's alphas
            a = alphas_cumprod[int(t_input)].double()
            out = a.sqrt() * out + (1 - a).sqrt() * x
        alpha, sigma, _ = alpha_sigma_lambda(t)
        return (x - sigma * out) / alpha

    def update(x, preds, times, t, p, correct):
        alpha_t, sigma_t, lam_t = alpha_sigma_lambda(t)
        _, sigma_0, lam_0 = alpha_sigma_lambda(times[-1])
        h = lam_t - lam_0
        r = [(alpha_sigma_lambda(times[-1 - i])[2] - lam_0) / h for i in range(1, p)] + [1.0]
        d = [(preds[-1 - i] - preds[-1]) / r[i - 1] for i in range(1, p)]
        hh = -h
        phi, fact, b = torch.expm1(torch.tensor(hh, dtype=torch.float64)).item() / hh - 1, 1, []
        for i in range(1, p + 1):
            b.append(phi * fact / hh)
            fact *= i + 1
            phi = phi / hh - 1 / fact
        rr = torch.tensor([[ri ** k for ri in r] for k in range(p)], dtype=torch.float64)
        bb = torch.tensor(b, dtype=torch.float64)
        base = sigma_t / sigma_0 * x - alpha_t * torch.expm1(torch.tensor(-h)).item() * preds[-1]
        predicted = base
        if d:
            rho_p = [0.5] if p == 2 else torch.linalg.solve(rr[:-1, :-1], bb[:-1]).tolist()
            predicted = base - alpha_t * hh * sum(rh * di for rh, di in zip(rho_p, d, strict=True))
        if not correct:
            return predicted, None
        m_t = data_prediction(predicted, t)
        rho_c = [0.5] if p == 1 else torch.linalg.solve(rr, bb).tolist()
        corr = sum((rh * di for rh, di in zip(rho_c[:-1], d, strict=True)), torch.zeros_like(x))
        return base - alpha_t * hh * (corr + rho_c[-1] * (m_t - preds[-1])), m_t

    order = min(order, steps)
    preds, times = [data_prediction(x, grid[0])], [grid[0]]
    for j in range(1, steps + 1):
        p = j if j < order else min(order, steps + 1 - j)
        x, m = update(x, preds, times, grid[j], p, correct=j < steps)
        preds, times = (preds + [m])[-order:], (times + [grid[j]])[-order:]
    return x.float(), called


def run_engine(model, steps: int, noise: torch.Tensor, config=CONFIG, schedule: str = "Automatic"):
    scheduler = make_scheduler(resolve_sampler("UniPC", schedule), config)
    scheduler.set_timesteps(steps)
    x, called = noise * scheduler.init_noise_sigma, []
    for t in scheduler.timesteps:
        called.append(float(t))
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x, called


@pytest.mark.parametrize("steps", [4, 10, 20])
def test_txt2img_matches_a1111_unipc(steps):
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(steps))
    with torch.no_grad():
        ours, our_calls = run_engine(eps_model, steps, noise)
        theirs, their_calls = reference_unipc(eps_model, noise, steps)
    assert relative_error(ours, theirs) < 1e-4
    assert our_calls == pytest.approx(their_calls, abs=1e-3) and len(our_calls) == steps
    if steps == 10:
        assert our_calls[:2] == pytest.approx([999.0, 899.1], abs=1e-3)  # fractional, as A1111 evaluates


def test_v_prediction_matches_a1111_unipc():
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, _ = run_engine(v_model, 12, noise, {**CONFIG, "prediction_type": "v_prediction"})
        theirs, _ = reference_unipc(v_model, noise, 12, v=True)
    assert relative_error(ours, theirs) < 1e-4


def a1111_img2img(x0: torch.Tensor, noise: torch.Tensor, steps: int, strength: float) -> torch.Tensor:
    """A1111's timestep-sampler img2img: the picture noised to timesteps[t_enc] of its DDIM-like grid, then UniPC for
    t_enc steps from timesteps[t_enc - 1] / 1000 + 1 / 1000."""
    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    t_enc = int(min(strength, 0.999) * steps)
    a = alphas_cumprod[timesteps[t_enc]]
    x = x0 * a.sqrt() + noise * (1 - a).sqrt()
    return reference_unipc(eps_model, x, t_enc, t_start=float(timesteps[t_enc - 1]) / 1000 + 1 / 1000)[0]


@pytest.mark.parametrize("strength", [0.5, 0.75])
def test_img2img_matches_a1111_unipc(strength):
    """Atelier's img2img call (the pipeline's count and strength from the plan, its slicing and begin index)."""
    steps = 20
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(9))
    x0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(10))
    choice = resolve_sampler("UniPC")
    plan = plan_img2img(choice, steps, strength, fixed=False)
    with torch.no_grad():
        scheduler = make_scheduler(choice, CONFIG, img2img=(plan.total, plan.t_enc))
        n, passed = plan.pipeline_call()
        scheduler.set_timesteps(n)
        t_start = n - min(int(n * passed), n)  # diffusers' get_timesteps
        timesteps = scheduler.timesteps[t_start:]
        scheduler.set_begin_index(t_start)
        x = scheduler.add_noise(x0, noise, timesteps[:1])
        for t in timesteps:
            x = scheduler.step(eps_model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
        theirs = a1111_img2img(x0, noise, steps, strength)
    assert len(timesteps) == int(strength * steps)
    assert relative_error(x, theirs) < 1e-4


@pytest.mark.parametrize("skip_type", ["time_uniform", "time_quadratic", "logSNR"])
def test_a_clean_prediction_lands_exactly_on_it(skip_type):
    """A model that always predicts the same clean picture: every UniPC order solves that ODE exactly, so the run
    ends at alpha * x0 + (sigma_end / sigma_start) * (x_T - alpha_T * x0), whatever A1111's skip type."""
    x0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    alpha_end, sigma_end, _ = alpha_sigma_lambda(0.001)
    alpha_start, sigma_start, _ = alpha_sigma_lambda(1.0)
    choice = resolve_sampler("UniPC")
    choice.kwargs["skip_type"] = skip_type
    scheduler = make_scheduler(choice, {**CONFIG, "prediction_type": "sample"})
    scheduler.set_timesteps(8)
    assert len(scheduler.timesteps) == 8 and float(scheduler.timesteps[0]) == pytest.approx(999.0, abs=1e-3)
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(x0, t, x).prev_sample
    expected = alpha_end * x0 + sigma_end / sigma_start * (noise - alpha_start * x0)
    assert relative_error(x, expected) < 1e-4


def test_skip_types_move_the_steps():
    def times(skip_type):
        choice = resolve_sampler("UniPC")
        choice.kwargs["skip_type"] = skip_type
        scheduler = make_scheduler(choice, CONFIG)
        scheduler.set_timesteps(10)
        return scheduler.timesteps

    uniform, quadratic, log_snr = times("time_uniform"), times("time_quadratic"), times("logSNR")
    assert float(uniform[1]) == pytest.approx(899.1, abs=1e-3)
    assert float(quadratic[1]) < float(uniform[1]) and not torch.allclose(log_snr, uniform)
    for steps in (quadratic, log_snr):
        assert float(steps[0]) == pytest.approx(999.0, abs=0.01) and bool((steps[1:] < steps[:-1]).all())
