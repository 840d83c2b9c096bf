"""Where upscaler model files live and what they are called. Pure: no torch.

A1111 keeps them in one folder per family (models/ESRGAN, models/RealESRGAN, models/DAT, models/HAT,
models/SwinIR) and ComfyUI in models/upscale_models; Atelier reads them all, because spandrel tells the
architecture from the weights, not from the folder. A model's name is its file stem, as in A1111.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..models.header import read_header

SUFFIXES = (".pth", ".pt", ".safetensors")
# Offered before any model, in A1111's order. "None" leaves a picture as it is (see UpscalerLibrary.upscale).
NONE, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
PLAIN_UPSCALERS = (NONE, LANCZOS, NEAREST)
# A1111's folders, then ComfyUI's.
FAMILY_FOLDERS = ("ESRGAN", "RealESRGAN", "DAT", "HAT", "SwinIR", "upscale_models")
# Upscalers shipped inside the package (safetensors only: nothing shipped is ever a pickle).
BUILTIN_UPSCALER_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_FAMILY = "builtin"


def default_upscaler_dirs(models_dir: Path) -> list[Path]:
    return [Path(models_dir) / name for name in FAMILY_FOLDERS]


@dataclass(frozen=True)
class UpscalerFile:
    name: str  # the file stem: what menus, infotext ("Hires upscaler") and the API call it
    path: Path
    family: str  # the folder it was found in (A1111's "model_name" family), or "builtin"


def scan(folders: list[Path], builtin_dir: Path | None) -> dict[str, UpscalerFile]:
    """name -> file, over the folders in order (sub-folders too), then the built-in folder. The first file of
    a name wins; a file named like a plain upscaler ("Lanczos.pth") is left out rather than hiding it."""
    found: dict[str, UpscalerFile] = {}
    taken = {name.lower() for name in PLAIN_UPSCALERS}
    sources: list[tuple[Path, str, tuple[str, ...]]] = [(Path(f), Path(f).name, SUFFIXES) for f in folders]
    if builtin_dir is not None:
        sources.append((Path(builtin_dir), BUILTIN_FAMILY, (".safetensors",)))
    for folder, family, suffixes in sources:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in suffixes:
                continue
            if path.stem.lower() in taken:
                continue
            taken.add(path.stem.lower())
            found[path.stem] = UpscalerFile(path.stem, path, family)
    return found


# "4x_foolhardy_Remacri", "RealESRGAN_x4plus", "4x-UltraSharp", "2xLexicaRRDBNet": the scale model sites name.
_NAMED_SCALE = re.compile(r"(?:^|[^0-9a-z])([1-8])x(?![0-9])|x([1-8])(?![0-9])", re.IGNORECASE)


def announced_scale(file: UpscalerFile) -> int | None:
    """The scale a file announces before it is loaded: a safetensors "scale" metadata entry, else its name
    (None: it says nothing; the loaded model tells)."""
    if file.path.suffix.lower() == ".safetensors":
        try:
            value = read_header(file.path).metadata.get("scale", "")
        except (OSError, ValueError):
            value = ""
        if value.isdigit() and 1 <= int(value) <= 8:
            return int(value)
    match = _NAMED_SCALE.search(file.name)
    return int(match.group(1) or match.group(2)) if match else None


def sorted_names(files: dict[str, UpscalerFile]) -> list[str]:
    """A1111's menu: the plain upscalers, then the models alphabetically (case ignored)."""
    return [*PLAIN_UPSCALERS, *sorted(files, key=str.lower)]
