"""A1111 sampler and schedule-type names, mapped to scheduler classes.

A pure table (no torch, no diffusers): the UI, the API and infotext parsing use it to list and
check names; `pipelines.schedulers.make_scheduler` turns a `SamplerChoice` into a scheduler.

A1111's k-diffusion samplers run on Atelier's `KDiffusionScheduler` (k-diffusion's numbers, every
A1111 schedule type), its UniPC and PLMS on Atelier's `UniPCScheduler` (continuous time, as A1111)
and `PLMSScheduler`; DDIM and LCM on diffusers' schedulers, whose constructor overrides make them
behave like A1111's (timestep spacing, DDIM offsets). Anything not overridden (beta schedule, prediction type, zero-SNR
rescaling) comes from the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import AtelierError

AUTOMATIC = "Automatic"

# A1111's schedule types (label, API id), in A1111's dropdown order.
_SCHEDULES: tuple[tuple[str, str], ...] = (
    (AUTOMATIC, "automatic"), ("Uniform", "uniform"), ("Karras", "karras"), ("Exponential", "exponential"),
    ("Polyexponential", "polyexponential"), ("SGM Uniform", "sgm_uniform"), ("KL Optimal", "kl_optimal"),
    ("Align Your Steps", "align_your_steps"), ("Simple", "simple"), ("Normal", "normal"), ("DDIM", "ddim"),
    ("Beta", "beta"), ("Turbo", "turbo"),
)
SCHEDULE_TYPES: tuple[str, ...] = tuple(label for label, _ in _SCHEDULES)
SCHEDULE_IDS: Mapping[str, str] = MappingProxyType(dict(_SCHEDULES))  # label -> A1111's API id

# The k-diffusion samplers take every schedule type; diffusers' DDIM, kept for A1111's DDIM, only its spacing
# ("SGM Uniform" is "trailing"); PLMS, UniPC and LCM none.
# A1111's API ids for schedule types ("karras", "sgm_uniform") besides the labels, and its old "SGMUniform".
_SCHEDULE_IDS: dict[str, str] = {
    **{label.lower(): label for label in SCHEDULE_TYPES},
    **{api_id: label for label, api_id in _SCHEDULES},
    "sgmuniform": "SGM Uniform",
}

_ALL_TYPES = SCHEDULE_TYPES
_SPACING_ONLY = (AUTOMATIC, "SGM Uniform")
_AUTOMATIC_ONLY = (AUTOMATIC,)

K_DIFFUSION = "KDiffusionScheduler"  # Atelier's own scheduler class (pipelines.kscheduler), not a diffusers one
UNIPC = "UniPCScheduler"  # Atelier's A1111 UniPC (pipelines.unipc)
PLMS = "PLMSScheduler"  # Atelier's A1111 PLMS (pipelines.plms)
# Atelier's own schedulers: they hold an img2img run themselves (A1111's plan, see pipelines.strength)
OWN_SCHEDULERS = frozenset({K_DIFFUSION, UNIPC, PLMS})
# A1111's DDIM / PLMS timesteps: range(0, 1000, 1000 // steps) + 1, no clipping, alpha_T as trained.
_DDIM_TIMESTEPS = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}


class UnknownSamplerError(AtelierError, ValueError):
    """A sampler or schedule-type name is unknown, or the two do not go together.

    `field` is "sampler" or "schedule_type", so the API can point at the bad request field.
    """

    def __init__(self, message: str, field_name: str = "sampler") -> None:
        super().__init__(message, field_name)


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # A1111's label
    scheduler_class: str  # diffusers class name
    options: Mapping[str, object]  # constructor overrides that make it A1111's sampler
    aliases: tuple[str, ...] = ()
    schedule_types: tuple[str, ...] = _ALL_TYPES  # the ones this scheduler class can do
    automatic: str = AUTOMATIC  # what "Automatic" means for it (A1111's per-sampler default)


@dataclass(frozen=True)
class SamplerChoice:
    """A resolved sampler: what `make_scheduler` needs, and what infotext reports."""

    name: str  # canonical A1111 label, e.g. "DPM++ 2M"
    schedule_type: str  # resolved: "Automatic" only for samplers with no special default
    scheduler_class: str  # diffusers class name
    kwargs: dict[str, object] = field(default_factory=dict, hash=False)  # constructor overrides


def _spec(name: str, cls: str, options: Mapping[str, object], aliases: tuple[str, ...] = (),
          schedule_types: tuple[str, ...] = _ALL_TYPES, automatic: str = AUTOMATIC) -> SamplerSpec:
    return SamplerSpec(name, cls, MappingProxyType(dict(options)), aliases, schedule_types, automatic)



def _k(name: str, sampler: str, aliases: tuple[str, ...], automatic: str = AUTOMATIC,
       discard_penultimate: bool = False) -> SamplerSpec:
    """A k-diffusion sampler; ``discard_penultimate``: A1111 drops the next-to-last sigma for it."""
    return _spec(name, K_DIFFUSION, {"sampler": sampler, "discard_penultimate_sigma": discard_penultimate},
                 aliases, _ALL_TYPES, automatic)


# Ordered as in A1111's sampler dropdown. Aliases: A1111's k-diffusion ids and ComfyUI's ids, which API clients
# and other tools send. "Automatic" and "discard next-to-last sigma" are A1111's per-sampler options.
SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType({s.name: s for s in (
    _k("DPM++ 2M", "dpmpp_2m", ("k_dpmpp_2m", "dpmpp_2m"), "Karras"),
    _k("DPM++ SDE", "dpmpp_sde", ("k_dpmpp_sde", "dpmpp_sde"), "Karras"),
    _k("DPM++ 2M SDE", "dpmpp_2m_sde", ("k_dpmpp_2m_sde", "dpmpp_2m_sde"), "Exponential"),
    _k("DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun", ("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"), "Exponential"),
    _k("DPM++ 2S a", "dpmpp_2s_ancestral", ("k_dpmpp_2s_a", "dpmpp_2s_ancestral"), "Karras"),
    _k("DPM++ 3M SDE", "dpmpp_3m_sde", ("k_dpmpp_3m_sde", "dpmpp_3m_sde"), "Exponential", discard_penultimate=True),
    _k("Euler a", "euler_ancestral", ("k_euler_a", "k_euler_ancestral", "euler_ancestral", "euler_a")),
    _k("Euler", "euler", ("k_euler", "euler")),
    _k("LMS", "lms", ("k_lms", "lms")),
    _k("Heun", "heun", ("k_heun", "heun")),
    _k("DPM2", "dpm_2", ("k_dpm_2", "dpm_2"), "Karras", discard_penultimate=True),
    _k("DPM2 a", "dpm_2_ancestral", ("k_dpm_2_a", "dpm_2_ancestral"), "Karras", discard_penultimate=True),
    _k("DPM fast", "dpm_fast", ("k_dpm_fast", "dpm_fast")),
    _k("DPM adaptive", "dpm_adaptive", ("k_dpm_ad", "k_dpm_adaptive", "dpm_adaptive")),
    _k("Restart", "restart", ("restart", "k_restart"), "Karras"),
    _k("HeunPP2", "heunpp2", ("heunpp2", "k_heunpp2")),
    # A1111's timestep samplers (not k-diffusion): diffusers' schedulers with A1111's timesteps.
    _spec("DDIM", "DDIMScheduler", {**_DDIM_TIMESTEPS, "clip_sample": False, "thresholding": False},
          ("ddim",), _SPACING_ONLY),
    # A1111's PLMS (Atelier's PLMSScheduler), which ignores schedule types as A1111's does.
    _spec("PLMS", PLMS, {}, ("plms",), _AUTOMATIC_ONLY),
    # A1111's UniPC in continuous time (Atelier's UniPCScheduler) with A1111's option defaults: variant bh1,
    # time-uniform steps, order 3, lower order at the end. A1111's UniPC ignores schedule types.
    _spec("UniPC", UNIPC, {"variant": "bh1", "skip_type": "time_uniform", "solver_order": 3,
                           "lower_order_final": True}, ("unipc", "uni_pc"), _AUTOMATIC_ONLY),
    # LCM picks its own timesteps from its training schedule: schedule types do not apply.
    _spec("LCM", "LCMScheduler", {}, ("k_lcm", "lcm"), _AUTOMATIC_ONLY),
)})

# Names A1111 used before schedule types were separate (up to 1.8), and their old ids.
# Only those whose sampler exists here; others fail as unknown samplers.
_LEGACY_IDS: dict[str, tuple[str, str]] = {
    "k_dpmpp_2m_ka": ("DPM++ 2M", "Karras"),
    "k_dpmpp_sde_ka": ("DPM++ SDE", "Karras"),
    "k_dpmpp_2m_sde_ka": ("DPM++ 2M SDE", "Karras"),
    "k_dpmpp_2m_sde_exp": ("DPM++ 2M SDE", "Exponential"),
    "k_dpmpp_2m_sde_heun_ka": ("DPM++ 2M SDE Heun", "Karras"),
    "k_dpmpp_2m_sde_heun_exp": ("DPM++ 2M SDE Heun", "Exponential"),
    "k_lms_ka": ("LMS", "Karras"),
    "k_dpm_2_ka": ("DPM2", "Karras"),
    "k_dpm_2_a_ka": ("DPM2 a", "Karras"),
    "k_dpmpp_2s_a_ka": ("DPM++ 2S a", "Karras"),
    "k_dpmpp_3m_sde_ka": ("DPM++ 3M SDE", "Karras"),
    "k_dpmpp_3m_sde_exp": ("DPM++ 3M SDE", "Exponential"),
}

_BY_KEY: dict[str, str] = {}
for _s in SAMPLERS.values():
    for _key in (_s.name, *_s.aliases):
        _BY_KEY[_key.lower()] = _s.name


def canonical_sampler_name(name: str) -> str | None:
    """The A1111 label for a label or alias in any case ("k_euler_a" -> "Euler a"); None if unknown."""
    return _BY_KEY.get(name.strip().lower()) if isinstance(name, str) else None


def canonical_schedule_type(name: str | None) -> str | None:
    """The label for a schedule-type label or API id ("karras" -> "Karras"); empty means Automatic."""
    if name is None or not str(name).strip():
        return AUTOMATIC
    return _SCHEDULE_IDS.get(str(name).strip().lower())


def split_legacy_sampler_name(name: str) -> tuple[str, str | None]:
    """Split an old combined name: "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras").

    A name that already is a sampler (or has no schedule-type suffix) comes back whole with
    None. The sampler part is canonicalised when known and returned as written otherwise.
    """
    text = name.strip()
    if canonical_sampler_name(text) is not None:
        return canonical_sampler_name(text) or text, None
    legacy = _LEGACY_IDS.get(text.lower())
    if legacy is not None:
        return legacy
    lowered = text.lower()
    for label in SCHEDULE_TYPES[1:]:
        suffix = " " + label.lower()
        if lowered.endswith(suffix) and len(text) > len(suffix):
            base = text[: -len(suffix)].strip()
            return canonical_sampler_name(base) or base, label
    return text, None


def resolve_sampler(name: str, schedule_type: str = AUTOMATIC) -> SamplerChoice:
    """Turn user/API/infotext names into a `SamplerChoice`, or raise `UnknownSamplerError`.

    A schedule type embedded in a legacy name wins over `schedule_type`, as in A1111.
    """
    base, embedded = split_legacy_sampler_name(name if isinstance(name, str) else "")
    spec = SAMPLERS.get(base)
    if spec is None:
        raise UnknownSamplerError(f"Unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    wanted = embedded or canonical_schedule_type(schedule_type)
    if wanted is None:
        message = f"Unknown schedule type {schedule_type!r}; choose one of: {', '.join(SCHEDULE_TYPES)}"
        raise UnknownSamplerError(message, "schedule_type")
    if wanted not in spec.schedule_types:
        raise UnknownSamplerError(
            f"Schedule type {wanted!r} is not available for {spec.name}; choose one of: "
            f"{', '.join(spec.schedule_types)}",
            "schedule_type",
        )
    resolved = spec.automatic if wanted == AUTOMATIC else wanted
    return SamplerChoice(spec.name, resolved, spec.scheduler_class, _kwargs(spec, resolved))


def _kwargs(spec: SamplerSpec, schedule_type: str) -> dict[str, object]:
    kwargs = dict(spec.options)
    if spec.scheduler_class == K_DIFFUSION:
        kwargs["schedule_type"] = schedule_type
        return kwargs
    if schedule_type == "SGM Uniform":
        kwargs["timestep_spacing"] = "trailing"
    return kwargs
