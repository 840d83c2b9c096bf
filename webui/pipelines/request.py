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

from ..config import uni_pc_problem
from ..controlnet.units import ControlUnit
from ..errors import AtelierError
from .strength import too_few_steps


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
MAX_HR_SCALE = 8.0
MAX_OUTPAINT = 1024
EMPHASIS_MODES = ("Original", "No norm", "None")  # A1111's, default first (as webui.pipelines.conditioning)
RNG_SOURCES = ("GPU", "CPU", "NV")  # A1111's (as webui.pipelines.rng)


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
    # A1111's settings that change the picture, per job (defaults from the Settings): emphasis mode, the
    # random number generator source, and the eta noise seed delta (ENSD) of the per-step noise
    emphasis: str = "Original"
    rng: str = "CPU"
    eta_noise_seed_delta: int = 0
    # A1111's img2img_fix_steps: img2img runs exactly ``steps`` (on a longer schedule) instead of steps x strength
    img2img_fix_steps: bool = False
    # A1111's UniPC options (the UniPC sampler only; defaults from the Settings): variant bh1 | bh2, skip type
    # time_uniform | time_quadratic | logSNR, solver order (capped at the steps run), lower order final
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    # variation seeds (A1111's subseed): noise slerped toward the variation seed's by subseed_strength
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0  # 0: off; else the noise is drawn at this size and centred
    seed_resize_from_h: int = 0
    # hires fix (txt2img): a second pass as img2img at a larger size; denoising_strength is its strength
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0  # 0 and 0: scale by hr_scale
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0: as many as the first pass
    hr_sampler: str | None = None  # None: the first pass's
    hr_schedule_type: str | None = None
    hr_prompt: str = ""  # "": the first pass's
    hr_negative_prompt: str = ""
    hr_cfg_scale: float | None = None
    hr_checkpoint: str | None = None
    # refiner (A1111 1.6): the last steps of the last pass run on this checkpoint; switch_at is the fraction
    # of that pass's steps made before the switch (1: never)
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8
    save_first_pass: bool = False  # also save the first pass's picture (A1111's save_images_before_highres_fix)
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
    # outpainting (img2img / inpaint): extend the canvas by this many pixels on each side and paint them
    outpaint_left: int = 0
    outpaint_right: int = 0
    outpaint_top: int = 0
    outpaint_bottom: int = 0
    # ControlNet units (webui/controlnet): several may guide one job
    controlnet_units: list[ControlUnit] = field(default_factory=list)
    # output
    save_images: bool = True
    user: str | None = None  # the signed-in user who asked: recorded in the saved files (None: the host)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> Task:
        if self.init_image is None:
            return Task.TXT2IMG
        return Task.INPAINT if self.mask is not None else Task.IMG2IMG

    @property
    def image_count(self) -> int:
        return self.batch_count * self.batch_size

    @property
    def outpaint(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) pixels to add around the picture."""
        return self.outpaint_left, self.outpaint_right, self.outpaint_top, self.outpaint_bottom

    @property
    def hires(self) -> bool:
        """Whether this job makes a hires-fix second pass (txt2img only)."""
        return self.enable_hr and self.task is Task.TXT2IMG

    @property
    def hr_size(self) -> tuple[int, int]:
        """The hires pass's size, by A1111's rules: by hr_scale, or to hr_resize_x / hr_resize_y (one of them
        0 keeps the aspect ratio; both set: the larger fit, later cropped by ``hr_crop``), to a multiple of 8."""
        w, h, x, y = self.width, self.height, self.hr_resize_x, self.hr_resize_y
        if x == 0 and y == 0:
            to_w, to_h = int(w * self.hr_scale), int(h * self.hr_scale)
        elif y == 0:
            to_w, to_h = x, x * h // w
        elif x == 0:
            to_w, to_h = y * w // h, y
        elif w / h < x / y:
            to_w, to_h = x, x * h // w
        else:
            to_w, to_h = y * w // h, y
        return to_w // 8 * 8, to_h // 8 * 8

    @property
    def hr_crop(self) -> tuple[int, int]:
        """Pixels the hires pass trims in width and height (both hr_resize_x and hr_resize_y given, another
        aspect ratio): the picture is scaled to cover that size and the excess is cut evenly."""
        if not (self.hr_resize_x and self.hr_resize_y):
            return 0, 0
        to_w, to_h = self.hr_size
        return to_w - self.hr_resize_x, to_h - self.hr_resize_y

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
        if self.emphasis not in EMPHASIS_MODES:
            raise RequestError("emphasis", f"must be one of {', '.join(EMPHASIS_MODES)}")
        if self.rng not in RNG_SOURCES:
            raise RequestError("rng", f"must be one of {', '.join(RNG_SOURCES)}")
        _check_int_range("eta_noise_seed_delta", self.eta_noise_seed_delta, 0, MAX_SEED)
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
        if not isinstance(self.img2img_fix_steps, bool):
            raise RequestError("img2img_fix_steps", "must be true or false")
        unipc = uni_pc_problem(self.uni_pc_variant, self.uni_pc_skip_type, self.uni_pc_order)
        if unipc:
            raise RequestError(*unipc)
        if not isinstance(self.uni_pc_lower_order_final, bool):
            raise RequestError("uni_pc_lower_order_final", "must be true or false")
        short = too_few_steps(self.sampler, self.steps, self.denoising_strength, self.img2img_fix_steps) \
            if self.task is not Task.TXT2IMG else None
        if short:
            raise RequestError("denoising_strength", short)
        self._validate_variation()
        self._validate_refiner()
        if self.enable_hr:
            self._validate_hires()
        if any(self.outpaint):
            self._validate_outpaint()
        for index, unit in enumerate(self.controlnet_units):
            if not isinstance(unit, ControlUnit):
                raise RequestError(f"controlnet_units[{index}]", "is not a ControlNet unit")
            unit.validate(index, has_init_image=self.init_image is not None)

    def _validate_outpaint(self) -> None:
        for name in ("outpaint_left", "outpaint_right", "outpaint_top", "outpaint_bottom"):
            value = getattr(self, name)
            _check_int_range(name, value, 0, MAX_OUTPAINT)
            if value % 8:
                raise RequestError(name, "must be a multiple of 8")
        if self.init_image is None:
            raise RequestError("init_image", "outpainting extends a picture: give one")
        left, right, top, bottom = self.outpaint
        if self.width + left + right > MAX_SIDE or self.height + top + bottom > MAX_SIDE:
            raise RequestError("outpaint_left" if left + right else "outpaint_top",
                               f"the extended picture would be over {MAX_SIDE} pixels")

    def _validate_variation(self) -> None:
        if not isinstance(self.subseed, int) or not (self.subseed == -1 or 0 <= self.subseed <= MAX_SEED):
            raise RequestError("subseed", f"must be -1 (random) or between 0 and {MAX_SEED}")
        if not _finite(self.subseed_strength) or not 0.0 <= self.subseed_strength <= 1.0:
            raise RequestError("subseed_strength", "must be between 0 and 1")
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(self, name)
            if value not in (0, -1):
                _check_int_range(name, value, MIN_SIDE, MAX_SIDE)

    def _validate_refiner(self) -> None:
        if self.refiner_checkpoint is not None and not isinstance(self.refiner_checkpoint, str):
            raise RequestError("refiner_checkpoint", "name a checkpoint")
        if not _finite(self.refiner_switch_at) or not 0.0 <= self.refiner_switch_at <= 1.0:
            raise RequestError("refiner_switch_at", "must be a number between 0 and 1")

    def _validate_hires(self) -> None:
        if not _finite(self.hr_scale) or not 1.0 <= self.hr_scale <= MAX_HR_SCALE:
            raise RequestError("hr_scale", f"must be a number between 1 and {MAX_HR_SCALE:g}")
        for name in ("hr_resize_x", "hr_resize_y"):
            value = getattr(self, name)
            if value != 0:
                _check_int_range(name, value, MIN_SIDE, MAX_SIDE)
                if value % 8:
                    raise RequestError(name, "must be a multiple of 8")
        _check_int_range("hr_second_pass_steps", self.hr_second_pass_steps, 0, MAX_STEPS)
        if self.hr_cfg_scale is not None and (not _finite(self.hr_cfg_scale) or not 0.0 <= self.hr_cfg_scale <= 30.0):
            raise RequestError("hr_cfg_scale", "must be a number between 0 and 30")
        if not isinstance(self.hr_upscaler, str) or not self.hr_upscaler.strip():
            raise RequestError("hr_upscaler", "name an upscaler, e.g. \"Latent\" or \"Lanczos\"")
        width, height = self.hr_size
        if max(width, height) > MAX_SIDE:
            raise RequestError("hr_scale", f"the hires size {width}x{height} is over {MAX_SIDE} pixels")
        if min(width, height) < MIN_SIDE:
            raise RequestError("hr_resize_x", f"the hires size {width}x{height} is under {MIN_SIDE} pixels")
        hires_steps = self.hr_second_pass_steps or self.steps
        short = too_few_steps(self.hr_sampler or self.sampler, hires_steps, self.denoising_strength, True)
        if short:
            raise RequestError("denoising_strength", f"{short} (hires pass)")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _check_int_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(name, f"must be a whole number between {low} and {high}")
