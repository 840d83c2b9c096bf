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
            "DDIM", "UniPC", "LCM"]
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
    assert SCHEDULE_TYPES == ("Automatic", "Karras", "Exponential", "SGM Uniform", "Beta")
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


@pytest.mark.parametrize("name, resolved, flag", [
    ("DPM++ 2M", "Karras", "use_karras_sigmas"), ("DPM++ SDE", "Karras", "use_karras_sigmas"),
    ("DPM2", "Karras", "use_karras_sigmas"), ("DPM2 a", "Karras", "use_karras_sigmas"),
    # A1111's own table gives the 2M SDE samplers an exponential default.
    ("DPM++ 2M SDE", "Exponential", "use_exponential_sigmas"), ("Euler", "Automatic", None),
])
def test_automatic_resolves_to_a1111_defaults(name, resolved, flag):
    choice = resolve_sampler(name)
    assert choice.schedule_type == resolved
    flags = {k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
             if choice.kwargs[k]}
    assert flags == ({flag} if flag else set())


def test_details_that_change_pictures():
    for name in ("Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM2", "Heun", "LMS", "UniPC"):
        assert resolve_sampler(name).kwargs["timestep_spacing"] == "linspace", name
    ddim = resolve_sampler("DDIM").kwargs
    assert (ddim["timestep_spacing"], ddim["steps_offset"], ddim["set_alpha_to_one"]) == ("leading", 1, False)
    unipc = resolve_sampler("UniPC").kwargs
    assert (unipc["solver_type"], unipc["solver_order"], unipc["lower_order_final"]) == ("bh1", 3, True)
    dpm = resolve_sampler("DPM++ 2M").kwargs
    assert (dpm["algorithm_type"], dpm["solver_order"]) == ("dpmsolver++", 2)
    assert resolve_sampler("DPM++ 2M SDE").kwargs["algorithm_type"] == "sde-dpmsolver++"
    sgm = resolve_sampler("Euler", "SGM Uniform")
    assert sgm.kwargs["timestep_spacing"] == "trailing" and not sgm.kwargs["use_karras_sigmas"]
    assert resolve_sampler("Euler", "karras").schedule_type == "Karras"  # API ids work too
    assert resolve_sampler("Euler", "").schedule_type == "Automatic"


def test_errors_name_the_valid_choices():
    with pytest.raises(UnknownSamplerError) as err:
        resolve_sampler("Nope")
    assert isinstance(err.value, ValueError) and err.value.field == "sampler"
    assert "Euler a" in str(err.value) and "DPM++ 2M" in str(err.value)
    with pytest.raises(UnknownSamplerError) as err:
        resolve_sampler("Euler", "Polyexponential")
    assert err.value.field == "schedule_type" and "Karras" in str(err.value)
    with pytest.raises(UnknownSamplerError, match="Automatic, SGM Uniform"):
        resolve_sampler("DDIM", "Karras")
    with pytest.raises(UnknownSamplerError):
        resolve_sampler("LCM", "SGM Uniform")


def test_choices_do_not_share_state():
    a = resolve_sampler("Euler")
    a.kwargs["timestep_spacing"] = "leading"
    assert resolve_sampler("Euler").kwargs["timestep_spacing"] == "linspace"
    assert isinstance(a, SamplerChoice) and resolve_sampler("Euler") == resolve_sampler("Euler", "Automatic")


# ---- schedulers built from the table (diffusers, torch on the CPU) ----

def _model_config(arch: str) -> dict:
    """A model's scheduler config as the loader holds it (an Euler scheduler's config)."""
    from diffusers import EulerDiscreteScheduler

    raw = json.loads((CONFIGS / arch / "scheduler" / "scheduler_config.json").read_text())
    return dict(EulerDiscreteScheduler.from_config(raw).config)


def test_table_only_uses_constructor_arguments_diffusers_has():
    from webui.pipelines.schedulers import accepted_keys

    for name, spec in SAMPLERS.items():
        for schedule in spec.schedule_types:
            choice = resolve_sampler(name, schedule)
            assert set(choice.kwargs) <= accepted_keys(choice.scheduler_class), (name, schedule)


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
    assert scheduler.config.use_exponential_sigmas and not scheduler.config.use_karras_sigmas


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
