"""Where ControlNet models live and what they are called, as sd-webui-controlnet lists them. Pure: no torch.

Folders: ``models/ControlNet`` (A1111, Forge), ``models/controlnet`` (ComfyUI), sub-folders included, then the
models shipped inside the package. A single file (``.safetensors``, ``.pth``, ``.ckpt``, ``.pt``, ``.bin``) is
named by its stem; a diffusers folder (``config.json`` naming a ControlNet class or ``T2IAdapter``, plus its
weights) by the folder's name, and each extra ``diffusion_pytorch_model_<variant>.safetensors`` in it (xinsir's
``_promax``) by ``<folder>_<variant>``. Titles are ``name [hash]`` with the extension's short hash: SHA-256 of
the 64 KiB at 1 MiB into the file, first 8 hex digits (A1111's old model hash), cheap enough to compute while
listing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".safetensors", ".pth", ".ckpt", ".pt", ".bin")
FOLDER_NAMES = ("ControlNet", "controlnet")
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
CONTROLNET_CLASSES = ("ControlNetModel", "ControlNetUnionModel", "T2IAdapter")
_WEIGHTS = re.compile(r"^diffusion_pytorch_model(?:_(?P<variant>[\w-]+?))?(?P<fp16>\.fp16)?\.(?P<ext>safetensors|bin)$")
NONE = "None"


def default_controlnet_dirs(models_dir: Path) -> list[Path]:
    return [Path(models_dir) / name for name in FOLDER_NAMES]


def model_hash(path: Path) -> str:
    """A1111's old short hash, the one the extension shows: SHA-256 of bytes 0x100000..0x110000, 8 hex digits."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as fh:
            fh.seek(0x100000)
            digest.update(fh.read(0x10000))
    except OSError:
        return "NOFILE"
    return digest.hexdigest()[:8]


@dataclass(frozen=True)
class ControlNetEntry:
    name: str  # the stem (or folder name): what the extension matches, case ignored
    weights: Path
    config: Path | None = None  # a diffusers folder's config.json
    builtin: bool = False
    short_hash: str = ""
    mtime_ns: int = 0

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name

    @property
    def label(self) -> str:
        """How messages name it: the file (or folder) name."""
        return self.weights.parent.name if self.config is not None else self.weights.name


def _diffusers_folder(folder: Path) -> list[tuple[str, Path, Path]]:
    """(name, weights, config) per weights variant of a diffusers ControlNet folder; [] if it is not one."""
    config = folder / "config.json"
    try:
        declared = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return []
    if declared not in CONTROLNET_CLASSES:
        return []
    variants: dict[str, tuple[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _WEIGHTS.match(path.name)
        if match is None or not path.is_file():
            continue
        variant = match["variant"] or ""
        rank = (0 if match["ext"] == "safetensors" else 2) + (1 if match["fp16"] else 0)  # prefer full safetensors
        if variant not in variants or rank < variants[variant][0]:
            variants[variant] = (rank, path)
    out = []
    for variant, (_, weights) in sorted(variants.items()):
        own = folder / f"config_{variant}.json"
        out.append((f"{folder.name}_{variant}" if variant else folder.name, weights,
                    own if variant and own.is_file() else config))
    return out


def scan(folders: list[Path], builtin_dir: Path | None = BUILTIN_DIR) -> list[ControlNetEntry]:
    """Every ControlNet in the folders (in order, sub-folders too), then the built-in ones. The first of a
    name (case ignored) wins, as in the extension; "None" is never a model's name."""
    found: list[ControlNetEntry] = []
    taken = {NONE.lower()}
    seen_dirs: set[Path] = set()
    sources = [(Path(f), False) for f in folders] + ([(Path(builtin_dir), True)] if builtin_dir else [])
    for root, builtin in sources:
        if not root.is_dir():
            continue
        resolved = root.resolve()
        if resolved in seen_dirs:  # models/ControlNet and models/controlnet on a case-insensitive disk
            continue
        seen_dirs.add(resolved)
        for folder, dirs, names in os.walk(root, followlinks=False):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            candidates: list[tuple[str, Path, Path | None]] = []
            if "config.json" in names:
                variants = _diffusers_folder(here)
                if variants:
                    dirs[:] = []
                    candidates.extend(variants)
            if not candidates:
                candidates = [(Path(n).stem, here / n, None) for n in sorted(names)
                              if not n.startswith(".") and Path(n).suffix.lower() in SUFFIXES]
            for name, weights, config in candidates:
                if name.lower() in taken:
                    continue
                try:
                    mtime = weights.stat().st_mtime_ns
                except OSError:
                    continue
                taken.add(name.lower())
                found.append(ControlNetEntry(name, weights, config, builtin, model_hash(weights), mtime))
    user = sorted((e for e in found if not e.builtin), key=lambda e: e.name.lower())
    return user + [e for e in found if e.builtin]


def find(entries: list[ControlNetEntry], query: str) -> ControlNetEntry | None:
    """By title ("name [hash]"), name (case ignored, a stale hash ignored too, as the extension matches names),
    file name, or short hash."""
    q = query.strip()
    if not q or q == NONE:
        return None
    for entry in entries:
        if q == entry.title:
            return entry
    base = q.rsplit(" [", 1)[0].strip() if q.endswith("]") else q
    lowered = base.lower()
    for entry in entries:
        if lowered in (entry.name.lower(), entry.weights.name.lower()):
            return entry
    hashes = [e for e in entries if len(q) == 8 and e.short_hash == q.lower()]
    return hashes[0] if len(hashes) == 1 else None
