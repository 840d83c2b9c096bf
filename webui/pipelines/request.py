"""One request schema shared by the UI, the REST API, the CLI and extensions.

Pure data: no torch, no gradio. Images are PIL images (or None); everything else is
plain Python so a request can be logged, compared and turned into infotext.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..errors import AtelierError


class Task(str, enum.Enum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


class ResizeMode(str, enum.Enum):
    """How an init image is fitted to the requested size (A1111's names and order)."""

    JUST_RESIZE = "Just resize"
    CROP_AND_RESIZE = "Crop and resize"
    RESIZE_AND_FILL = "Resize and fill"


class MaskedContent(str, enum.Enum):
    """What the masked area starts from before denoising (A1111's inpainting_fill 0..3)."""

    FILL = "fill"
    ORIGINAL = "original"
    LATENT_NOISE = "latent noise"
    LATENT_NOTHING = "latent nothing"


class InpaintArea(str, enum.Enum):
    WHOLE_PICTURE = "Whole picture"
    ONLY_MASKED = "Only masked"


# Limits that keep one request from exhausting the machine; the API reports them as 422.
MAX_STEPS = 150
MAX_SIDE = 4096
MIN_SIDE = 64
MAX_BATCH_SIZE = 16
MAX_BATCH_COUNT = 100
MAX_SEED = 2**32 - 1


class RequestError(AtelierError, ValueError):
    """A request field is out of range or malformed; `field` names it for UI and API."""

    field: str

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}", field_name)
        self.message = message  # without the field name, for the API's per-field detail


@dataclass
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    checkpoint: str | None = None  # title, file name or stem; None = the loaded/default model
    sampler: str = "Euler a"
    schedule_type: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    batch_count: int = 1
    batch_size: int = 1
    clip_skip: int = 1
    vae: str = "Automatic"  # "Automatic", "None" or a file in models/VAE/
    # img2img / inpaint
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    # inpaint
    mask: Image.Image | None = None
    mask_blur: int = 4
    masked_content: MaskedContent = MaskedContent.ORIGINAL
    inpaint_area: InpaintArea = InpaintArea.WHOLE_PICTURE
    inpaint_padding: int = 32
    mask_invert: bool = False
    # output
    save_images: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> Task:
        if self.init_image is None:
            return Task.TXT2IMG
        return Task.INPAINT if self.mask is not None else Task.IMG2IMG

    @property
    def image_count(self) -> int:
        return self.batch_count * self.batch_size

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise RequestError naming the first bad field."""
        _check_int_range("steps", self.steps, 1, MAX_STEPS)
        _check_int_range("width", self.width, MIN_SIDE, MAX_SIDE)
        _check_int_range("height", self.height, MIN_SIDE, MAX_SIDE)
        if self.width % 8 or self.height % 8:
            raise RequestError("width" if self.width % 8 else "height", "must be a multiple of 8")
        _check_int_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_int_range("batch_count", self.batch_count, 1, MAX_BATCH_COUNT)
        _check_int_range("clip_skip", self.clip_skip, 1, 12)
        if not isinstance(self.seed, int) or not (self.seed == -1 or 0 <= self.seed <= MAX_SEED):
            raise RequestError("seed", f"must be -1 (random) or between 0 and {MAX_SEED}")
        if not _finite(self.cfg_scale) or not 0.0 <= self.cfg_scale <= 30.0:
            raise RequestError("cfg_scale", "must be a number between 0 and 30")
        if not _finite(self.denoising_strength) or not 0.0 <= self.denoising_strength <= 1.0:
            raise RequestError("denoising_strength", "must be between 0 and 1")
        _check_int_range("mask_blur", self.mask_blur, 0, 64)
        _check_int_range("inpaint_padding", self.inpaint_padding, 0, 256)
        if self.mask is not None and self.init_image is None:
            raise RequestError("mask", "a mask needs an init image")
        if self.task is not Task.TXT2IMG and int(self.steps * self.denoising_strength) < 1:
            raise RequestError("denoising_strength", f"too low for {self.steps} steps: no denoising step would run")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _check_int_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(name, f"must be a whole number between {low} and {high}")
