"""Extension state that outlives a restart: which extensions are disabled, and their settings' values.

One JSON file beside settings.json, written atomically.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from ..fileio import write_text_atomic

log = logging.getLogger(__name__)


class ExtensionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("Extension settings %s unreadable (%s); starting from defaults", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        write_text_atomic(self.path, json.dumps(self._data, indent=2, sort_keys=True))

    @property
    def disabled(self) -> set[str]:
        with self._lock:
            return set(self._data.get("disabled", []))

    def set_enabled(self, ext_id: str, enabled: bool) -> None:
        with self._lock:
            disabled = set(self._data.get("disabled", []))
            (disabled.discard if enabled else disabled.add)(ext_id)
            self._data["disabled"] = sorted(disabled)
            self._write()

    def value(self, ext_id: str, key: str, default: Any) -> Any:
        with self._lock:
            return self._data.get("settings", {}).get(ext_id, {}).get(key, default)

    def set_values(self, ext_id: str, values: dict[str, Any]) -> None:
        with self._lock:
            self._data.setdefault("settings", {}).setdefault(ext_id, {}).update(values)
            self._write()
