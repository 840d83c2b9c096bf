"""An index of every picture in the outputs folder, for the History tab: who made it, its infotext and the fields
it is filtered by, newest first, a page at a time.

The index is an SQLite file (``outputs/.atelier/history/index.sqlite``; SQLite's own journal makes every update
atomic). Refreshing it reads only what changed: a folder whose modification time is the one recorded was not
added to or removed from, so only new folders and folders with new, changed or removed files are listed, and
only new or changed files are read (metadata.read_picture). Pictures made anywhere (the page, the REST API, the
CLI, A1111) are found; their owner is the ``atelier-user`` their file records, else the host.

Hidden folders and files (names starting with ``.``: this index, thumbnails, trash, temp files) are skipped.
"""

from __future__ import annotations

import datetime
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .metadata import IMAGE_SUFFIXES, read_picture

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATE_DIR = ".atelier"  # inside the outputs folder, hidden from scans (and from A1111's tools)
PER_PAGE = 24

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pictures (
    path TEXT PRIMARY KEY,          -- relative to the outputs folder, '/'-separated
    folder TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,          -- seconds since the epoch (the file's modification time)
    day TEXT NOT NULL,              -- local date, YYYY-MM-DD
    owner TEXT NOT NULL,            -- '' = the host
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    seed INTEGER,
    model TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    infotext TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pictures_newest ON pictures (created DESC, path DESC);
CREATE INDEX IF NOT EXISTS pictures_owner ON pictures (owner, created DESC);
CREATE INDEX IF NOT EXISTS pictures_folder ON pictures (folder);
CREATE TABLE IF NOT EXISTS folders (path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS favourites (viewer TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (viewer, path));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the outputs folder
    owner: str
    created: float
    prompt: str
    negative_prompt: str
    seed: int | None
    model: str
    model_hash: str
    width: int
    height: int
    infotext: str
    mtime_ns: int
    size: int
    favourite: bool = False

    @property
    def when(self) -> str:
        return datetime.datetime.fromtimestamp(self.created).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class Filters:
    text: str = ""  # in the prompt or the negative prompt, any case
    checkpoint: str = ""  # the infotext's Model (or Model hash), any case
    date_from: str = ""  # YYYY-MM-DD, inclusive
    date_to: str = ""
    seed: int | None = None
    favourites: bool = False


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    total: int
    number: int  # 1-based
    pages: int


@dataclass(frozen=True)
class ScanReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    folders_listed: int = 0
    seconds: float = 0.0


def _day(timestamp: float) -> str:
    return datetime.date.fromtimestamp(timestamp).isoformat()


def check_date(text: str, name: str) -> str:
    """A filter date as YYYY-MM-DD ('' = none); ValueError naming the field otherwise."""
    text = (text or "").strip()
    if not text:
        return ""
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"{name}: write the date as YYYY-MM-DD, e.g. 2024-05-31") from None


class HistoryIndex:
    """Thread-safe; one per outputs folder (the page keeps one)."""

    def __init__(self, outputs_dir: Path, db_file: Path | None = None) -> None:
        self.root = Path(outputs_dir)
        self.db_file = db_file or self.root / STATE_DIR / "history" / "index.sqlite"
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.db_file), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        version = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if version is None or int(version[0]) != SCHEMA_VERSION:
            with self._transaction():
                self._db.execute("DELETE FROM pictures")
                self._db.execute("DELETE FROM folders")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    # ------------------------------------------------------------------ scanning
    def _folders(self) -> Iterator[tuple[str, Path, int]]:
        """Every visible folder under the root: (relative path, path, mtime_ns)."""
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                stat = folder.stat()
                with os.scandir(folder) as entries:
                    children = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)
                                and not e.name.startswith(".")]
            except OSError:
                continue
            rel = folder.relative_to(self.root).as_posix() if folder != self.root else ""
            yield rel, folder, stat.st_mtime_ns
            stack.extend(children)

    def refresh(self, full: bool = False) -> ScanReport:
        """Bring the index up to date with the folder. ``full``: list every folder, not only changed ones
        (finds files rewritten in place, which leave their folder's time alone)."""
        start = time.perf_counter()
        added = updated = removed = listed = 0
        with self._lock:
            known_folders = dict(self._db.execute("SELECT path, mtime_ns FROM folders").fetchall())
            seen_folders: set[str] = set()
            for rel, folder, mtime in self._folders():
                seen_folders.add(rel)
                if not full and known_folders.get(rel) == mtime:
                    continue
                listed += 1
                a, u, r = self._refresh_folder(rel, folder)
                added, updated, removed = added + a, updated + u, removed + r
                self._db.execute("INSERT OR REPLACE INTO folders VALUES (?, ?)", (rel, mtime))
            gone = [f for f in known_folders if f not in seen_folders]
            with self._transaction():
                for rel in gone:
                    removed += self._db.execute("DELETE FROM pictures WHERE folder = ?", (rel,)).rowcount
                    self._db.execute("DELETE FROM folders WHERE path = ?", (rel,))
        return ScanReport(added, updated, removed, listed, time.perf_counter() - start)

    def _refresh_folder(self, rel: str, folder: Path) -> tuple[int, int, int]:
        known = {path: (mtime, size) for path, mtime, size in self._db.execute(
            "SELECT path, mtime_ns, size FROM pictures WHERE folder = ?", (rel,))}
        present: dict[str, tuple[Path, int, int]] = {}
        try:
            with os.scandir(folder) as entries:
                for item in entries:
                    if item.name.startswith(".") or not item.name.lower().endswith(IMAGE_SUFFIXES):
                        continue
                    try:
                        if not item.is_file(follow_symlinks=False):
                            continue
                        stat = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    key = f"{rel}/{item.name}" if rel else item.name
                    present[key] = (Path(item.path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            return 0, 0, 0
        added = updated = 0
        rows = []
        for key, (path, mtime, size) in present.items():
            old = known.get(key)
            if old == (mtime, size):
                continue
            info = read_picture(path)
            if info is None:
                continue
            created = mtime / 1e9
            rows.append((key, rel, mtime, size, created, _day(created), info.owner, info.prompt, info.negative_prompt,
                         info.seed, info.model, info.model_hash, info.width, info.height, info.infotext))
            if old is None:
                added += 1
            else:
                updated += 1
        gone = [key for key in known if key not in present]
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO pictures VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self._db.executemany("DELETE FROM pictures WHERE path = ?", [(key,) for key in gone])
        return added, updated, len(gone)

    # ------------------------------------------------------------------ reading
    _COLUMNS = ("path, owner, created, prompt, negative_prompt, seed, model, model_hash, width, height, infotext, "
                "mtime_ns, size")

    def _where(self, owner: str | None, filters: Filters, viewer: str) -> tuple[str, list[object]]:
        clauses: list[str] = []
        args: list[object] = []
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        text = filters.text.strip().lower()
        if text:
            clauses.append("(instr(lower(prompt), ?) > 0 OR instr(lower(negative_prompt), ?) > 0)")
            args += [text, text]
        checkpoint = filters.checkpoint.strip().lower()
        if checkpoint:
            clauses.append("(lower(model) = ? OR lower(model_hash) = ? OR instr(lower(model), ?) > 0)")
            args += [checkpoint, checkpoint, checkpoint]
        if filters.date_from:
            clauses.append("day >= ?")
            args.append(filters.date_from)
        if filters.date_to:
            clauses.append("day <= ?")
            args.append(filters.date_to)
        if filters.seed is not None:
            clauses.append("seed = ?")
            args.append(filters.seed)
        if filters.favourites:
            clauses.append("path IN (SELECT path FROM favourites WHERE viewer = ?)")
            args.append(viewer)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def page(self, owner: str | None, filters: Filters | None = None, number: int = 1, per_page: int = PER_PAGE,
             viewer: str = "") -> Page:
        """Page ``number`` (1-based) of ``owner``'s pictures (None: everyone's), newest first. ``viewer``'s
        favourites are marked (and, with ``filters.favourites``, are all that is shown)."""
        where, args = self._where(owner, filters or Filters(), viewer)
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM pictures{where}", args).fetchone()[0]
            pages = max(1, -(-total // per_page))
            number = min(max(1, number), pages)
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM pictures{where} ORDER BY created DESC, path DESC LIMIT ? OFFSET ?",
                [*args, per_page, (number - 1) * per_page]).fetchall()
            favourites = self._favourites_of(viewer, [row[0] for row in rows])
        return Page([_entry(row, row[0] in favourites) for row in rows], total, number, pages)

    def _favourites_of(self, viewer: str, paths: list[str]) -> set[str]:
        if not paths:
            return set()
        marks = ",".join("?" * len(paths))
        found = self._db.execute(f"SELECT path FROM favourites WHERE viewer = ? AND path IN ({marks})",
                                 [viewer, *paths]).fetchall()
        return {row[0] for row in found}

    def entry(self, path: str, viewer: str = "") -> Entry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLUMNS} FROM pictures WHERE path = ?", (path,)).fetchone()
            favourite = bool(row) and bool(self._favourites_of(viewer, [path]))
        return _entry(row, favourite) if row else None

    def checkpoints(self, owner: str | None) -> list[str]:
        """The checkpoints named by ``owner``'s pictures (None: everyone's), for the filter's choices."""
        where, args = self._where(owner, Filters(), "")
        extra = " AND " if where else " WHERE "
        with self._lock:
            rows = self._db.execute(f"SELECT DISTINCT model FROM pictures{where}{extra}model != '' ORDER BY model",
                                    args).fetchall()
        return [row[0] for row in rows]

    def set_favourite(self, viewer: str, path: str, favourite: bool) -> None:
        with self._lock:
            if favourite:
                self._db.execute("INSERT OR IGNORE INTO favourites VALUES (?, ?)", (viewer, path))
            else:
                self._db.execute("DELETE FROM favourites WHERE viewer = ? AND path = ?", (viewer, path))

    def forget(self, path: str) -> None:
        """A picture moved away (to the trash); the next refresh would notice too."""
        with self._lock:
            self._db.execute("DELETE FROM pictures WHERE path = ?", (path,))

    def move_favourites(self, old: str, new: str) -> None:
        """Favourite marks follow a picture that is restored under another name."""
        with self._lock:
            self._db.execute("UPDATE OR IGNORE favourites SET path = ? WHERE path = ?", (new, old))


_FIELDS = tuple(name.strip() for name in HistoryIndex._COLUMNS.split(","))


def _entry(row: tuple[object, ...], favourite: bool) -> Entry:
    values: dict[str, object] = dict(zip(_FIELDS, row, strict=True))
    return Entry(**values, favourite=favourite)  # type: ignore[arg-type]


class _Tx:
    """BEGIN ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN")
        return self.db

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")
