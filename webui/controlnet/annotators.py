"""Preprocessors that need annotator weights (OpenPose, depth, soft edge, realistic/anime lineart, normal, MLSD).

Atelier never downloads them. They are looked for by file name anywhere under ``models/ControlNetAnnotators/``
(sub-folders are fine, e.g. the extension's ``annotator/downloads/openpose/``); a missing file gets a
message naming it, where to get it and where to put it. None of these networks runs in Atelier yet: with
the files in place the message says so, and a map made elsewhere can be used with the ``none`` preprocessor.

Pure: the standard library only.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AtelierError
from .catalog import ANNOTATORS_FOLDER, Preprocessor


class AnnotatorMissingError(AtelierError):
    """A preprocessor's annotator weights are not installed (or it cannot run here); the message says what to do."""


def find_file(folder: Path, name: str) -> Path | None:
    if not folder.is_dir():
        return None
    direct = folder / name
    if direct.is_file():
        return direct
    return next((p for p in sorted(folder.rglob(name)) if p.is_file()), None)


def require(pre: Preprocessor, folder: object, field: str = "module") -> list[Path]:
    """The annotator files of ``pre``, or AnnotatorMissingError naming what is missing and where it goes."""
    root = Path(folder) if isinstance(folder, (str, Path)) else None
    where = str(root) if root is not None else f"models/{ANNOTATORS_FOLDER}"
    found: list[Path] = []
    missing = []
    for annotator in pre.annotators:
        path = find_file(root, annotator.name) if root is not None else None
        if path is None:
            missing.append(annotator)
        else:
            found.append(path)
    if missing:
        files = "; ".join(f"{a.name} (from {a.source})" for a in missing)
        raise AnnotatorMissingError(
            f"The {pre.label} preprocessor needs annotator weights that are not installed: {files}. Put the "
            f"file{'s' if len(missing) > 1 else ''} in {where}/ (Atelier never downloads them), or make the "
            "map elsewhere and use the \"none\" preprocessor.", field)
    raise AnnotatorMissingError(
        f"The {pre.label} preprocessor's weights are installed ({', '.join(p.name for p in found)}), but Atelier "
        "cannot run this annotator yet: make the map elsewhere and use the \"none\" preprocessor.", field)
