"""Tell which Stable Diffusion architecture a checkpoint holds from tensor names and shapes alone.

Pure Python (no torch): works on a safetensors header or on the key/shape table of a
state dict, so the model list can classify files without reading their weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .ldm_layout import UNET_PREFIX

CONFIG_METADATA_KEY = "atelier.config"

# Architecture ids; each has a config folder under webui/models/configs/.
SD1, SD1_INPAINT = "sd1", "sd1-inpaint"
SD2, SD2_V, SD2_INPAINT = "sd2", "sd2-v", "sd2-inpaint"
SDXL, SDXL_INPAINT = "sdxl", "sdxl-inpaint"

NATIVE_SIZES = {SD1: 512, SD1_INPAINT: 512, SD2: 512, SD2_V: 768, SD2_INPAINT: 512, SDXL: 1024, SDXL_INPAINT: 1024}
FAMILY = {SD1: "SD 1.x", SD1_INPAINT: "SD 1.x", SD2: "SD 2.x", SD2_V: "SD 2.x", SD2_INPAINT: "SD 2.x",
          SDXL: "SDXL", SDXL_INPAINT: "SDXL"}

_CROSS_ATTN_KEY = re.compile(re.escape(UNET_PREFIX) + r".*\.attn2\.to_k\.weight$")


class UnknownArchitectureError(ValueError):
    """The file is readable but is not a Stable Diffusion checkpoint we can load."""


# How an SD 2.x file's parameterisation was decided (Detection.prediction_from): a hint, the weights, or
# not yet. Undecided files are taken as 768-v (most SD 2.x files shared are) until the loader has run
# their UNet once (models/parameterization.py).
UNDECIDED = "undecided"
FROM_WEIGHTS = "the weights"


@dataclass(frozen=True)
class Detection:
    arch: str
    # Component configs carried inside the file (tiny test models, the built-in demo model).
    embedded_config: dict[str, Any] | None = None
    # SD 2.x (not inpainting) only: where epsilon vs v-prediction came from, e.g. "the file name".
    prediction_from: str | None = None

    @property
    def prediction_undecided(self) -> bool:
        return self.prediction_from == UNDECIDED

    @property
    def prediction_type(self) -> str:
        """The scheduler's prediction_type for this model."""
        return "v_prediction" if self.arch == SD2_V else "epsilon"

    def decided(self, v_prediction: bool, source: str) -> Detection:
        """This SD 2.x detection with its parameterisation settled by `source`."""
        return replace(self, arch=SD2_V if v_prediction else SD2, prediction_from=source)

    def describe(self) -> str:
        """What the model list shows, e.g. "SD 2.x, v-prediction (768), decided from the weights"."""
        text = FAMILY[self.arch]
        if self.is_inpaint:
            return text + ", inpainting"
        if self.prediction_from is None:
            return text
        if self.prediction_undecided:
            return text + ", epsilon or v-prediction: decided from the weights when first loaded"
        kind = "v-prediction" if self.arch == SD2_V else "epsilon"
        return f"{text}, {kind} ({self.native_size}), decided from {self.prediction_from}"

    @property
    def is_sdxl(self) -> bool:
        return self.arch.startswith("sdxl")

    @property
    def is_inpaint(self) -> bool:
        return self.arch.endswith("inpaint")

    @property
    def native_size(self) -> int:
        if self.embedded_config and "native_size" in self.embedded_config:
            return int(self.embedded_config["native_size"])
        if self.embedded_config and "unet" in self.embedded_config:
            vae_blocks = len(self.embedded_config.get("vae", {}).get("block_out_channels", [0, 0, 0, 0]))
            sample = self.embedded_config["unet"].get("sample_size", 64)
            return int(sample) * 2 ** max(vae_blocks - 1, 0)
        return NATIVE_SIZES[self.arch]


def _embedded_config(metadata: Mapping[str, str], name: str) -> dict[str, Any] | None:
    raw = metadata.get(CONFIG_METADATA_KEY)
    if raw is None:
        return None
    try:
        config = json.loads(raw)
        if not isinstance(config, dict) or config.get("arch") not in NATIVE_SIZES or "unet" not in config:
            raise ValueError("missing arch or unet")
        _check_embedded_sizes(config)
    except ValueError as exc:
        raise UnknownArchitectureError(f"{name}: the embedded model config is unreadable ({exc})") from exc
    return config


# A file's embedded config decides buffer sizes before any weight is read; keep a downloaded file from
# asking for absurd ones. The real CLIP tokenizer is always used, so its vocabulary and length are fixed.
_MAX_WIDTH = 4096


def _check_embedded_sizes(config: Mapping[str, Any]) -> None:
    for name in ("text_encoder", "text_encoder_2"):
        te = config.get(name)
        if te is None:
            continue
        if te.get("vocab_size") != 49408 or te.get("max_position_embeddings") != 77:
            raise ValueError(f"{name} must use the CLIP tokenizer (49408 tokens, 77 positions)")
        if not 0 < int(te.get("hidden_size", 0)) <= _MAX_WIDTH:
            raise ValueError(f"{name} hidden_size out of range")
    for name in ("unet", "vae"):
        widths = (config.get(name) or {}).get("block_out_channels") or []
        if len(widths) > 6 or any(not 0 < int(w) <= _MAX_WIDTH for w in widths):
            raise ValueError(f"{name} block_out_channels out of range")
    if int(config["unet"].get("sample_size", 64)) > 256:
        raise ValueError("unet sample_size out of range")


def _prediction_hint(
    path: Path | None, metadata: Mapping[str, str], shapes: Mapping[str, Any], embedded: Mapping[str, Any] | None
) -> tuple[bool, str] | None:
    """(v-prediction?, where that came from) from the hints users and trainers leave, strongest first;
    None when there is none and the weights must tell."""
    if "v_pred" in shapes:  # A1111's marker key for v-prediction SDXL/SD2 files
        return True, "the file's v_pred marker"
    pred = (metadata.get("modelspec.prediction_type") or "").lower()
    if pred:
        return pred.startswith("v"), "the file's metadata"
    if path is not None:
        sidecar = path.with_suffix(".yaml")
        if sidecar.is_file():
            try:
                text = sidecar.read_text(encoding="utf-8", errors="replace")[:100_000]
            except OSError:
                text = ""
            return bool(re.search(r"parameterization:\s*[\"']?v[\"']?\s*$", text, re.M)), sidecar.name
    scheduler = (embedded or {}).get("scheduler") or {}
    if "prediction_type" in scheduler:
        return str(scheduler["prediction_type"]).startswith("v"), "the file's embedded config"
    if path is not None:
        stem = path.stem.lower()
        if re.search(r"v[-_]?pred|768[-_]?v|\bv\b", stem):
            return True, "the file name"
        if re.search(r"base|512", stem):
            return False, "the file name"
    return None


def _sd2(
    arch: str, path: Path | None, metadata: Mapping[str, str], shapes: Mapping[str, Any],
    embedded: dict[str, Any] | None = None,
) -> Detection:
    if arch == SD2_INPAINT:
        return Detection(arch, embedded)
    hint = _prediction_hint(path, metadata, shapes, embedded)
    if hint is None:
        return Detection(SD2_V, embedded, prediction_from=UNDECIDED)
    return Detection(SD2_V if hint[0] else SD2, embedded, prediction_from=hint[1])


def detect_architecture(
    shapes: Mapping[str, tuple[int, ...] | Any],
    metadata: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Detection:
    """`shapes` maps tensor names to shapes (tuples or anything with `.shape`)."""
    metadata = metadata or {}
    name = path.name if path is not None else "checkpoint"

    def shape(key: str) -> tuple[int, ...] | None:
        value = shapes.get(key)
        if value is None:
            return None
        return tuple(getattr(value, "shape", value))

    embedded = _embedded_config(metadata, name)
    if embedded is not None:
        if embedded["arch"] in (SD2, SD2_V, SD2_INPAINT):
            return _sd2(embedded["arch"], path, metadata, shapes, embedded)
        return Detection(embedded["arch"], embedded)

    unet_keys = [k for k in shapes if k.startswith(UNET_PREFIX)]
    if not unet_keys:
        raise UnknownArchitectureError(f"{name}: not a Stable Diffusion checkpoint ({_guess_kind(shapes)})")
    first_conv = shape(UNET_PREFIX + "input_blocks.0.0.weight")
    in_channels = first_conv[1] if first_conv and len(first_conv) == 4 else 4
    inpaint = in_channels == 9
    if in_channels not in (4, 9):
        raise UnknownArchitectureError(f"{name}: UNet with {in_channels} input channels is not supported")

    context_dims = {dims[1] for k in unet_keys if _CROSS_ATTN_KEY.match(k) and len(dims := shape(k) or ()) == 2}
    is_xl = UNET_PREFIX + "label_emb.0.0.weight" in shapes or any(
        k.startswith("conditioner.embedders.1.") for k in shapes
    )
    if is_xl:
        if not any(k.startswith("conditioner.embedders.0.transformer.") for k in shapes):
            raise UnknownArchitectureError(f"{name}: SDXL refiner checkpoints are not supported yet")
        return Detection(SDXL_INPAINT if inpaint else SDXL)
    if 1024 in context_dims or any(k.startswith("cond_stage_model.model.") for k in shapes):
        return _sd2(SD2_INPAINT if inpaint else SD2, path, metadata, shapes)
    if context_dims and context_dims != {768}:
        raise UnknownArchitectureError(f"{name}: unknown UNet (cross-attention width {sorted(context_dims)})")
    return Detection(SD1_INPAINT if inpaint else SD1)


def _guess_kind(shapes: Mapping[str, Any]) -> str:
    keys = list(shapes)
    if any(k.startswith(("lora_unet_", "lora_te", "lora.")) or ".lora_down." in k or "lora_A" in k for k in keys):
        return "it looks like a LoRA: put it in models/Lora"
    if any(k.startswith(("encoder.down", "decoder.up")) for k in keys):
        return "it looks like a VAE: put it in models/VAE"
    if "string_to_param" in keys or "emb_params" in keys or "clip_l" in keys:
        return "it looks like a textual-inversion embedding: put it in models/embeddings"
    return "no model.diffusion_model.* UNet tensors"
