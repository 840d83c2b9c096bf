"""The checkpoint list: scan models/Stable-diffusion/, give each file an A1111-style title.

Scanning only stats files; hashes come from the cache or are computed on demand
(when a model is loaded, or in the background), so start-up never waits on hashing.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .hashing import SHORT_HASH_LEN, HashCache

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")

Identity = tuple[int, int, int, int]
# The hash cache's name for an SD 2 file's parameterisation as its weights told ("epsilon" / "v_prediction").
PREDICTION_FACT = "prediction_type"


def file_identity(stat: os.stat_result) -> Identity:
    """What changes when a file is replaced, rewritten or truncated: (device, inode, size, mtime in ns)."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass
class CheckpointEntry:
    name: str  # path relative to the checkpoints folder, "/"-separated, e.g. "sd15/dreamy.safetensors"
    path: Path
    kind: str  # "safetensors" | "ckpt" | "diffusers"
    builtin: bool = False
    label: str | None = None  # shown instead of the name (built-in models)
    _hashes: HashCache | None = field(default=None, repr=False, compare=False)

    @property
    def model_name(self) -> str:
        """A1111's model_name: the relative name without extension."""
        return self.name.rsplit(".", 1)[0] if self.kind != "diffusers" else self.name

    @property
    def sha256(self) -> str | None:
        if self.kind == "diffusers" or self._hashes is None:
            return None
        return self._hashes.cached(self.name, self.path)

    def compute_sha256(self) -> str | None:
        if self.kind == "diffusers" or self._hashes is None:
            return None
        return self._hashes.sha256(self.name, self.path)

    @property
    def remembered_prediction(self) -> str | None:
        """The parameterisation an earlier load read off this version of the file's weights, if any."""
        if self.kind == "diffusers" or self._hashes is None:
            return None
        return self._hashes.recall(self.name, self.path, PREDICTION_FACT)

    def remember_prediction(self, prediction_type: str) -> None:
        if self.kind != "diffusers" and self._hashes is not None:
            self._hashes.remember(self.name, self.path, PREDICTION_FACT, prediction_type)

    def identity(self) -> tuple[Identity, ...] | None:
        """The identity of the file (of every file in a diffusers folder); None when it is missing.

        A cached model whose file no longer has the identity it was loaded from is stale (see the manager).
        """
        try:
            if self.kind != "diffusers":
                return (file_identity(self.path.stat()),)
            found = []
            for folder, _, files in sorted(os.walk(self.path)):
                for name in sorted(files):
                    found.append(file_identity(os.stat(os.path.join(folder, name))))
            return tuple(found)
        except OSError:
            return None

    @property
    def short_hash(self) -> str | None:
        digest = self.sha256
        return digest[:SHORT_HASH_LEN] if digest else None

    @property
    def title(self) -> str:
        shown = self.label or self.name
        return f"{shown} [{self.short_hash}]" if self.short_hash else shown

    def matches(self, query: str) -> bool:
        q = query.strip()
        if not q:
            return False
        base = q.rsplit(" [", 1)[0] if q.endswith("]") else q
        candidates = {self.name, self.model_name, self.title, self.label or "", self.path.name}
        if base in candidates or q in candidates:
            return True
        digest = self.sha256
        return digest is not None and len(q) >= SHORT_HASH_LEN and digest.startswith(q.lower())


class CheckpointRegistry:
    def __init__(self, checkpoints_dir: Path, hash_cache: HashCache, builtin: list[CheckpointEntry] | None = None):
        self.checkpoints_dir = Path(checkpoints_dir)
        self._hashes = hash_cache
        self._builtin = list(builtin or [])
        for entry in self._builtin:
            entry._hashes = hash_cache
        self._lock = threading.Lock()
        self._entries: list[CheckpointEntry] = []
        self.refresh()

    @property
    def hash_cache(self) -> HashCache:
        return self._hashes

    def refresh(self) -> list[CheckpointEntry]:
        found: list[CheckpointEntry] = []
        root = self.checkpoints_dir
        if root.is_dir():
            for folder, dirs, files in os.walk(root, followlinks=False):
                here = Path(folder)
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                if here != root and "model_index.json" in files:
                    # A diffusers folder is one checkpoint; its weight files are not listed on their own.
                    found.append(CheckpointEntry(here.relative_to(root).as_posix(), here, "diffusers",
                                                 _hashes=self._hashes))
                    dirs[:] = []
                    continue
                for name in sorted(files):
                    path = here / name
                    if name.startswith(".") or path.suffix.lower() not in CHECKPOINT_SUFFIXES:
                        continue
                    kind = "safetensors" if path.suffix.lower() == ".safetensors" else "ckpt"
                    found.append(CheckpointEntry(path.relative_to(root).as_posix(), path, kind, _hashes=self._hashes))
        found.sort(key=lambda e: e.name.lower())
        with self._lock:
            self._entries = found
        return self.entries()

    def entries(self) -> list[CheckpointEntry]:
        """User checkpoints first (sorted by name), then the built-in ones."""
        with self._lock:
            return [*self._entries, *self._builtin]

    def user_entries(self) -> list[CheckpointEntry]:
        with self._lock:
            return list(self._entries)

    def find(self, query: str | None) -> CheckpointEntry | None:
        """Exact relative name or title first; then file name, stem or hash, if only one entry has it."""
        if not query:
            return None
        entries = self.entries()
        q = query.strip()
        base = q.rsplit(" [", 1)[0] if q.endswith("]") else q
        for entry in entries:
            if q in (entry.name, entry.title) or base == entry.name or (entry.label and base == entry.label):
                return entry
        loose = [entry for entry in entries if entry.matches(query)]
        return loose[0] if len(loose) == 1 else None

    def default(self, preferred: str | None = None) -> CheckpointEntry | None:
        """The preferred checkpoint if it exists, else the first user file, else the built-in model."""
        entry = self.find(preferred)
        if entry is not None:
            return entry
        entries = self.entries()
        return entries[0] if entries else None
