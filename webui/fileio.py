"""Atomic writes: a temp file in the target folder, synced, then renamed (or linked) to the target, so a crash
never leaves a half-written image, settings, styles or password file.

Temp files are named ``.atelier-<pid>-<random>.tmp``: a process killed mid-write leaves one behind, and
``remove_stale_temp_files`` (run at start-up) deletes those whose process is gone.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_PREFIX = ".atelier-"
_TEMP_NAME = re.compile(r"^\.atelier-(\d+)-\w+(?:\..*)?\.tmp$")


def temp_name(token: str) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{token}.tmp"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: leave its files alone
    return True


def remove_stale_temp_files(tree: Path, *folders: Path) -> int:
    """Delete temp files left by processes that no longer run, anywhere under ``tree`` and directly in
    ``folders``; returns how many were removed."""
    removed = 0
    candidates = [(tree, tree.rglob)] + [(folder, folder.glob) for folder in folders]
    for folder, search in candidates:
        if not folder.is_dir():
            continue
        for path in search(f"{TEMP_PREFIX}*.tmp"):
            match = _TEMP_NAME.match(path.name)
            if match and not _alive(int(match.group(1))):
                try:
                    path.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("Could not remove leftover temp file %s: %s", path, exc)
    if removed:
        log.info("Removed %d temp file(s) left by an interrupted run", removed)
    return removed


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=f".{path.name}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Like ``write_text_atomic``, for bytes (pictures)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=f".{path.name}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
