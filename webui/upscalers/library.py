"""UpscalerLibrary: the upscalers on offer and ``upscale(image, width, height, name)``, the one call the Extras
tab, its REST API and hires fix make.

Loaded models: the last two used stay in memory, on the device they run on, in the precision they run in
(fp16 / bf16 on a GPU when the model allows it and the engine uses it; fp32 on the CPU). They are small
(ESRGAN 4x: 64 MB in fp32) and do not count toward the checkpoint cache's RAM budget yet.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import devices
from ..models.lora import FileIdentity, file_identity
from .errors import UpscalerError
from .folders import LANCZOS, NEAREST, NONE, UpscalerFile, announced_scale, scan, sorted_names
from .loading import UpscalerModel, load_upscaler
from .tiling import upscale_tiled

log = logging.getLogger(__name__)

MAX_PASSES = 3  # a 2x model asked for 8x runs three times, as in A1111
# One pass makes at most this many pixels (8192x8192); a larger input is first made smaller, so a 4x model on a
# big picture cannot ask for tens of GB. A model's output is always finished with a LANCZOS resize.
MAX_PASS_PIXELS = 8192 * 8192
MAX_SIDE = 16384


def compute_dtype(device: torch.device, dtype: torch.dtype, model: UpscalerModel) -> torch.dtype:
    """The engine's half precision on a GPU where the model supports it; fp32 on the CPU, where half precision
    convolutions are slow or unsupported and the model is cheap anyway."""
    if device.type == "cpu":
        return torch.float32
    if dtype == torch.float16 and model.supports_half:
        return torch.float16
    if dtype == torch.bfloat16 and model.supports_bfloat16:
        return torch.bfloat16
    return torch.float32


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


class UpscalerLibrary:
    """``folders``: where model files are looked for (see ``default_upscaler_dirs``); ``builtin_dir``: upscalers
    shipped with Atelier (may be missing or empty). ``tile_size`` 0 runs models on the whole picture."""

    def __init__(self, folders: list[Path], builtin_dir: Path | None, device: torch.device, dtype: torch.dtype,
                 tile_size: int = 192, tile_overlap: int = 16, keep: int = 2) -> None:
        self.folders = [Path(f) for f in folders]
        self.builtin_dir = builtin_dir
        self.device = device
        self.dtype = dtype
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.keep = keep
        self._files_lock = threading.Lock()
        self._files: dict[str, UpscalerFile] | None = None
        # One model load or run at a time; listings never wait for it.
        self._run_lock = threading.Lock()
        self._loaded: OrderedDict[FileIdentity, UpscalerModel] = OrderedDict()
        self._scales: dict[str, int] = {}  # name -> scale, remembered after a model is dropped

    # ------------------------------------------------------------------ what is on offer
    def refresh(self) -> None:
        """Read the folders again (new, renamed and removed files)."""
        files = scan(self.folders, self.builtin_dir)
        with self._files_lock:
            self._files = files

    def files(self) -> dict[str, UpscalerFile]:
        with self._files_lock:
            known = self._files
        if known is None:
            self.refresh()
            with self._files_lock:
                known = self._files or {}
        return dict(known)

    def names(self) -> list[str]:
        """"None", "Lanczos", "Nearest", then the model names (file stems) in alphabetical order."""
        return sorted_names(self.files())

    def find(self, name: str | None) -> str | None:
        """The name as listed for ``name`` (case ignored), after a rescan if it is not known yet; None if absent."""
        if not name or not name.strip():
            return None
        wanted = name.strip().lower()
        for attempt in range(2):
            if attempt:
                self.refresh()
            for known in self.names():
                if known.lower() == wanted:
                    return known
        return None

    def entries(self) -> list[dict[str, Any]]:
        """A1111's /sdapi/v1/upscalers items. A model's scale is what it showed when loaded, else what its file
        announces (metadata or name), else None."""
        plain = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": scale}
                 for name, scale in ((NONE, 1.0), (LANCZOS, 4.0), (NEAREST, 4.0))]
        files = self.files()
        models = [{"name": name, "model_name": files[name].family, "model_path": str(files[name].path),
                   "model_url": None, "scale": self._scales.get(name) or announced_scale(files[name])}
                  for name in sorted(files, key=str.lower)]
        return plain + models

    # ------------------------------------------------------------------ upscaling
    def upscale(self, image: Image.Image, width: int, height: int, name: str, field: str = "upscaler") -> Image.Image:
        """``image`` at exactly ``width`` x ``height``.

        - "None": the picture itself, resized with LANCZOS only if its size differs (hires fix's "None"; the
          Extras tab does not call this for "None", which in A1111 leaves a picture untouched).
        - "Lanczos" / "Nearest": one PIL resize.
        - a model: applied until the picture is at least the target size (up to three passes, as A1111 does:
          a 2x model asked for 4x runs twice), then resized to the exact size with LANCZOS. The result is RGB.

        Raises UpscalerError naming ``field`` for an unknown name or a file that cannot be used."""
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise UpscalerError(f"cannot upscale to {width}x{height}: each side must be 1 to {MAX_SIDE}", field)
        known = self.find(name)
        if known is None:
            raise UpscalerError(f"Unknown upscaler {name!r}; available: {', '.join(self.names())}", field)
        if known == NONE:
            return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)
        if known in (LANCZOS, NEAREST):
            method = Image.Resampling.LANCZOS if known == LANCZOS else Image.Resampling.NEAREST
            return image.resize((width, height), method)
        with self._run_lock:
            model = self._model(known, field)
            current = image.convert("RGB")
            for done in range(MAX_PASSES):
                if done and current.width >= width and current.height >= height:
                    break
                current = self._run(model, _fit_pass(current, model.scale), field)
        if current.size != (width, height):
            current = current.resize((width, height), Image.Resampling.LANCZOS)
        return current

    def _model(self, name: str, field: str) -> UpscalerModel:
        file = self.files().get(name)
        if file is None or not file.path.is_file():
            self.refresh()
            raise UpscalerError(f"Upscaler {name!r}: its file is gone ({file.path if file else 'not found'})", field)
        key = file_identity(file.path)  # a file saved again under its name is read again
        model = self._loaded.get(key)
        if model is None:
            model = load_upscaler(name, file.path, field)
            model.descriptor.to(self.device)
            model.descriptor.to(compute_dtype(self.device, self.dtype, model))
            self._loaded[key] = model
            self._scales[name] = model.scale
            log.info("Loaded upscaler %s (%s, %dx)", name, model.architecture, model.scale)
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
                devices.release_memory(self.device)
        self._loaded.move_to_end(key)
        return model

    def _run(self, model: UpscalerModel, image: Image.Image, field: str) -> Image.Image:
        dtype = compute_dtype(self.device, self.dtype, model)

        def run(piece: torch.Tensor) -> torch.Tensor:
            return model.descriptor(piece.to(self.device, dtype))

        tile = 0 if model.tiling_discouraged else self.tile_size
        try:
            output = upscale_tiled(run, image_to_tensor(image), model.scale, tile, self.tile_overlap)
        except torch.OutOfMemoryError as exc:
            devices.release_memory(self.device)
            raise UpscalerError(f"Upscaler {model.name}: not enough memory for a {image.width}x{image.height} "
                                "picture; set a smaller upscaler tile size in Settings", field) from exc
        return tensor_to_image(output)


def _fit_pass(image: Image.Image, scale: int) -> Image.Image:
    """The input of one model pass, made smaller first if the pass would make more than MAX_PASS_PIXELS."""
    out_pixels = image.width * image.height * scale * scale
    if out_pixels <= MAX_PASS_PIXELS:
        return image
    factor = math.sqrt(MAX_PASS_PIXELS / out_pixels)
    size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)
