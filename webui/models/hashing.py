"""SHA-256 file hashes (A1111's "AutoV2": first 10 hex digits), cached by path + size + mtime.

Hashing a multi-GB checkpoint takes seconds to minutes, so it is never done at start-up;
results persist in a small JSON file written atomically. The same file keeps other facts that cost
a load to learn (an SD 2 file's parameterisation), valid for the same file version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ..fileio import write_text_atomic

log = logging.getLogger(__name__)

SHORT_HASH_LEN = 10
_CHUNK = 8 * 2**20


def sha256_file(path: Path, offset: int = 0) -> str:
    """SHA-256 of a file's bytes from `offset` on, read in chunks (checkpoints are many GB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """Thread-safe map of (relative name, size, mtime) -> sha256, persisted to `cache_file`."""

    def __init__(self, cache_file: Path | None) -> None:
        self._file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] = self._read()

    def _read(self) -> dict[str, dict[str, object]]:
        if self._file is None or not self._file.exists():
            return {}
        try:
            data = json.loads(self._file.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            log.warning("Hash cache %s is unreadable; hashes will be recomputed", self._file)
            return {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    def cached(self, key: str, path: Path) -> str | None:
        """The known hash if the file has not changed since it was hashed; never reads the file."""
        try:
            size, mtime = self._stamp(path)
        except OSError:
            return None
        with self._lock:
            entry = self._entries.get(key)
        if entry and entry.get("size") == size and entry.get("mtime") == mtime and "sha256" in entry:
            return str(entry["sha256"])
        return None

    def recall(self, key: str, path: Path, fact: str) -> str | None:
        """A fact remembered about this version of the file (None if unknown or the file changed)."""
        try:
            size, mtime = self._stamp(path)
        except OSError:
            return None
        with self._lock:
            entry = self._entries.get(key) or {}
            facts = entry.get("facts")
        if entry.get("size") == size and entry.get("mtime") == mtime and isinstance(facts, dict):
            value = facts.get(fact)
            return str(value) if value is not None else None
        return None

    def remember(self, key: str, path: Path, fact: str, value: str) -> None:
        """Keep `fact` about this version of the file (persisted); a changed file forgets it."""
        try:
            size, mtime = self._stamp(path)
        except OSError:
            return
        with self._lock:
            entry = self._current_locked(key, size, mtime)
            facts = entry.get("facts")
            entry["facts"] = {**(facts if isinstance(facts, dict) else {}), fact: value}
            self._write_locked()

    def _current_locked(self, key: str, size: int, mtime: int) -> dict[str, object]:
        """The entry for this file version, started afresh when the file changed."""
        entry = self._entries.get(key)
        if not entry or entry.get("size") != size or entry.get("mtime") != mtime:
            entry = self._entries[key] = {"size": size, "mtime": mtime}
        return entry

    def sha256(self, key: str, path: Path, compute: Callable[[Path], str] = sha256_file) -> str:
        """The file's hash, from the cache when the file is unchanged; `compute` hashes it otherwise
        (LoRA hashes cover the tensors only, so they use their own)."""
        known = self.cached(key, path)
        if known:
            return known
        size, mtime = self._stamp(path)
        digest = compute(path)
        with self._lock:
            self._current_locked(key, size, mtime)["sha256"] = digest
            self._write_locked()
        return digest

    def _write_locked(self) -> None:
        if self._file is None:
            return
        try:
            write_text_atomic(self._file, json.dumps(self._entries, indent=1, sort_keys=True))
        except OSError as exc:  # the cache only saves time: a job never fails over it
            log.warning("Could not save hash cache %s: %s", self._file, exc)
