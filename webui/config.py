"""Frozen application settings: defaults < settings file < environment < command-line flags.

Pure: imports neither torch nor gradio, so it loads in milliseconds and tests run anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fileio import write_text_atomic

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Offload modes a user may force; "auto" lets the pipeline manager decide from free VRAM.
OFFLOAD_MODES = ("auto", "none", "model", "sequential")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def default_ram_cache_bytes(total_ram: int | None = None) -> int:
    """A RAM budget for cached checkpoints: a quarter of the machine's RAM, at least 2 GiB.

    A full SD 1.5 checkpoint in fp16 is about 2 GiB and SDXL about 7 GiB; a quarter of
    a 32 GiB machine keeps three SD 1.5 or one SDXL ready while leaving room for the rest.
    """
    if total_ram is None:
        try:
            total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total_ram = 16 * 2**30
    return max(2 * 2**30, total_ram // 4)


@dataclass(frozen=True)
class Settings:
    models_dir: Path = PROJECT_ROOT / "models"
    outputs_dir: Path = PROJECT_ROOT / "outputs"
    extensions_dir: Path = PROJECT_ROOT / "extensions"
    ckpt_dir: Path | None = None  # checkpoints elsewhere than models/Stable-diffusion (A1111's --ckpt-dir)
    lora_dir: Path | None = None  # default models/Lora (A1111's --lora-dir)
    embeddings_dir: Path | None = None  # default models/embeddings and embeddings/ (A1111's --embeddings-dir)
    settings_file: Path = PROJECT_ROOT / "settings.json"
    # Server
    host: str = "127.0.0.1"
    port: int = 7860
    autolaunch: bool = True
    # Engine
    device: str = "auto"
    precision: str = "auto"
    offload: str = "auto"
    ram_cache_bytes: int = field(default_factory=default_ram_cache_bytes)
    batch_mode: str = "auto"  # exact | fast | auto (see PipelineManager)
    preview_every_n_steps: int = 5
    # How final pictures are decoded from latents (A1111's sd_vae_decode_method): "Full" (the VAE) or "TAESD" (a
    # taesd decoder from models/VAE-approx when there is one for the model: much faster, slightly less detail)
    vae_decode_method: str = "Full"
    # Workers (docs/scaling.md): "" = one in-process worker on `device`; "cuda:0,cuda:1" or "cpu,cpu" = one per entry
    devices: str = ""
    ray: str = ""  # "" = no Ray; "auto" or a cluster address: every generation runs on Ray actors
    ray_workers: int = 0  # Ray actors to start; 0 = one per GPU in the cluster (one on CPU when it has none)
    worker_threads: int = 0  # torch CPU threads per Ray worker; 0 = torch's default
    default_checkpoint: str | None = None
    include_builtin: bool = True  # list the built-in demo model after the user's checkpoints
    # Extension install/update/uninstall from the UI even when other machines can reach the server
    enable_insecure_extension_access: bool = False
    # Users (comma-separated) who are the host on a signed-in studio: they see everyone's pictures in History and
    # may change model cards. Flags, environment or settings.json only; the page cannot change it.
    admin_users: str = ""
    # Failed sign-ins from one address before it must wait (doubling each time); 0 turns the wait off
    signin_failures_before_lockout: int = 5
    # Generation defaults
    default_sampler: str = "Euler a"
    default_steps: int = 20
    default_size: int | None = None  # None: the model's native size
    save_format: str = "png"
    filename_pattern: str = "[number]-[seed]"  # [number] [seed] [prompt_words] [model_name] [date]
    save_images: bool = True  # UI jobs save their pictures (A1111's samples_save)
    save_per_user_folders: bool = False  # signed-in users' pictures under outputs/<user>/ (the host's stay put)
    save_images_before_highres_fix: bool = False  # hires fix also saves its first pass (A1111's option)
    default_clip_skip: int = 1  # the top bar's clip skip at start, and API jobs' (A1111's CLIP_stop_at_last_layers)
    default_vae: str = "Automatic"  # likewise for the VAE (A1111's sd_vae)
    # A1111's options that change pictures: "Original" | "No norm" | "None"; "CPU" | "GPU" | "NV" (A1111's default is
    # GPU; CPU keeps a seed's picture the same on every device); the per-step noise's seed offset (ENSD)
    emphasis: str = "Original"
    randn_source: str = "CPU"
    eta_noise_seed_delta: int = 0
    # A1111's img2img_fix_steps: "With img2img, do exactly the amount of steps the slider specifies"
    img2img_fix_steps: bool = False
    # A1111's UniPC options (the UniPC sampler only): the B(h) variant, how its steps are spaced, the solver's
    # order (capped at the step count) and whether the last steps lower it
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    upscaler_tile_size: int = 192  # upscaler models run on tiles this big (pixels); 0 = the whole picture at once
    controlnet_unit_count: int = 3  # ControlNet units in each generation tab (1..10; the page reads it at start)

    @property
    def checkpoints_dir(self) -> Path:
        return self.ckpt_dir or self.models_dir / "Stable-diffusion"

    @property
    def loras_dir(self) -> Path:
        return self.lora_dir or self.models_dir / "Lora"

    @property
    def embedding_dirs(self) -> list[Path]:
        """models/embeddings, and embeddings/ beside models/ where A1111 keeps them."""
        if self.embeddings_dir is not None:
            return [self.embeddings_dir]
        return [self.models_dir / "embeddings", self.models_dir.parent / "embeddings"]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_PATH_FIELDS = {f.name for f in dataclasses.fields(Settings) if "Path" in str(f.type)}
_ENV_PREFIX = "ATELIER_"


_CHOICES = {"offload": OFFLOAD_MODES, "precision": PRECISIONS, "device": DEVICES,
            "batch_mode": ("auto", "exact", "fast"), "save_format": ("png", "jpg", "jpeg", "webp")}


def _coerce(name: str, value: Any) -> Any:
    """Turn a JSON/env value into the type the Settings field holds; refuse values outside a field's choices."""
    if name in _CHOICES:
        value = str(value).strip().lower()
        if value not in _CHOICES[name]:
            raise ValueError(f"{name} must be one of {', '.join(_CHOICES[name])}")
        return value
    if name == "default_size":
        return None if value in (None, "", 0, "0") else int(value)
    current = getattr(Settings(), name)
    if name in _PATH_FIELDS:
        return Path(value).expanduser()
    if isinstance(current, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not a whole number")
        return int(value)
    if value is None or current is None:
        return value
    return type(current)(value)


def _apply(settings: Settings, values: Mapping[str, Any], source: str) -> Settings:
    known = {f.name for f in dataclasses.fields(Settings)}
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if name not in known:
            log.warning("Ignoring unknown setting %r from %s", name, source)
            continue
        try:
            changes[name] = _coerce(name, value)
        except (TypeError, ValueError):
            log.warning("Ignoring setting %s=%r from %s: wrong type", name, value, source)
    return settings.replace(**changes)


def read_settings_file(path: Path) -> dict[str, Any]:
    """Read the JSON settings file; a corrupt one is moved aside so it is not lost, and defaults are used."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return data
    except (OSError, ValueError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, aside)
        except OSError:
            aside = path
        log.warning("Settings file %s is unreadable (%s); kept as %s, using defaults", path, exc, aside)
        return {}


def load_settings(overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from defaults, then the settings file, then ATELIER_* environment, then overrides."""
    env = os.environ if env is None else env
    overrides = dict(overrides or {})
    settings = Settings()
    settings_file = Path(
        overrides.get("settings_file") or env.get(_ENV_PREFIX + "SETTINGS_FILE") or settings.settings_file
    )
    settings = settings.replace(settings_file=settings_file)
    settings = _apply(settings, read_settings_file(settings_file), str(settings_file))
    from_env = {
        name: env[_ENV_PREFIX + name.upper()]
        for name in (f.name for f in dataclasses.fields(Settings))
        if _ENV_PREFIX + name.upper() in env
    }
    settings = _apply(settings, from_env, "environment")
    return _apply(settings, {k: v for k, v in overrides.items() if v is not None}, "command line")


VAE_DECODE_METHODS = ("Full", "TAESD")
# A1111's UniPC option values that Atelier runs (A1111 also offers the experimental variant "vary_coeff")
UNI_PC_VARIANTS = ("bh1", "bh2")
UNI_PC_SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")
UNI_PC_MAX_ORDER = 50  # A1111's slider

# What the Settings tab may change and save; folders and the server address stay with flags and the file.
EDITABLE = ("outputs_dir", "ram_cache_bytes", "offload", "preview_every_n_steps", "default_sampler",
            "default_steps", "default_size", "save_format", "filename_pattern", "save_images", "default_clip_skip",
            "emphasis", "randn_source", "eta_noise_seed_delta", "img2img_fix_steps",
            "uni_pc_variant", "uni_pc_skip_type", "uni_pc_order", "uni_pc_lower_order_final",
            "default_vae", "upscaler_tile_size", "save_images_before_highres_fix", "save_per_user_folders",
            "vae_decode_method", "controlnet_unit_count")


def check_changes(settings: Settings, changes: Mapping[str, Any]) -> tuple[Settings, dict[str, Any]]:
    """(the new Settings, the values as stored) for ``changes``, without saving anything.

    Raises ValueError naming the first bad field."""
    coerced: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in EDITABLE:
            raise ValueError(f"{name} cannot be changed here")
        try:
            coerced[name] = _coerce(name, value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from exc
    updated = settings.replace(**coerced)
    _validate(updated)
    return updated, coerced


def save_settings(settings: Settings, changes: Mapping[str, Any]) -> Settings:
    """Validate ``changes``, merge them into the settings file atomically and return the new Settings.

    Raises ValueError naming the first bad field; the file is untouched then. Keys already in the file
    that are not changed are kept as they are.
    """
    updated, coerced = check_changes(settings, changes)
    path = settings.settings_file
    stored = read_settings_file(path)
    stored.update({k: str(v) if isinstance(v, Path) else v for k, v in coerced.items()})
    write_text_atomic(path, json.dumps(stored, indent=2, sort_keys=True))
    return updated


def uni_pc_problem(variant: object, skip_type: object, order: object) -> tuple[str, str] | None:
    """(the UniPC option, what is wrong with it) for A1111's UniPC options, or None when they are fine.

    Shared by the settings and the per-job request, so both refuse the same values with the same words."""
    if variant == "vary_coeff":
        return "uni_pc_variant", "vary_coeff (A1111's experimental variant) is not available in Atelier; " \
            "choose bh1 or bh2"
    if variant not in UNI_PC_VARIANTS:
        return "uni_pc_variant", f"must be one of {', '.join(UNI_PC_VARIANTS)}"
    if skip_type not in UNI_PC_SKIP_TYPES:
        return "uni_pc_skip_type", f"must be one of {', '.join(UNI_PC_SKIP_TYPES)}"
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= UNI_PC_MAX_ORDER:
        return "uni_pc_order", f"must be a whole number between 1 and {UNI_PC_MAX_ORDER}"
    return None


def _validate(settings: Settings) -> None:
    if not 1 <= settings.default_steps <= 150:
        raise ValueError("default_steps must be between 1 and 150")
    if settings.default_size is not None and (not 64 <= settings.default_size <= 4096 or settings.default_size % 8):
        raise ValueError("default_size must be a multiple of 8 between 64 and 4096")
    if settings.emphasis not in ("Original", "No norm", "None"):
        raise ValueError("emphasis must be Original, No norm or None")
    if settings.randn_source not in ("GPU", "CPU", "NV"):
        raise ValueError("randn_source must be GPU, CPU or NV")
    if not 0 <= settings.eta_noise_seed_delta < 2**32:
        raise ValueError("eta_noise_seed_delta must be between 0 and 4294967295")
    problem = uni_pc_problem(settings.uni_pc_variant, settings.uni_pc_skip_type, settings.uni_pc_order)
    if problem:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    if not 1 <= settings.default_clip_skip <= 12:
        raise ValueError("default_clip_skip must be between 1 and 12")
    if not settings.default_vae.strip():
        raise ValueError('default_vae must be "Automatic", "None" or a file name in models/VAE')
    if settings.vae_decode_method not in VAE_DECODE_METHODS:
        raise ValueError("vae_decode_method must be Full or TAESD")
    if settings.preview_every_n_steps < 0:
        raise ValueError("preview_every_n_steps must be 0 (off) or more")
    if settings.upscaler_tile_size != 0 and not 32 <= settings.upscaler_tile_size <= 4096:
        raise ValueError("upscaler_tile_size must be 0 (no tiles) or between 32 and 4096")
    if not 1 <= settings.controlnet_unit_count <= 10:
        raise ValueError("controlnet_unit_count must be between 1 and 10")
    if settings.ram_cache_bytes < 0:
        raise ValueError("ram_cache_bytes must not be negative")
    if not settings.filename_pattern.strip() or "/" in settings.filename_pattern:
        raise ValueError("filename_pattern must be a file name such as [number]-[seed] (no folders)")
