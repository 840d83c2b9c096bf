"""One job's ControlNet units: resolved, loaded (and pinned in the RAM cache), preprocessed once, and attached
to each denoising pass of the job.

``generate`` uses three calls:
- ``resolve_units(library, units)`` in step 1: model names to the "name [hash]" titles the infotext writes
  (an unknown model fails here, naming the field), preprocessor defaults filled in;
- ``control_session(manager, model, request, seed)`` beside ``manager.use``: loads the models and makes the
  control maps (a context: the models stay pinned until the job ends);
- ``attach_controls(session, pipe, ...)`` around each pipeline call: fits the maps to that pass's size, places the
  ControlNets by the pass's offload plan and hooks them into the UNet (nothing at all when no unit applies).

A refiner that takes over the last steps swaps the pipeline's UNet: from then on the units no longer guide,
as in A1111 with the extension (its hook is on the model the refiner replaces).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import catalog, inpaint, layout, maps, preprocess
from .detect import ControlNetFileError
from .guidance import ControlNetHook, GuidedUnit
from .library import ControlNetLibrary
from .loader import LoadedControlNet
from .units import ControlMode, ControlUnit, HiresOption, UnitError

log = logging.getLogger(__name__)


def resolve_units(library: ControlNetLibrary, units: Sequence[ControlUnit]) -> list[ControlUnit]:
    """Used units with their model's title and the preprocessor's defaults; the others as they are."""
    out = []
    for index, unit in enumerate(units):
        if unit.used:
            entry = library.resolve(unit.model, f"controlnet_units[{index}].model")
            unit = unit.with_defaults().replace(model=entry.title)
        out.append(unit)
    return out


@dataclass
class _Prepared:
    index: int
    unit: ControlUnit
    pre: catalog.Preprocessor
    loaded: LoadedControlNet
    detected: np.ndarray  # the control map at the preprocessor's resolution (RGB uint8)
    source_size: tuple[int, int]  # the control image's size (fitted to the init picture for "only masked")


def applies(unit: ControlUnit, hires_job: bool, hires_pass: bool) -> bool:
    """Whether ``unit`` guides this pass (hr_option counts only in a job with hires fix)."""
    if not hires_job or unit.hr_option is HiresOption.BOTH:
        return True
    return unit.hr_option is (HiresOption.HIGH_RES_ONLY if hires_pass else HiresOption.LOW_RES_ONLY)


@dataclass
class ControlSession:
    units: list[_Prepared] = field(default_factory=list)
    sdxl: bool = False
    hires_job: bool = False
    inpaint_job: bool = False  # the job pastes into its picture through a mask itself (inpaint_only does not)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    warnings: list[str] = field(default_factory=list)
    _on_device: set[int] = field(default_factory=set)
    _hints: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)

    @property
    def detected_maps(self) -> list[tuple[int, Image.Image]]:
        """(unit index, its control map) for the units that guide this job, e.g. for a preview."""
        return [(p.index, maps.to_image(p.detected)) for p in self.units]

    def _hint(self, prepared: _Prepared, width: int, height: int, crop: tuple[int, int, int, int] | None,
              full_size: tuple[int, int] | None) -> torch.Tensor:
        key = (prepared.index, width, height, crop, full_size)
        if key not in self._hints:  # once per size: the batches of a job share it
            self._hints[key] = self._fit(prepared, width, height, crop, full_size)
        return self._hints[key]

    def _fit(self, prepared: _Prepared, width: int, height: int, crop: tuple[int, int, int, int] | None,
             full_size: tuple[int, int] | None) -> torch.Tensor:
        mode = prepared.unit.resize_mode
        if crop is not None and full_size is not None:
            # "Only masked": the map is fitted to the whole picture, then cut like the picture was.
            whole = maps.fit_map(prepared.detected, full_size[0], full_size[1], mode)
            left, top, right, bottom = crop
            fitted = maps.high_quality_resize(np.ascontiguousarray(whole[top:bottom, left:right]), width, height)
        else:
            fitted = maps.fit_map(prepared.detected, width, height, mode)
        # [0, 1] as diffusers' control image processor makes it; an inpaint map's masked pixels -1
        pixels = inpaint.hint_pixels(fitted)
        return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)

    @contextmanager
    def attach(self, pipe: Any, width: int, height: int, images: int, plan: Any = None, hires: bool = False,
               crop: Any = None, original: Image.Image | None = None) -> Iterator[None]:
        """Guide the pipeline call made inside the block (``images`` pictures at width x height). ``plan``: the
        pass's offload plan; ``hires``: it is the hires pass; ``crop`` (a box with ``as_tuple()``) and
        ``original``: "only masked" inpainting, which denoises that box of the original picture."""
        box = crop.as_tuple() if crop is not None and original is not None else None
        full_size = original.size if box is not None and original is not None else None
        chosen = [p for p in self.units if applies(p.unit, self.hires_job, hires)]
        if not chosen:
            yield
            return
        for prepared in chosen:  # the hires pass may run on another checkpoint (hires checkpoint)
            problem = layout.mismatch(dict(prepared.loaded.model.config), dict(pipe.unet.config))
            if problem:
                raise UnitError(f"controlnet_units[{prepared.index}].hr_option",
                                f"ControlNet {prepared.loaded.label} cannot guide this pass: {problem}; let it guide "
                                f"the low-res pass only (hr_option \"{HiresOption.LOW_RES_ONLY.value}\")")
        guided = []
        for prepared in chosen:
            unit = prepared.unit
            soft = unit.control_mode is not ControlMode.BALANCED or (hires and prepared.pre.soft_in_hires)
            loaded = prepared.loaded
            guided.append(GuidedUnit(
                loaded.model, self._hint(prepared, width, height, box, full_size), float(unit.weight),
                float(unit.guidance_start), float(unit.guidance_end), soft, global_pool=loaded.global_pool,
                cond_only=unit.control_mode is ControlMode.CONTROL or loaded.global_pool,
                union_type=prepared.pre.union_type if loaded.union else None, num_types=loaded.num_control_types))
        hook = ControlNetHook(guided, images, self.sdxl, lambda: getattr(pipe, "num_timesteps", 0) or
                              len(pipe.scheduler.timesteps))
        distinct = {id(p.loaded.model): p for p in chosen}  # two units may use one model: place it once
        undo = [self._place(p, plan) for p in distinct.values()]
        handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for step in undo:
                step()

    def _place(self, prepared: _Prepared, plan: Any) -> Any:
        """Put one ControlNet where this pass's offload plan wants the checkpoint's modules; returns the undo."""
        from .placement import place

        return place(prepared.loaded.model, self.device, getattr(plan, "mode", None), prepared.unit.low_vram,
                     self._on_device, id(prepared.loaded.model))

    def paste_unmasked(self, images: list[Image.Image]) -> list[Image.Image]:
        """The finished pictures with each ``inpaint_only`` unit's unmasked part pasted back (the extension's
        post-processing; an inpainting job has its own paste-back and is left as it is)."""
        if self.inpaint_job:
            return images
        for prepared in self.units:
            if prepared.pre.name != "inpaint_only" or prepared.detected.shape[2] < 4 \
                    or not prepared.detected[:, :, 3].any():
                continue  # nothing masked: pasting would replace the whole picture with the control image
            fitted = {}
            for i, image in enumerate(images):
                if image.size not in fitted:
                    fitted[image.size] = maps.fit_map(prepared.detected, image.width, image.height,
                                                      prepared.unit.resize_mode)
                images[i] = inpaint.paste_unmasked(image, fitted[image.size])
        return images

    def release(self) -> None:
        """The job is over: ControlNets left on the accelerator go back to RAM."""
        for prepared in self.units:
            if id(prepared.loaded.model) in self._on_device:
                prepared.loaded.model.to("cpu")
        self._on_device.clear()



def attach_controls(session: ControlSession | None, pipe: Any, width: int, height: int, images: int, plan: Any = None,
                    hires: bool = False, crop: Any = None, original: Image.Image | None = None) -> Any:
    """``session.attach(...)``, or nothing to do without a session."""
    if session is None:
        return nullcontext()
    return session.attach(pipe, width, height, images, plan, hires, crop, original)


def _control_image(unit: ControlUnit, index: int, init_image: Image.Image | None) -> Image.Image:
    image = unit.image if unit.image is not None else init_image
    if image is None:
        raise UnitError(f"controlnet_units[{index}].image", "give a control image")
    return image


def _control_mask(unit: ControlUnit, pre: catalog.Preprocessor, request: Any, image: Image.Image) -> Image.Image | None:
    """The unit's mask; for an inpaint preprocessor without one, in the Inpaint tab, the tab's mask (inverted and
    blurred as the job says, at the control image's size)."""
    if unit.mask is not None or not inpaint.is_inpaint(pre.name) or getattr(request, "mask", None) is None:
        return unit.mask
    from ..pipelines import images as imgs

    _, blurred = imgs.prepare_mask(request.mask, image.size, bool(request.mask_invert), int(request.mask_blur or 0))
    return blurred


def _mask_warning(unit: ControlUnit, pre: catalog.Preprocessor, index: int, request: Any) -> str | None:
    """What the job says about a unit's mask, when it does something users might not expect."""
    if unit.mask is not None and not inpaint.is_inpaint(pre.name):
        alpha = inpaint.mask_array(unit.mask, unit.mask.size)
        if inpaint.is_blank_or_full(alpha):
            return f"ControlNet unit {index}: its mask is blank or full, so it is ignored ({pre.name} is no inpaint " \
                   "preprocessor)"
        return (f"ControlNet unit {index}: {pre.name} is no inpaint preprocessor, so its mask's strokes are the "
                "preprocessor's input instead of the image (the extension's canvas scribble mode)")
    return None


@contextmanager
def control_session(manager: Any, model: Any, request: Any, seed: int) -> Iterator[ControlSession]:
    """The job's ControlNet session (without units when no used unit has a weight). ``manager`` is the
    PipelineManager (its ``controlnets`` library, ``dtype`` and ``device``), ``model`` the job's LoadedModel."""
    units = [(i, u) for i, u in enumerate(request.controlnet_units) if u.used and u.weight > 0]
    if not units:
        yield ControlSession()
        return
    library: ControlNetLibrary = manager.controlnets
    unet_config = dict(model.components["unet"].config)
    session = ControlSession(sdxl=model.is_sdxl, hires_job=bool(request.hires), device=manager.device,
                             inpaint_job=getattr(request, "mask", None) is not None)
    with ExitStack() as stack:
        for index, unit in units:
            unit = unit.with_defaults()
            field_name = f"controlnet_units[{index}]"
            entry = library.resolve(unit.model, f"{field_name}.model")
            try:
                loaded = stack.enter_context(library.use(entry, unet_config, manager.dtype, model.display_name))
            except ControlNetFileError as exc:
                raise ControlNetFileError(exc.message, f"{field_name}.model") from exc
            pre = catalog.find(unit.module)
            assert pre is not None  # the request was validated
            if loaded.union and (pre.union_type is None or pre.union_type >= loaded.num_control_types):
                raise UnitError(f"{field_name}.module", f"the union ControlNet {entry.name} has no control type for "
                                f"the {pre.label} preprocessor")
            image = _control_image(unit, index, request.init_image)
            mask = _control_mask(unit, pre, request, image)
            warning = _mask_warning(unit, pre, index, request)
            if warning:
                session.warnings.append(warning)
            resolution = unit.processor_res
            if unit.pixel_perfect:
                width, height = request.hr_size if request.hires and unit.hr_option is HiresOption.HIGH_RES_ONLY \
                    else (request.width, request.height)
                resolution = preprocess.pixel_perfect_resolution(image.size, width, height, unit.resize_mode)
                resolution = int(min(max(resolution, pre.resolution.minimum), pre.resolution.maximum))
            detected = preprocess.run(pre.name, image, resolution, unit.threshold_a, unit.threshold_b, seed,
                                      annotators_dir=library.annotators, field=f"{field_name}.module", mask=mask)
            session.units.append(_Prepared(index, unit, pre, loaded, detected, image.size))
        try:
            yield session
        finally:
            session.release()


def annotators_dir(models_dir: Path) -> Path:
    return Path(models_dir) / catalog.ANNOTATORS_FOLDER
