"""Deleting pictures from the History tab moves them to a trash folder (``outputs/.atelier/trash/``, never
served), from which they can be restored to where they were. Each trashed picture has a folder of its own with
the file and a record of where it came from and whose it is (written atomically)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..fileio import write_text_atomic

log = logging.getLogger(__name__)

RECORD = "record.json"


class TrashError(ValueError):
    """A trash operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class TrashItem:
    token: str
    path: str  # where it was, relative to the outputs folder
    owner: str
    deleted_by: str
    deleted_at: float
    file: Path  # the picture inside the trash


class Trash:
    def __init__(self, outputs_dir: Path, folder: Path) -> None:
        self.root = Path(outputs_dir)
        self.folder = Path(folder)

    def _inside_root(self, rel: str) -> Path:
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root.resolve()) or any(part.startswith(".") for part in Path(rel).parts):
            raise TrashError(f"{rel} is not a picture in the outputs folder")
        return path

    def put(self, rel: str, owner: str, deleted_by: str) -> TrashItem:
        """Move the picture at ``rel`` (relative to the outputs folder) into the trash."""
        source = self._inside_root(rel)
        if not source.is_file():
            raise TrashError(f"{rel} is no longer there")
        now = time.time()
        token = f"{int(now)}-{secrets.token_hex(6)}"
        box = self.folder / token
        box.mkdir(parents=True)
        write_text_atomic(box / RECORD, json.dumps({"path": rel, "owner": owner, "deleted_by": deleted_by,
                                                    "deleted_at": now}))
        target = box / source.name
        os.replace(source, target)  # same file system: the outputs folder holds the trash
        return TrashItem(token, rel, owner, deleted_by, now, target)

    def items(self, owner: str | None = None) -> list[TrashItem]:
        """What is in the trash, newest first (``owner``'s only, unless None)."""
        found: list[TrashItem] = []
        if not self.folder.is_dir():
            return found
        for box in self.folder.iterdir():
            item = self._read(box)
            if item is not None and (owner is None or item.owner == owner):
                found.append(item)
        return sorted(found, key=lambda item: item.deleted_at, reverse=True)

    def _read(self, box: Path) -> TrashItem | None:
        try:
            record = json.loads((box / RECORD).read_text(encoding="utf-8"))
            files = [p for p in box.iterdir() if p.name != RECORD and not p.name.startswith(".")]
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or len(files) != 1:
            return None
        return TrashItem(box.name, str(record.get("path", "")), str(record.get("owner", "")),
                         str(record.get("deleted_by", "")), float(record.get("deleted_at", 0.0)), files[0])

    def find(self, token: str) -> TrashItem | None:
        if not token or "/" in token or token.startswith("."):
            return None
        return self._read(self.folder / token)

    def restore(self, token: str) -> str:
        """Put a trashed picture back where it was (under a new number if that name was taken meanwhile);
        returns where it went, relative to the outputs folder."""
        item = self.find(token)
        if item is None:
            raise TrashError("That picture is no longer in the trash")
        target = self._inside_root(item.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        candidate, n = target, 1
        while True:
            try:
                os.link(item.file, candidate)  # fails instead of replacing a picture saved there meanwhile
                break
            except FileExistsError:
                n += 1
                candidate = target.with_name(f"{target.stem}-restored{'' if n == 2 else n - 1}{target.suffix}")
        shutil.rmtree(self.folder / token, ignore_errors=True)
        return candidate.relative_to(self.root.resolve()).as_posix()
