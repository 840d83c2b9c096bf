"""The sampler table (names, aliases, schedule types) and the schedulers built from it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from webui.samplers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    SamplerChoice,
    UnknownSamplerError,
    resolve_sampler,
    split_legacy_sampler_name,
)

CONFIGS = Path(__file__).resolve().parents[1] / "webui" / "models" / "configs"
REQUIRED = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM2", "DPM2 a", "Heun", "LMS",
            "DDIM", "UniPC", "LCM", "DPM++ 2S a", "DPM++ 3M SDE", "HeunPP2", "DPM fast", "DPM adaptive", "Restart"]
K_SAMPLERS = [name for name, spec in SAMPLERS.items() if spec.scheduler_class == "KDiffusionScheduler"]
# diffusers' k-diffusion ports trip NumPy 2 deprecation warnings thousands of times per scheduler.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
COMBINATIONS = [(name, st) for name, spec in SAMPLERS.items() for st in spec.schedule_types]


def test_module_is_pure():
    code = "import sys, webui.samplers\nprint([m for m in ('torch', 'diffusers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_names_and_schedule_types():
    assert set(REQUIRED) <= set(SAMPLERS)
    assert list(SAMPLERS)[:3] == ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE"]  # A1111's dropdown order
    assert SCHEDULE_TYPES == ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
                              "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta", "Turbo")
    assert set(REQUIRED) - {"DDIM", "UniPC", "LCM"} <= set(K_SAMPLERS) and "PLMS" not in K_SAMPLERS
    for spec in SAMPLERS.values():
        assert spec.schedule_types[0] == "Automatic"


@pytest.mark.parametrize("alias, name", [
    ("k_euler_a", "Euler a"), ("euler_ancestral", "Euler a"), ("EULER A", "Euler a"), ("k_euler", "Euler"),
    ("k_dpmpp_2m", "DPM++ 2M"), ("k_dpmpp_sde", "DPM++ SDE"), ("k_dpm_2_a", "DPM2 a"), ("k_lms", "LMS"),
    ("ddim", "DDIM"), ("unipc", "UniPC"), (" Heun ", "Heun"),
])
def test_aliases(alias, name):
    assert resolve_sampler(alias).name == name


@pytest.mark.parametrize("legacy, sampler, schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"), ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
    ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
    ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"), ("DPM2 a Karras", "DPM2 a", "Karras"),
    ("LMS Karras", "LMS", "Karras"), ("k_dpmpp_2m_ka", "DPM++ 2M", "Karras"),
])
def test_legacy_combined_names(legacy, sampler, schedule):
    assert split_legacy_sampler_name(legacy) == (sampler, schedule)
    choice = resolve_sampler(legacy, "Automatic")
    assert (choice.name, choice.schedule_type) == (sampler, schedule)


def test_split_leaves_plain_and_unknown_names():
    assert split_legacy_sampler_name("Euler a") == ("Euler a", None)
    assert split_legacy_sampler_name("k_dpmpp_2m") == ("DPM++ 2M", None)
    # split even though that sampler is not offered here (resolving it then fails as unknown)
    assert split_legacy_sampler_name("DPM++ 3M SDE Karras") == ("DPM++ 3M SDE", "Karras")
    assert split_legacy_sampler_name("Something") == ("Something", None)


@pytest.mark.parametrize("name, resolved, discard", [
    ("DPM++ 2M", "Karras", False), ("DPM++ SDE", "Karras", False), ("DPM++ 2S a", "Karras", False),
    ("DPM2", "Karras", True), ("DPM2 a", "Karras", True),
    # A1111's own table gives the 2M / 3M SDE samplers an exponential default.
    ("DPM++ 2M SDE", "Exponential", False), ("DPM++ 2M SDE Heun", "Exponential", False),
    ("DPM++ 3M SDE", "Exponential", True), ("Euler", "Automatic", False), ("Euler a", "Automatic", False),
    ("HeunPP2", "Automatic", False),
])
def test_automatic_resolves_to_a1111_defaults(name, resolved, discard):
    choice = resolve_sampler(name)
    assert choice.schedule_type == resolved and choice.kwargs["schedule_type"] == resolved
    assert choice.kwargs["discard_penultimate_sigma"] is discard


def test_details_that_change_pictures():
    ids = {name: resolve_sampler(name).kwargs["sampler"] for name in K_SAMPLERS}
    assert ids["DPM++ 2M"] == "dpmpp_2m" and ids["DPM++ 2M SDE Heun"] == "dpmpp_2m_sde_heun"
    assert ids["Euler a"] == "euler_ancestral" and ids["DPM++ 2S a"] == "dpmpp_2s_ancestral"
    ddim = resolve_sampler("DDIM").kwargs
    assert (ddim["timestep_spacing"], ddim["steps_offset"], ddim["set_alpha_to_one"]) == ("leading", 1, False)
    unipc = resolve_sampler("UniPC").kwargs  # A1111's UniPC options' defaults
    assert (unipc["variant"], unipc["solver_order"], unipc["lower_order_final"]) == ("bh1", 3, True)
    assert unipc["skip_type"] == "time_uniform"
    with pytest.raises(UnknownSamplerError):  # A1111's UniPC ignores schedule types; Atelier says so
        resolve_sampler("UniPC", "Karras")
    assert resolve_sampler("Euler", "karras").schedule_type == "Karras"  # API ids work too
    assert resolve_sampler("Euler", "align_your_steps").schedule_type == "Align Your Steps"
    assert resolve_sampler("Euler", "SGMUniform").schedule_type == "SGM Uniform"  # A1111's old alias
    assert resolve_sampler("Euler", "").schedule_type == "Automatic"


def test_errors_name_the_valid_choices():
    with pytest.raises(UnknownSamplerError) as err:
        resolve_sampler("Nope")
    assert isinstance(err.value, ValueError) and err.value.field == "sampler"
    assert "Euler a" in str(err.value) and "DPM++ 2M" in str(err.value)
    with pytest.raises(UnknownSamplerError) as err:
        resolve_sampler("Euler", "Quadratic")
    assert err.value.field == "schedule_type" and "Karras" in str(err.value) and "Turbo" in str(err.value)
    with pytest.raises(UnknownSamplerError) as err:
        resolve_sampler("LCM", "Polyexponential")
    assert err.value.field == "schedule_type" and "Automatic" in str(err.value)
    with pytest.raises(UnknownSamplerError, match="Automatic, SGM Uniform"):
        resolve_sampler("DDIM", "Karras")
    with pytest.raises(UnknownSamplerError):
        resolve_sampler("LCM", "SGM Uniform")


def test_choices_do_not_share_state():
    a = resolve_sampler("Euler")
    a.kwargs["schedule_type"] = "Karras"
    assert resolve_sampler("Euler").kwargs["schedule_type"] == "Automatic"
    assert isinstance(a, SamplerChoice) and resolve_sampler("Euler") == resolve_sampler("Euler", "Automatic")


# ---- schedulers built from the table (diffusers, torch on the CPU) ----

def _model_config(arch: str) -> dict:
    """A model's scheduler config as the loader holds it (an Euler scheduler's config)."""
    from diffusers import EulerDiscreteScheduler

    raw = json.loads((CONFIGS / arch / "scheduler" / "scheduler_config.json").read_text())
    return dict(EulerDiscreteScheduler.from_config(raw).config)


@pytest.mark.parametrize("name, schedule", COMBINATIONS)
def test_every_override_reaches_the_scheduler(name, schedule):
    """diffusers drops keyword arguments a class does not take, so a misspelt option would vanish silently."""
    from webui.pipelines.schedulers import make_scheduler

    choice = resolve_sampler(name, schedule)
    config = make_scheduler(choice, _model_config("sd1")).config
    assert {k: config.get(k) for k in choice.kwargs} == choice.kwargs


_SD1_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1}
_SIGMAS_OFF = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_KARRAS = {**_SIGMAS_OFF, "use_karras_sigmas": True}
_EXPONENTIAL = {**_SIGMAS_OFF, "use_exponential_sigmas": True}


_K = "KDiffusionScheduler"


# What each sampler (schedule Automatic) is built as from an SD 1.x checkpoint's scheduler config: its class,
# the model's noise schedule, A1111's options, and class defaults where the model's config had none.
@pytest.mark.parametrize("name, cls, expected", [
    ("DPM++ 2M", _K, {"sampler": "dpmpp_2m", "schedule_type": "Karras", "discard_penultimate_sigma": False}),
    ("DPM++ SDE", _K, {"sampler": "dpmpp_sde", "schedule_type": "Karras", "noise_sampler_seed": None}),
    ("DPM++ 2M SDE", _K, {"sampler": "dpmpp_2m_sde", "schedule_type": "Exponential"}),
    ("DPM++ 2M SDE Heun", _K, {"sampler": "dpmpp_2m_sde_heun", "schedule_type": "Exponential"}),
    ("DPM++ 3M SDE", _K, {"sampler": "dpmpp_3m_sde", "schedule_type": "Exponential",
                          "discard_penultimate_sigma": True}),
    ("Euler a", _K, {"sampler": "euler_ancestral", "schedule_type": "Automatic", "rescale_betas_zero_snr": False}),
    ("Euler", _K, {"sampler": "euler", "schedule_type": "Automatic", "sdxl_schedule": False}),
    ("LMS", _K, {"sampler": "lms"}),
    ("Heun", _K, {"sampler": "heun"}),
    ("DPM2", _K, {"sampler": "dpm_2", "schedule_type": "Karras", "discard_penultimate_sigma": True}),
    ("DPM2 a", _K, {"sampler": "dpm_2_ancestral", "schedule_type": "Karras", "discard_penultimate_sigma": True}),
    ("DDIM", "DDIMScheduler",
     {"timestep_spacing": "leading", "clip_sample": False, "set_alpha_to_one": False, "thresholding": False}),
    ("PLMS", "PLMSScheduler", {"img2img_steps": 0}),
    ("UniPC", "UniPCScheduler",
     {"variant": "bh1", "skip_type": "time_uniform", "solver_order": 3, "lower_order_final": True,
      "img2img_steps": 0}),
    ("LCM", "LCMScheduler",
     {"timestep_spacing": "leading", "original_inference_steps": 50, "timestep_scaling": 10.0,
      "clip_sample": False, "set_alpha_to_one": False}),
])
def test_scheduler_settings_per_sampler(name, cls, expected):
    from webui.pipelines.schedulers import make_scheduler

    scheduler = make_scheduler(resolve_sampler(name), _model_config("sd1"))
    assert type(scheduler).__name__ == cls
    wanted = {**_SD1_SCHEDULE, **expected}
    assert {k: scheduler.config.get(k) for k in wanted} == wanted


def test_building_a_scheduler_of_another_class_logs_no_warning():
    """An LCM job on an SD 1.x model: the model's config holds PNDM keys LCM does not know."""
    import logging

    from diffusers import LCMScheduler

    from webui.pipelines.schedulers import make_scheduler

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    logger, collect = logging.getLogger("diffusers.configuration_utils"), Collect()
    logger.addHandler(collect)
    try:
        make_scheduler(resolve_sampler("LCM"), _model_config("sd1"))
        assert collect.messages == []
        LCMScheduler.from_config(_model_config("sd1"))  # the same call outside make_scheduler does warn
        assert any("skip_prk_steps" in m for m in collect.messages)
    finally:
        logger.removeHandler(collect)


@pytest.mark.parametrize("name, schedule", COMBINATIONS)
def test_every_sampler_and_schedule_builds_and_steps(name, schedule):
    import torch

    from webui.pipelines.schedulers import make_scheduler

    choice = resolve_sampler(name, schedule)
    scheduler = make_scheduler(choice, _model_config("sdxl"), noise_seeds=[11])
    assert type(scheduler).__name__ == choice.scheduler_class
    scheduler.set_timesteps(20)
    expected_spacing = choice.kwargs.get("timestep_spacing")
    if expected_spacing:
        assert scheduler.config.timestep_spacing == expected_spacing  # SDXL's "leading" overridden
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=gen) * scheduler.init_noise_sigma
    t = scheduler.timesteps[0]
    scheduler.scale_model_input(sample, t)
    extra = {"generator": gen} if "generator" in inspect.signature(scheduler.step).parameters else {}
    out = scheduler.step(torch.randn(1, 4, 8, 8, generator=gen), t, sample, **extra).prev_sample
    assert out.shape == sample.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_model_noise_schedule_and_v_prediction_survive(name):
    from webui.pipelines.schedulers import make_scheduler

    base = _model_config("sd2-v")
    assert base["prediction_type"] == "v_prediction"
    scheduler = make_scheduler(resolve_sampler(name), base)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == 0.012


def test_fresh_independent_schedulers():
    from webui.pipelines.schedulers import make_scheduler

    choice, base = resolve_sampler("DPM++ 2M"), _model_config("sd1")
    a, b = make_scheduler(choice, base), make_scheduler(choice, base)
    assert a is not b
    a.set_timesteps(10)
    b.set_timesteps(30)
    assert len(a.timesteps) == 10 and len(b.timesteps) == 30


def test_model_config_flags_do_not_clash_with_the_choice():
    from webui.pipelines.schedulers import make_scheduler

    base = {**_model_config("sd1"), "use_karras_sigmas": True}  # a model shipped with Karras on
    scheduler = make_scheduler(resolve_sampler("Euler", "Exponential"), base)
    assert scheduler.config.schedule_type == "Exponential" and "use_karras_sigmas" not in scheduler.config


def test_dpmpp_sde_noise_follows_the_seed():
    import torch

    from webui.pipelines.schedulers import make_scheduler

    def one_step(seeds):
        scheduler = make_scheduler(resolve_sampler("DPM++ SDE"), _model_config("sd1"), noise_seeds=seeds)
        scheduler.set_timesteps(6)
        sample = torch.ones(len(seeds), 4, 8, 8) * scheduler.init_noise_sigma
        t = scheduler.timesteps[0]
        first = scheduler.step(torch.zeros_like(sample), t, sample).prev_sample
        return scheduler.step(torch.zeros_like(sample), scheduler.timesteps[1], first).prev_sample

    assert torch.equal(one_step([5]), one_step([5]))
    assert not torch.equal(one_step([5]), one_step([6]))
    assert torch.allclose(one_step([5, 6])[1], one_step([6])[0])  # image i of a batch = its own seed alone


# ---- Atelier's k-diffusion path: A1111's schedule types and the samplers' arithmetic ----

def _model_sigmas():
    from webui.pipelines.ksigmas import ModelSigmas, alphas_cumprod_from_config

    return ModelSigmas(alphas_cumprod_from_config(_SD1_SCHEDULE))


@pytest.mark.parametrize("schedule", SCHEDULE_TYPES)
@pytest.mark.parametrize("steps", [1, 7, 10, 30])
def test_every_schedule_type_walks_down_to_zero(schedule, steps):
    from webui.pipelines.ksigmas import schedule_sigmas

    m = _model_sigmas()
    sigmas = schedule_sigmas(schedule, steps, m)
    assert bool((sigmas[1:] < sigmas[:-1]).all()) and bool((sigmas[:-1] > 0).all())
    if schedule == "KL Optimal":  # A1111's ends at the model's smallest sigma, without a last step to 0
        assert len(sigmas) == steps + 1 and sigmas[-1].item() == pytest.approx(m.sigma_min, rel=1e-4)
    elif schedule == "DDIM":  # A1111's takes every (1000 // steps)-th timestep from 1: a step more at some counts
        assert len(sigmas) == len(range(1, 1000, 1000 // steps)) + 1 and sigmas[-1] == 0
    else:
        assert len(sigmas) == steps + 1 and sigmas[-1] == 0


def test_schedule_types_have_a1111s_numbers():
    import torch

    from webui.pipelines.ksigmas import schedule_sigmas

    m = _model_sigmas()
    assert abs(m.sigma_max - 14.6146) < 1e-3 and abs(m.sigma_min - 0.0292) < 1e-4  # SD 1.x's sigma range
    ays = schedule_sigmas("Align Your Steps", 11, m)  # A1111 uses the list as it is for 11 steps
    assert ays[:-1].tolist() == pytest.approx([14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399,
                                               0.152, 0.029], rel=1e-6)  # NVIDIA's published SD 1.5 steps
    assert schedule_sigmas("Align Your Steps", 11, m, sdxl=True)[1].item() == pytest.approx(6.315)
    assert len(schedule_sigmas("Align Your Steps", 20, m)) == 21  # other counts interpolate log-linearly
    assert torch.equal(schedule_sigmas("Turbo", 4, m)[:-1], m.sigmas[[999, 749, 499, 249]])
    ddim = schedule_sigmas("DDIM", 10, m)[:-1]
    assert torch.equal(ddim, m.sigmas[[901, 801, 701, 601, 501, 401, 301, 201, 101, 1]])
    assert torch.equal(schedule_sigmas("Simple", 4, m)[:-1], m.sigmas[[999, 749, 499, 249]])
    kl = schedule_sigmas("KL Optimal", 5, m)
    assert kl[0].item() == pytest.approx(m.sigma_max, rel=1e-5)
    karras = schedule_sigmas("Karras", 10, m)
    assert karras[0].item() == pytest.approx(m.sigma_max, rel=1e-6)
    assert karras[-2].item() == pytest.approx(m.sigma_min, rel=1e-5)
    # DPM2 and DPM++ 3M SDE: one sigma more, the next-to-last dropped (A1111's discard_next_to_last_sigma)
    longer = schedule_sigmas("Karras", 11, m)
    discarded = schedule_sigmas("Karras", 10, m, discard_penultimate=True)
    assert torch.equal(discarded, torch.cat([longer[:-2], longer[-1:]]))


@pytest.mark.parametrize("sampler", ["euler", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m"])
def test_deterministic_samplers_are_exact_when_the_model_is(sampler):
    """A model that always predicts the same clean picture makes the ODE's path a straight line in sigma: every
    deterministic sampler must land on that picture (HeunPP2's weights, LMS's coefficients sum to one)."""
    import torch

    from webui.pipelines.ksamplers import SAMPLERS as K
    from webui.pipelines.ksigmas import schedule_sigmas

    sigmas = schedule_sigmas("Karras", 8, _model_sigmas())
    clean = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    run, evaluations = K[sampler][0](x, sigmas, lambda a, b: torch.zeros_like(x)), 0
    try:
        next(run)
        while True:
            evaluations += 1
            run.send(clean)
    except StopIteration as done:
        result = done.value
    assert torch.allclose(result, clean, atol=1e-5)
    assert evaluations >= 8


def test_restart_repeats_a_stretch_from_sigma_2_and_still_lands_on_a_fixed_prediction():
    """A1111's Restart at 20 steps: 11 Karras steps, then 9 more from sigma 2 back down to ~0.1 after a jump up
    with fresh noise, all Heun (two evaluations a step, one for the last); a model that always predicts the same
    clean picture still ends on it."""
    import torch

    from webui.pipelines.ksamplers import SAMPLERS as K
    from webui.pipelines.ksigmas import schedule_sigmas

    sigmas = schedule_sigmas("Karras", 20, _model_sigmas())
    clean = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    jumps: list[tuple[float, float]] = []
    run = K["restart"][0](x, sigmas, lambda a, b: jumps.append((float(a), float(b))) or torch.ones_like(x))
    evaluated = []
    try:
        _, sigma = next(run)
        while True:
            evaluated.append(float(sigma))
            _, sigma = run.send(clean)
    except StopIteration as done:
        result = done.value
    assert torch.allclose(result, clean, atol=1e-5)
    assert len(evaluated) == 2 * 20 - 1
    assert len(jumps) == 1 and jumps[0][0] < 0.2 and jumps[0][1] == pytest.approx(2, rel=0.2)
    rises = [i for i in range(1, len(evaluated)) if evaluated[i] > evaluated[i - 1]]
    assert len(rises) == 1


def test_img2img_step_counts_are_a1111s():
    from webui.pipelines.strength import a1111_steps, plan_img2img
    from webui.samplers import resolve_sampler

    assert a1111_steps(20, 0.5, fixed=False) == (20, 10)  # t_enc 10: 11 steps from sigmas[9]
    assert a1111_steps(20, 1.0, fixed=False) == (20, 19)  # strength capped at 0.999: all 20 steps from sigma_max
    assert a1111_steps(20, 0.01, fixed=False) == (20, 0)  # still one step, from the last sigma
    assert a1111_steps(20, 0.5, fixed=True) == (40, 19)  # img2img_fix_steps / hires: exactly 20 of 40
    euler, ddim, lcm = resolve_sampler("Euler"), resolve_sampler("DDIM"), resolve_sampler("LCM")
    assert [plan_img2img(euler, 20, s, False).steps_run for s in (0.01, 0.5, 1.0)] == [1, 11, 20]
    assert [plan_img2img(ddim, 20, s, False).steps_run for s in (0.05, 0.5, 1.0)] == [1, 10, 19]
    assert plan_img2img(lcm, 20, 0.5, False).steps_run == 10  # diffusers' own count
    # what the pipeline is told makes diffusers keep exactly the planned steps, never at strength 1 (which would
    # start an inpainting pipeline from noise alone)
    for steps in range(1, 151):
        for strength in (0.0, 0.13, 0.5, 0.77, 1.0):
            for choice in (euler, ddim):
                plan = plan_img2img(choice, steps, strength, False)
                n, passed = plan.pipeline_call()
                kept = min(int(n * passed), n)
                skipped = n - kept
                if choice is euler:
                    assert passed < 1 and skipped == 1 and kept == plan.steps_run
                else:
                    assert kept == plan.steps_run
