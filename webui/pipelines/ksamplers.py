"""k-diffusion's samplers (what A1111 samples with), written as generators over sigma space.

Each sampler is ``sampler(x, sigmas, noise)``: a generator that yields ``(x_eval, sigma_eval)`` for every model
evaluation it needs and is sent back the denoised prediction there; its return value is the final sample. Written
this way the loop that calls the model stays outside (a diffusers pipeline, through ``KDiffusionScheduler``), while
the arithmetic is k-diffusion's step for step (float32 tensors, same order of operations), so the pictures match.
``noise(sigma, sigma_next)`` gives the per-step noise: the image generators' draws, or a Brownian tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Mapping
from typing import Any

import torch

Noise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Run = Generator[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]
Sampler = Callable[[torch.Tensor, torch.Tensor, Noise], Run]


def _d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor,
                   eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up): the level to step down to deterministically and the noise to add back."""
    if not eta:
        return sigma_next, sigma_next * 0
    up = torch.minimum(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - up ** 2) ** 0.5, up


def _t(sigma: torch.Tensor) -> torch.Tensor:  # DPM-Solver's time: -log sigma
    return sigma.log().neg()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def euler(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        x = x + _d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def euler_ancestral(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        down, up = ancestral_step(sigmas[i], sigmas[i + 1])
        x = x + _d(x, sigmas[i], denoised) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * up
    return x


def heun(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        d = _d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = yield x_2, sigmas[i + 1]
            x = x + (d + _d(x_2, sigmas[i + 1], denoised_2)) / 2 * dt
    return x


def heunpp2(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    """Heun++ (HeunPP2): up to three evaluations a step, weighted by sigma over the run's first sigma."""
    end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        d = _d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        denoised_2 = yield x_2, sigmas[i + 1]
        d_2 = _d(x_2, sigmas[i + 1], denoised_2)
        if sigmas[i + 2] == end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
        denoised_3 = yield x_3, sigmas[i + 2]
        d_3 = _d(x_3, sigmas[i + 2], denoised_3)
        w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


def dpm_2(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        d = _d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (mid - sigmas[i])
            denoised_2 = yield x_2, mid
            x = x + _d(x_2, mid, denoised_2) * (sigmas[i + 1] - sigmas[i])
    return x


def dpm_2_ancestral(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        down, up = ancestral_step(sigmas[i], sigmas[i + 1])
        d = _d(x, sigmas[i], denoised)
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            mid = sigmas[i].log().lerp(down.log(), 0.5).exp()
            x_2 = x + d * (mid - sigmas[i])
            denoised_2 = yield x_2, mid
            x = x + _d(x_2, mid, denoised_2) * (down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * up
    return x


def _lms_coefficient(order: int, t: Any, i: int, j: int) -> float:
    from scipy import integrate

    def basis(tau: float) -> float:
        product = 1.0
        for k in range(order):
            if k != j:
                product *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return product

    return float(integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0])


def lms(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, order: int = 4) -> Run:
    points = sigmas.detach().cpu().numpy()  # float32 values, as k-diffusion integrates them
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        ds = [*ds, _d(x, sigmas[i], denoised)][-order:]
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, points, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(ds), strict=False))  # type: ignore[assignment]
    return x


def dpmpp_2s_ancestral(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        down, up = ancestral_step(sigmas[i], sigmas[i + 1])
        if down == 0:
            x = x + _d(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = yield x_2, _sigma(s)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * up
    return x


def dpmpp_sde(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    r = 0.5
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + _d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        down, up = ancestral_step(_sigma(t), _sigma(s))
        s_ = _t(down)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * up
        denoised_2 = yield x_2, _sigma(s)
        down, up = ancestral_step(_sigma(t), _sigma(t_next))
        t_next_ = _t(down)
        blended = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * blended
        x = x + noise(_sigma(t), _sigma(t_next)) * up
    return x


def dpmpp_2m(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    old: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            blended = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * blended
        old = denoised
    return x


def _dpmpp_2m_sde(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, heun: bool) -> Run:
    old: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    h = sigmas[0] * 0
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = h  # eta 1
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old is not None and h_last is not None:
                r = h_last / h
                if heun:
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt()
        old, h_last = denoised, h
    return x


def dpmpp_2m_sde(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    return (yield from _dpmpp_2m_sde(x, sigmas, noise, heun=False))


def dpmpp_2m_sde_heun(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    return (yield from _dpmpp_2m_sde(x, sigmas, noise, heun=True))


def dpmpp_3m_sde(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    denoised_1: torch.Tensor | None = None
    denoised_2: torch.Tensor | None = None
    h_1: torch.Tensor | None = None
    h_2: torch.Tensor | None = None
    h = sigmas[0] * 0
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * 2  # eta 1
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and denoised_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _karras_between(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """k-diffusion's Karras sigmas (n of them, then 0) between two levels, as Restart asks for them."""
    ramp = torch.linspace(0, 1, n)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1)])


def restart(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise) -> Run:
    """A1111's Restart sampler (Restart Sampling, Xu et al. 2023): Heun steps, and from 20 steps on a stretch of the
    run repeated after jumping back up to sigma 2 with fresh noise (A1111's automatic restart list). Every sigma
    it evaluates follows from the step count and the run's range, so a dry run finds them."""
    steps = len(sigmas) - 1
    restarts: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = _karras_between(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restarts = {0.1: (restart_steps + 1, restart_times, 2.0)}
    at = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restarts.items()}
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in at:
            count, times, top = at[i + 1]
            low, high = i + 1, int(torch.argmin(abs(sigmas - top), dim=0))
            if high < low:
                again = _karras_between(count, sigmas[low].item(), sigmas[high].item())[:-1]
                pairs.extend(list(zip(again[:-1], again[1:], strict=True)) * times)
    last: torch.Tensor | None = None
    for old, new in pairs:
        if last is None:
            last = old
        elif last < old:  # back up: noise the picture from the level reached to the level restarted at
            x = x + noise(last, old) * (old ** 2 - last ** 2) ** 0.5
        denoised = yield x, old
        d = _d(x, old, denoised)
        dt = new - old
        if new == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = yield x_2, new
            x = x + (d + _d(x_2, new, denoised_2)) / 2 * dt
        last = new
    return x


def _eps_at(x: torch.Tensor, t: torch.Tensor) -> Generator[tuple[torch.Tensor, torch.Tensor], torch.Tensor,
                                                            torch.Tensor]:
    """The model's eps at x and DPM-Solver time t, recovered from its denoised prediction as k-diffusion does."""
    denoised = yield x, _sigma(t)
    return (x - denoised) / _sigma(t)


def _ancestral_target(t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor,
                      eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver's step from t towards t_next with eta: the time it solves to (down from t_next, never past
    t_end) and how much noise brings it back to t_next's level."""
    if not eta:
        return t_next, t_next * 0
    down, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
    target = torch.minimum(t_end, _t(down))
    return target, (_sigma(t_next) ** 2 - _sigma(target) ** 2) ** 0.5


def dpm_fast(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, eta: float = 1.0) -> Run:
    """DPM-Solver-fast (k-diffusion's sample_dpm_fast) from sigmas[0] down to sigmas[-2] in len(sigmas) - 1 model
    evaluations, with A1111's eta (1: ancestral). Only the range and the count of ``sigmas`` matter; the solver
    works on the model's eps, recovered from the denoised prediction as k-diffusion does."""
    t_start, t_end, evaluations = _t(sigmas[0].float()), _t(sigmas[-2].float()), len(sigmas) - 1
    if eta and not t_end > t_start:
        raise ValueError("DPM fast needs a run of at least two steps (more steps or a higher denoising strength)")
    m = math.floor(evaluations / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if evaluations % 3 == 0 else [3] * (m - 1) + [evaluations % 3]

    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_next_, up = _ancestral_target(t, t_next, t_end, eta)
        eps = yield from _eps_at(x, t)
        h = t_next_ - t
        if order == 1:
            x = x - _sigma(t_next_) * h.expm1() * eps
        elif order == 2:
            r1 = 1 / 2
            s1 = t + r1 * h
            u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
            eps_r1 = yield from _eps_at(u1, s1)
            x = x - _sigma(t_next_) * h.expm1() * eps - _sigma(t_next_) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        else:
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = t + r1 * h, t + r2 * h
            u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
            eps_r1 = yield from _eps_at(u1, s1)
            u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
                  - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
            eps_r2 = yield from _eps_at(u2, s2)
            x = x - _sigma(t_next_) * h.expm1() * eps - _sigma(t_next_) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        x = x + up * noise(_sigma(t), _sigma(t_next))
    return x


class _StepSizeController:
    """k-diffusion's PID controller of DPM adaptive's step size (A1111's defaults: integral only)."""

    def __init__(self, h: float, order: float, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                 accept_safety: float = 0.81) -> None:
        self.h = h
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.accept_safety = accept_safety
        self.inverse_errors: list[float] = []

    def accepts(self, error: torch.Tensor) -> bool:
        """Whether the step with this error stands; the next step size follows either way."""
        inverse = 1 / (float(error) + 1e-8)
        if not self.inverse_errors:
            self.inverse_errors = [inverse] * 3
        self.inverse_errors[0] = inverse
        e = self.inverse_errors
        factor = 1 + math.atan(e[0] ** self.b[0] * e[1] ** self.b[1] * e[2] ** self.b[2] - 1)
        accepted = factor >= self.accept_safety
        if accepted:
            e[2], e[1] = e[1], e[0]
        self.h *= factor
        return accepted


def dpm_adaptive(x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, eta: float = 1.0, rtol: float = 0.05,
                 atol: float = 0.0078, h_init: float = 0.05) -> Run:
    """DPM-Solver-23 with adaptive step size (k-diffusion's sample_dpm_adaptive, order 3) from sigmas[0] down to
    sigmas[-2], with A1111's eta (1: ancestral). Each try evaluates the model three times and compares the second-
    and third-order results; where it evaluates depends on the picture, so the run's length is known only at its
    end. The error is measured over the whole batch, as in k-diffusion."""
    t_start, t_end = _t(sigmas[0].float()), _t(sigmas[-2].float())
    if eta and not t_end > t_start:
        raise ValueError("DPM adaptive needs a run of at least two steps (more steps or a higher denoising strength)")
    a_tol, r_tol = torch.tensor(atol), torch.tensor(rtol)
    controller = _StepSizeController(abs(h_init), 1.5 if eta else 3)
    s, x_prev = t_start, x

    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + controller.h)
        t_, up = _ancestral_target(s, t, t_end, eta)
        eps = yield from _eps_at(x, s)
        h = t_ - s
        r1, r2 = 1 / 3, 2 / 3
        s1, s2 = s + r1 * h, s + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = yield from _eps_at(u1, s1)
        x_low = x - _sigma(t_) * h.expm1() * eps - _sigma(t_) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
              - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = yield from _eps_at(u2, s2)
        x_high = x - _sigma(t_) * h.expm1() * eps - _sigma(t_) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        delta = torch.maximum(a_tol, r_tol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if controller.accepts(error):
            x_prev = x_low
            x = x_high + up * noise(_sigma(s), _sigma(t))
            s = t
    return x


# name -> (sampler, evaluations per step for diffusers' img2img slicing, per-step noise kind)
# noise kinds: "" none, "randn" the images' generators (A1111's ancestral samplers), "brownian" a Brownian tree.
# Evaluations per step 0: the evaluations are not a fixed number per step (DPM fast, Restart), so only A1111's
# img2img plan (KDiffusionScheduler's img2img_steps) can start such a sampler part-way.
SAMPLERS: Mapping[str, tuple[Sampler, int, str]] = {
    "euler": (euler, 1, ""),
    "euler_ancestral": (euler_ancestral, 1, "randn"),
    "heun": (heun, 2, ""),
    "heunpp2": (heunpp2, 3, ""),
    "dpm_2": (dpm_2, 2, ""),
    "dpm_2_ancestral": (dpm_2_ancestral, 2, "randn"),
    "lms": (lms, 1, ""),
    "dpmpp_2s_ancestral": (dpmpp_2s_ancestral, 2, "randn"),
    "dpmpp_sde": (dpmpp_sde, 2, "brownian"),
    "dpmpp_2m": (dpmpp_2m, 1, ""),
    "dpmpp_2m_sde": (dpmpp_2m_sde, 1, "brownian"),
    "dpmpp_2m_sde_heun": (dpmpp_2m_sde_heun, 1, "brownian"),
    "dpmpp_3m_sde": (dpmpp_3m_sde, 1, "brownian"),
    "dpm_fast": (dpm_fast, 0, "randn"),
    "restart": (restart, 0, "randn"),
    "dpm_adaptive": (dpm_adaptive, 0, "randn"),
}

# Samplers that take only the range of the sigmas: in txt2img A1111 gives them the model's whole range.
RANGE_SAMPLERS = frozenset({"dpm_fast", "dpm_adaptive"})
# Samplers whose evaluations follow the picture: no dry run finds them before the run.
ADAPTIVE_SAMPLERS = frozenset({"dpm_adaptive"})
