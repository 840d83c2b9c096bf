"""Preprocessors that need annotator weights (OpenPose, depth, soft edge, realistic/anime lineart, normal, MLSD).

Atelier never downloads them. They are looked for by file name anywhere under ``models/ControlNetAnnotators/``
(sub-folders are fine, e.g. the extension's ``annotator/downloads/openpose/``), as the ``.pth`` / ``.pt``
the catalog names or a ``.safetensors`` of the same stem; a missing file gets a message naming it, where to
get it and where to put it. The ones in ``RUNNABLE`` run here (``annotator_maps``); for the others, with the
files in place, the message says a map made elsewhere can be used with the ``none`` preprocessor.

Pure: the standard library only (the networks are imported only where they run).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AtelierError
from .catalog import ANNOTATORS_FOLDER, Preprocessor

# The weight-based preprocessors Atelier can run (annotator_maps.RUNNERS has one runner for each).
RUNNABLE = frozenset({"hed", "hed_safe", "scribble_hed", "pidinet", "pidinet_safe", "pidinet_scribble",
                      "lineart", "lineart_coarse", "lineart_anime", "mlsd", "openpose", "openpose_hand",
                      "openpose_face", "openpose_faceonly", "openpose_full",
                      "depth_anything", "normal_bae", "dw_openpose_full"})


class AnnotatorMissingError(AtelierError):
    """A preprocessor's annotator weights are not installed (or it cannot run here); the message says what to do."""


def find_file(folder: Path | None, name: str) -> Path | None:
    """``name`` (or the same stem as .safetensors) anywhere under ``folder``; the folder itself first."""
    if folder is None or not folder.is_dir():
        return None
    names = [name] if name.endswith(".safetensors") else [name, str(Path(name).with_suffix(".safetensors"))]
    for candidate in names:
        if (folder / candidate).is_file():
            return folder / candidate
    for candidate in names:
        found = next((p for p in sorted(folder.rglob(candidate)) if p.is_file()), None)
        if found is not None:
            return found
    return None


def require(pre: Preprocessor, folder: Path | None, field: str = "module") -> dict[str, Path]:
    """The annotator files of ``pre`` by catalog name, or AnnotatorMissingError naming what is missing and
    where it goes (or saying that this preprocessor does not run in Atelier yet)."""
    where = str(folder) if folder is not None else f"models/{ANNOTATORS_FOLDER}"
    found: dict[str, Path] = {}
    missing = []
    for annotator in pre.annotators:
        path = find_file(folder, annotator.name)
        if path is None:
            missing.append(annotator)
        else:
            found[annotator.name] = path
    if missing:
        files = "; ".join(f"{a.name} (from {a.source})" for a in missing)
        raise AnnotatorMissingError(
            f"The {pre.label} preprocessor needs annotator weights that are not installed: {files}. Put the "
            f"file{'s' if len(missing) > 1 else ''} in {where}/ (Atelier never downloads them), or make the "
            "map elsewhere and use the \"none\" preprocessor.", field)
    if pre.name not in RUNNABLE:
        raise AnnotatorMissingError(
            f"The {pre.label} preprocessor's weights are installed ({', '.join(p.name for p in found.values())}), "
            "but Atelier cannot run this annotator yet: make the map elsewhere and use the \"none\" preprocessor.",
            field)
    return found
