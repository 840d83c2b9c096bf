"""A1111 sampler and schedule-type names, mapped to diffusers scheduler classes.

A pure table (no torch, no diffusers): the UI, the API and infotext parsing use it to list and
check names; `pipelines.schedulers.make_scheduler` turns a `SamplerChoice` into a scheduler.

The constructor overrides are the details that make a diffusers scheduler behave like
A1111's sampler of the same name (timestep spacing, solver variant, DDIM offsets). Anything
not overridden (beta schedule, prediction type, zero-SNR rescaling) comes from the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import AtelierError

AUTOMATIC = "Automatic"

# A1111's labels, in A1111's dropdown order, with the constructor change each one makes.
# Karras / Exponential / Beta are diffusers' sigma flags; SGM Uniform is "trailing" spacing.
SCHEDULE_TYPES: tuple[str, ...] = (AUTOMATIC, "Karras", "Exponential", "SGM Uniform", "Beta")

_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_FLAG_FOR: dict[str, str] = {
    "Karras": "use_karras_sigmas",
    "Exponential": "use_exponential_sigmas",
    "Beta": "use_beta_sigmas",
}

# A1111's API ids for schedule types ("karras", "sgm_uniform") besides the labels.
_SCHEDULE_IDS: dict[str, str] = {
    **{label.lower(): label for label in SCHEDULE_TYPES},
    "sgm_uniform": "SGM Uniform",
}

# Schedule types offered by a scheduler class that takes the sigma flags and honours
# "trailing" spacing, by one that only honours "trailing", and by one that takes neither.
_ALL_TYPES = SCHEDULE_TYPES
_SPACING_ONLY = (AUTOMATIC, "SGM Uniform")
_AUTOMATIC_ONLY = (AUTOMATIC,)

# k-diffusion (which A1111 uses) spaces sigmas evenly over the whole range, like "linspace";
# SDXL's shipped config says "leading", which skips the noisiest step, so it is overridden.
_LINSPACE = {"timestep_spacing": "linspace"}
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

    @property
    def takes_sigma_flags(self) -> bool:
        return "Karras" in self.schedule_types


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


_DPM_MULTISTEP = "DPMSolverMultistepScheduler"
_DPMPP_2M_SDE = {**_LINSPACE, "algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                 "lower_order_final": True, "euler_at_final": False, "use_lu_lambdas": False}

# Ordered as in A1111's sampler dropdown. Aliases: A1111's k-diffusion ids and ComfyUI's ids,
# which API clients and other tools send. "Automatic" defaults are A1111's per-sampler
# defaults (its samplers table): Karras for DPM++ 2M / SDE / DPM2, Exponential for the 2M SDEs.
SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType({s.name: s for s in (
    _spec("DPM++ 2M", _DPM_MULTISTEP,
          {**_LINSPACE, "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
           "lower_order_final": True, "euler_at_final": False, "use_lu_lambdas": False},
          ("k_dpmpp_2m", "dpmpp_2m"), automatic="Karras"),
    _spec("DPM++ SDE", "DPMSolverSDEScheduler", _LINSPACE, ("k_dpmpp_sde", "dpmpp_sde"), automatic="Karras"),
    _spec("DPM++ 2M SDE", _DPM_MULTISTEP, {**_DPMPP_2M_SDE, "solver_type": "midpoint"},
          ("k_dpmpp_2m_sde", "dpmpp_2m_sde"), automatic="Exponential"),
    _spec("DPM++ 2M SDE Heun", _DPM_MULTISTEP, {**_DPMPP_2M_SDE, "solver_type": "heun"},
          ("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"), automatic="Exponential"),
    _spec("Euler a", "EulerAncestralDiscreteScheduler", _LINSPACE,
          ("k_euler_a", "k_euler_ancestral", "euler_ancestral", "euler_a"), _SPACING_ONLY),
    _spec("Euler", "EulerDiscreteScheduler", _LINSPACE, ("k_euler", "euler")),
    _spec("LMS", "LMSDiscreteScheduler", _LINSPACE, ("k_lms", "lms")),
    _spec("Heun", "HeunDiscreteScheduler", _LINSPACE, ("k_heun", "heun")),
    _spec("DPM2", "KDPM2DiscreteScheduler", _LINSPACE, ("k_dpm_2", "dpm_2"), automatic="Karras"),
    _spec("DPM2 a", "KDPM2AncestralDiscreteScheduler", _LINSPACE, ("k_dpm_2_a", "dpm_2_ancestral"),
          automatic="Karras"),
    _spec("DDIM", "DDIMScheduler", {**_DDIM_TIMESTEPS, "clip_sample": False, "thresholding": False},
          ("ddim",), _SPACING_ONLY),
    _spec("PLMS", "PNDMScheduler", {**_DDIM_TIMESTEPS, "skip_prk_steps": True}, ("plms",), _SPACING_ONLY),
    # A1111's UniPC defaults: variant bh1, order 3, lower order at the end, predicting x0.
    _spec("UniPC", "UniPCMultistepScheduler",
          {**_LINSPACE, "solver_type": "bh1", "solver_order": 3, "lower_order_final": True,
           "predict_x0": True},
          ("unipc", "uni_pc")),
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
    if spec.takes_sigma_flags:
        # Set every flag: a model config that enables one must not combine with the chosen one.
        kwargs.update({flag: False for flag in _SIGMA_FLAGS})
        if schedule_type in _FLAG_FOR:
            kwargs[_FLAG_FOR[schedule_type]] = True
    if schedule_type == "SGM Uniform":
        kwargs["timestep_spacing"] = "trailing"
    return kwargs
