"""Separate VAE files: which one a job uses ("Automatic", "None" or a file in models/VAE/) and loading it.

A1111's VAE files hold the autoencoder alone in the original layout (``encoder.*``, ``decoder.*``,
``quant_conv.*``; sometimes under ``first_stage_model.``); diffusers-named files are accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AtelierError

AUTOMATIC = "Automatic"  # name.vae.* next to the checkpoint if there is one, else the checkpoint's own
NONE = "None"  # always the checkpoint's own VAE
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")


class VaeNotFoundError(AtelierError, LookupError):
    """The chosen VAE is not in the VAE folder."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "vae")


@dataclass(frozen=True)
class VaeFile:
    name: str  # file name relative to the VAE folder, e.g. "sdxl_vae.safetensors"
    path: Path


def list_vaes(vae_dir: Path) -> list[VaeFile]:
    if not vae_dir.is_dir():
        return []
    files = [p for p in vae_dir.rglob("*") if p.is_file() and p.suffix.lower() in VAE_SUFFIXES
             and not p.name.startswith(".")]
    return [VaeFile(p.relative_to(vae_dir).as_posix(), p) for p in sorted(files, key=lambda p: str(p).lower())]


def automatic_vae(checkpoint_path: Path) -> VaeFile | None:
    """A1111's rule: ``model.vae.safetensors`` (or .pt/.ckpt) beside ``model.safetensors``."""
    if not checkpoint_path.is_file():
        return None
    stem = checkpoint_path.name[: -len(checkpoint_path.suffix)] if checkpoint_path.suffix else checkpoint_path.name
    for suffix in VAE_SUFFIXES:
        candidate = checkpoint_path.with_name(f"{stem}.vae{suffix}")
        if candidate.is_file():
            return VaeFile(candidate.name, candidate)
    return None


def resolve_vae(choice: str | None, vae_dir: Path, checkpoint_path: Path) -> VaeFile | None:
    """The file a job's VAE choice names, or None for the checkpoint's own VAE."""
    if not choice or choice == AUTOMATIC:
        return automatic_vae(checkpoint_path)
    if choice == NONE:
        return None
    files = list_vaes(vae_dir)
    for match in (lambda f: f.name == choice, lambda f: f.path.name == choice,
                  lambda f: f.path.stem == choice or f.path.name.split(".")[0] == choice):
        found = [f for f in files if match(f)]
        if len(found) == 1:
            return found[0]
    names = ", ".join(f.name for f in files) or f"none in {vae_dir}"
    raise VaeNotFoundError(f"VAE {choice!r} not found (available: {names})")


def vae_state_dict(tensors: dict[str, Any], config: dict[str, Any], name: str) -> dict[str, Any]:
    """The VAE's tensors under diffusers' names, whatever layout the file used."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from .loader import CheckpointLoadError

    if any(".down_blocks." in k or k.startswith("decoder.up_blocks.") for k in tensors):
        return {k.removeprefix("vae."): v for k, v in tensors.items()}
    if not any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in tensors):
        raise CheckpointLoadError(f"{name}: not a VAE (no encoder/decoder tensors)")
    try:
        return convert_ldm_vae_checkpoint(tensors, config)
    except (KeyError, IndexError, RuntimeError) as exc:
        raise CheckpointLoadError(f"{name}: tensors do not match a VAE layout ({exc})") from exc


def load_vae(vae: VaeFile, config: dict[str, Any], dtype: Any) -> Any:
    """An AutoencoderKL shaped like the checkpoint's own (``config``) holding the file's weights."""
    from diffusers import AutoencoderKL

    from .loader import instantiate_module, read_checkpoint_file

    tensors, _ = read_checkpoint_file(vae.path, dtype)
    state = vae_state_dict(tensors, config, vae.name)
    return instantiate_module(lambda: AutoencoderKL.from_config(config), state, dtype, "VAE", vae.name)
