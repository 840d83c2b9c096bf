"""Textual-inversion embeddings: files in models/embeddings/ used when their name appears in a prompt.

Formats: A1111 ``.pt`` (``string_to_param``), ``.safetensors`` with ``emb_params``, SDXL files with
``clip_l``/``clip_g``, and diffusers' ``{token: vector}`` files. Pickled files are opened with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .hashing import HashCache
from .loader import CheckpointLoadError, read_checkpoint_file

SUFFIXES = (".pt", ".safetensors", ".bin")
TI_HASH_LEN = 12


@dataclass(frozen=True)
class Embedding:
    name: str  # the word that calls it: the file name without extension
    path: Path
    vectors: dict[str, torch.Tensor]  # "clip_l" (SD 1.x/2.x too, by width) and/or "clip_g": (n, width)

    @property
    def count(self) -> int:
        """Token positions it takes in a prompt."""
        return max(v.shape[0] for v in self.vectors.values())

    def for_width(self, width: int, second_encoder: bool) -> torch.Tensor | None:
        """The vectors for an encoder of this width, or None if the file was made for another model."""
        key = "clip_g" if second_encoder else "clip_l"
        candidates = [self.vectors.get(key)] + ([] if second_encoder else [self.vectors.get("single")])
        for vectors in candidates:
            if vectors is not None and vectors.shape[-1] == width:
                return vectors
        return None


def read_vectors(path: Path) -> dict[str, torch.Tensor]:
    """The vectors of an embedding file, keyed "clip_l"/"clip_g" (SDXL) or "single"."""
    if path.suffix.lower() == ".safetensors":
        tensors, _ = read_checkpoint_file(path)
    else:
        tensors = _read_pickled(path)
    if "clip_l" in tensors or "clip_g" in tensors:
        return {k: _matrix(tensors[k]) for k in ("clip_l", "clip_g") if k in tensors}
    for key, value in tensors.items():
        if key.startswith(("string_to_param", "emb_params")):
            return {"single": _matrix(value)}
    if len(tensors) == 1:  # diffusers' learned_embeds.bin: {"<token>": vector}
        return {"single": _matrix(next(iter(tensors.values())))}
    raise CheckpointLoadError(f"{path.name}: not a textual-inversion embedding")


def _read_pickled(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .pt/.bin, one level of nesting flattened (A1111 keeps {"string_to_param": {"*": t}})."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # refused pickles and damaged files alike: their code never runs
        raise CheckpointLoadError(f"{path.name}: cannot be read safely ({str(exc).splitlines()[0][:200]})") from exc
    flat: dict[str, torch.Tensor] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, torch.Tensor):
                flat[str(key)] = value
            elif isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, torch.Tensor)})
    return flat


def _matrix(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().float()
    return tensor.reshape(-1, tensor.shape[-1])


def word_pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    """A regex finding any of ``names`` as a whole word (letters, digits, '_' and '-' around it do not count),
    case-insensitively; None for no names."""
    ordered = sorted(names, key=len, reverse=True)  # longest first: "style-2" before "style"
    if not ordered:
        return None
    return re.compile(r"(?<![\w\-])(" + "|".join(map(re.escape, ordered)) + r")(?![\w\-])", re.IGNORECASE)


class EmbeddingLibrary:
    """The embedding files in some folders, rescanned when a folder changes, loaded on first use."""

    def __init__(self, folders: list[Path], hashes: HashCache) -> None:
        self.folders = folders
        self.hashes = hashes
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, int], Embedding] = {}
        self._errors: dict[tuple[str, int], str] = {}

    def files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self.folders:
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.is_file() and path.suffix.lower() in SUFFIXES and not path.name.startswith("."):
                        found.setdefault(path.stem, path)
        return found

    def names_pattern(self) -> re.Pattern[str] | None:
        return word_pattern(self.files())

    def get(self, name: str) -> Embedding:
        files = {k.lower(): v for k, v in self.files().items()}
        path = files[name.lower()]
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key in self._errors:
                raise CheckpointLoadError(self._errors[key])
            if key not in self._loaded:
                try:
                    vectors = read_vectors(path)
                except CheckpointLoadError as exc:
                    self._errors[key] = str(exc)
                    raise
                self._loaded[key] = Embedding(path.stem, path, vectors)
            return self._loaded[key]

    def find_in(self, text: str) -> list[str]:
        """Names of embeddings that appear in `text` as words (case-insensitive), in order of appearance."""
        pattern = self.names_pattern()
        if pattern is None:
            return []
        return list(dict.fromkeys(m.group(1) for m in pattern.finditer(text)))

    def short_hash(self, embedding: Embedding) -> str:
        """A1111's TI hash: the first 12 hex digits of the file's SHA-256."""
        return self.hashes.sha256(f"embeddings/{embedding.path.name}", embedding.path)[:TI_HASH_LEN]
