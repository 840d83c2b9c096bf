"""Which offload mode keeps a job inside the GPU's memory: a pure decision, unit-tested by numbers.

none:        every component stays on the GPU (fastest).
model:       one component at a time on the GPU (diffusers' model CPU offload); UNet-sized peak.
sequential:  weights stream to the GPU layer by layer; smallest peak, much slower.
VAE tiling is added for large images, whose decode needs more memory than a UNet step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

GiB = 2**30

# Room kept free for the CUDA context, cuDNN workspaces and fragmentation (measure on a GPU and update).
RESERVE_BYTES = int(0.75 * GiB)
# Rough activation peak of a UNet step per latent pixel per image in the batch (fp16, with CFG, SDP attention):
# ~0.4 GiB for SD 1.5 at 512² (64² latents), ~1.5 GiB for SDXL at 1024². An estimate until measured on a GPU.
UNET_ACTIVATION_BYTES_PER_LATENT_PIXEL = 96 * 1024
# VAE decode peak per output pixel per image (fp16, untiled): SD's decoder runs 128-512 channels at full size.
VAE_DECODE_BYTES_PER_PIXEL = 3 * 1024
# Above this, decode in tiles whatever the budget: the untiled decode's peak grows with the picture.
VAE_TILING_PIXELS = 1536 * 1536


class OffloadMode(str, enum.Enum):
    NONE = "none"
    MODEL = "model"
    SEQUENTIAL = "sequential"


_ORDER = [OffloadMode.NONE, OffloadMode.MODEL, OffloadMode.SEQUENTIAL]


@dataclass(frozen=True)
class OffloadPlan:
    mode: OffloadMode
    vae_tiling: bool = False
    reason: str = ""


@dataclass(frozen=True)
class MemoryNeeds:
    model_bytes: int  # all components on the device
    largest_component_bytes: int  # the UNet, in practice
    width: int
    height: int
    batch_size: int

    @property
    def unet_activation_bytes(self) -> int:
        latent_pixels = (self.width // 8) * (self.height // 8)
        return latent_pixels * self.batch_size * UNET_ACTIVATION_BYTES_PER_LATENT_PIXEL

    @property
    def vae_decode_bytes(self) -> int:
        # diffusers decodes the whole batch in one call
        return self.width * self.height * self.batch_size * VAE_DECODE_BYTES_PER_PIXEL


def choose_offload(
    needs: MemoryNeeds, vram_free: int | None, forced: str | None = None
) -> OffloadPlan:
    """Pick the lightest offload that fits `vram_free` bytes; None means no accelerator (nothing to plan).

    `forced` is a user override: "none" / "model" / "sequential", or A1111's "medvram" / "lowvram".
    """
    tiling = needs.width * needs.height > VAE_TILING_PIXELS
    forced_mode = {"medvram": "model", "lowvram": "sequential"}.get(forced or "", forced)
    if forced_mode and forced_mode != "auto":
        mode = OffloadMode(forced_mode)
        tight = vram_free is not None and needs.vae_decode_bytes + RESERVE_BYTES > vram_free
        return OffloadPlan(mode, tiling or tight, f"forced by setting ({forced})")
    if vram_free is None:
        return OffloadPlan(OffloadMode.NONE, False, "no accelerator")

    usable = vram_free - RESERVE_BYTES
    working = max(needs.unet_activation_bytes, needs.vae_decode_bytes if not tiling else 0)
    if needs.model_bytes + working <= usable:
        mode, why = OffloadMode.NONE, "the whole model fits"
    elif needs.largest_component_bytes + needs.unet_activation_bytes <= usable:
        mode, why = OffloadMode.MODEL, "the model does not fit at once; its largest part does"
    else:
        mode, why = OffloadMode.SEQUENTIAL, "not even the UNet fits; streaming weights layer by layer"
    # Tile the VAE when its untiled decode would not fit beside what stays resident.
    resident = needs.model_bytes if mode is OffloadMode.NONE else 0
    if not tiling and resident + needs.vae_decode_bytes > usable:
        tiling = True
    return OffloadPlan(mode, tiling, why)


def step_up(plan: OffloadPlan) -> OffloadPlan | None:
    """The next more frugal plan after an out-of-memory error, or None if there is none.

    Each step both tiles the VAE and moves to the next offload mode (retries are expensive).
    """
    index = _ORDER.index(plan.mode)
    if index + 1 < len(_ORDER):
        nxt = _ORDER[index + 1]
        return OffloadPlan(nxt, True, f"out of memory: stepping up to {nxt.value} offload")
    if not plan.vae_tiling:
        return replace(plan, vae_tiling=True, reason="out of memory: tiling the VAE")
    return None
