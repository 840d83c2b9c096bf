"""Finding and loading extensions, each in isolation, with a start-up table of what happened.

Sources: folders ``extensions/<folder>/extension.toml`` and installed packages that declare an entry
point in the ``atelier.extensions`` group (``name = "package.module:setup"``; the module may set
``ATELIER_API = ">=1,<2"``). Skipped, with the reason in the table: folders ending in ``.disabled``,
extensions disabled in the Extensions tab, API-version mismatches and missing requirements.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import API_VERSION, ExtensionAPI
from .hooks import Registry
from .manifest import Manifest, ManifestError, missing_requirements, read_manifest
from .store import ExtensionStore

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "atelier.extensions"
DISABLED_SUFFIX = ".disabled"

LOADED, FAILED, DISABLED, INCOMPATIBLE, NEEDS, SWITCHED_OFF = (
    "loaded", "failed", "disabled", "incompatible", "needs requirements", "switched off")


@dataclass
class ExtensionRecord:
    id: str
    name: str
    version: str = ""
    source: str = "folder"  # folder | package
    path: Path | None = None
    status: str = LOADED
    seconds: float = 0.0
    error: str = ""
    missing: list[str] = field(default_factory=list)
    manifest: Manifest | None = None


def _module_name(ext_id: str) -> str:
    return "atelier_ext_" + re.sub(r"\W", "_", ext_id)


class ExtensionManager:
    def __init__(self, folder: Path, store: ExtensionStore, entry_points: bool = True) -> None:
        self.folder = folder
        self.store = store
        self.entry_points = entry_points
        self.registry = Registry(store)
        self.registry.on_failure = self._switched_off
        self.records: dict[str, ExtensionRecord] = {}

    def _switched_off(self, ext_id: str, why: str) -> None:
        record = self.records.get(ext_id)
        if record is not None:
            record.status, record.error = SWITCHED_OFF, why

    # ------------------------------------------------------------------ discovery
    def load_all(self) -> list[ExtensionRecord]:
        if self.folder.is_dir():
            for path in sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
                self._load_folder(path)
        if self.entry_points:
            from importlib.metadata import entry_points

            for point in entry_points(group=ENTRY_POINT_GROUP):
                self._load_package(point)
        for line in self.table().splitlines():
            log.info(line)
        return list(self.records.values())

    def _add(self, record: ExtensionRecord) -> ExtensionRecord:
        if record.id in self.records:
            record.status, record.error = FAILED, f"id {record.id!r} is already used by another extension"
            self.records[f"{record.id} ({record.path or record.source})"] = record
        else:
            self.records[record.id] = record
        return record

    def _load_folder(self, path: Path) -> None:
        disabled_folder = path.name.endswith(DISABLED_SUFFIX)
        try:
            manifest = read_manifest(path)
        except ManifestError as exc:
            status = DISABLED if disabled_folder else FAILED
            self._add(ExtensionRecord(path.name, path.name, path=path, status=status, error=str(exc)))
            return
        record = self._add(ExtensionRecord(manifest.id, manifest.name, manifest.version, "folder", path,
                                           manifest=manifest))
        if record.status == FAILED:
            return
        if disabled_folder or manifest.id in self.store.disabled:
            record.status = DISABLED
            record.error = "folder ends in .disabled" if disabled_folder else "disabled in the Extensions tab"
            return
        if not manifest.supports(API_VERSION):
            record.status = INCOMPATIBLE
            record.error = f"needs extension API {manifest.api}; this Atelier provides {API_VERSION}"
            return
        record.missing = missing_requirements(manifest.requirements)
        if record.missing:
            record.status = NEEDS
            record.error = "missing: " + ", ".join(record.missing) + " (install them from the Extensions tab)"
            return
        module_path, _, function = manifest.entry.partition(":")
        self._run_setup(record, lambda: self._import_from_folder(manifest.id, path, module_path), function)

    def _load_package(self, point: Any) -> None:
        record = self._add(ExtensionRecord(point.name, point.name, source="package"))
        if record.status == FAILED:
            return
        if point.dist is not None:
            record.version = point.dist.version
        if point.name in self.store.disabled:
            record.status, record.error = DISABLED, "disabled in the Extensions tab"
            return
        module_path, _, function = point.value.partition(":")
        self._run_setup(record, lambda: importlib.import_module(module_path), function.strip())

    @staticmethod
    def _import_from_folder(ext_id: str, folder: Path, module_path: str) -> Any:
        """The extension's folder as its own package (atelier_ext_<id>), so two extensions' ``main.py``
        never collide and relative imports work."""
        package = _module_name(ext_id)
        ExtensionManager._drop_modules(ext_id)  # a fresh import, never an older copy's modules
        init = folder / "__init__.py"
        spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(folder)]) \
            if init.exists() else importlib.machinery.ModuleSpec(package, None, is_package=True)
        if spec is None:
            raise ImportError(f"{folder}: cannot be imported as a package")
        if spec.submodule_search_locations is None or not init.exists():
            spec.submodule_search_locations = [str(folder)]
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        if init.exists():
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        return importlib.import_module(f"{package}.{module_path}")

    def _run_setup(self, record: ExtensionRecord, importer: Callable[[], Any], function: str) -> None:
        start = time.perf_counter()
        stage = "import"
        try:
            module = importer()
            if record.source == "package":
                spec = getattr(module, "ATELIER_API", ">=1,<2")
                manifest = Manifest(record.id, record.name, record.version, spec, "")
                if not manifest.supports(API_VERSION):
                    record.status = INCOMPATIBLE
                    record.error = f"needs extension API {spec}; this Atelier provides {API_VERSION}"
                    return
            setup = getattr(module, function, None)
            if not callable(setup):
                raise AttributeError(f"no function {function!r} in {module.__name__}")
            stage = "setup"
            setup(ExtensionAPI(record.id, record.path, self.registry))
            record.status = LOADED
        except BaseException as exc:  # SystemExit and friends included: an extension never stops the app
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.registry.forget(record.id)
            self._drop_modules(record.id)
            record.status = FAILED
            record.error = f"{stage} failed: {type(exc).__name__}: {exc}"
            log.debug("Extension %s failed", record.id, exc_info=exc)
        finally:
            record.seconds = time.perf_counter() - start

    @staticmethod
    def _drop_modules(ext_id: str) -> None:
        package = _module_name(ext_id)
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]

    # ------------------------------------------------------------------ reporting
    def table(self) -> str:
        rows = [("Extension", "Version", "Status", "Load time", "Note")]
        for record in self.records.values():
            rows.append((record.id, record.version, record.status, f"{record.seconds * 1000:.0f} ms",
                         record.error))
        if len(rows) == 1:
            return "Extensions: none found in " + str(self.folder)
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
                         + ("  " + row[4] if row[4] else "") for row in rows)

    def close(self) -> None:
        self.registry.close()
