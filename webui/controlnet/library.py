"""ControlNetLibrary: the ControlNet models on offer, and loading them into the checkpoint RAM cache.

Loaded ControlNets live in the same byte-budgeted LRU cache as checkpoints (``webui/models/cache.py``), under
``ControlNet/...`` keys, so together they stay within the one RAM budget: loading a ControlNet may evict the
least recently used checkpoint or ControlNet, and a job pins the ones it uses. A ControlNet's config depends on
the checkpoint's UNet (see ``layout.build_config``), so the key carries a fingerprint of it; every checkpoint of
one family shares the same entry.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..models.cache import ModelCache
from ..models.header import CorruptCheckpointError, read_header
from . import files, layout
from .annotator_store import AnnotatorStore
from .files import ControlNetEntry
from .loader import ControlNetSource, LoadedControlNet, check_fits, inspect, load_controlnet
from .units import UnitError

KEY_PREFIX = "ControlNet/"


def unet_fingerprint(unet_config: dict[str, Any]) -> str:
    shared = {k: unet_config.get(k) for k in (*layout.UNET_FIELDS, "block_out_channels", "layers_per_block",
                                             "cross_attention_dim", "addition_embed_type", "out_channels")}
    return hashlib.sha1(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:8]


def estimate_nbytes(entry: ControlNetEntry, dtype: torch.dtype) -> int:
    """Bytes the loaded model will take, from the header when there is one (else the file's size)."""
    size = torch.tensor([], dtype=dtype).element_size()
    if entry.weights.suffix.lower() == ".safetensors":
        try:
            header = read_header(entry.weights)
        except CorruptCheckpointError:
            return 0
        prefix = "control_model." if any(k.startswith("control_model.") for k in header.tensors) else ""
        return sum(v.numel * size for k, v in header.tensors.items() if k.startswith(prefix))
    try:
        return entry.weights.stat().st_size
    except OSError:
        return 0


class ControlNetLibrary:
    def __init__(self, folders: list[Path], builtin_dir: Path | None, cache: ModelCache[Any],
                 annotators_dir: Path | None = None, device: torch.device | str = "cpu") -> None:
        self.folders = [Path(f) for f in folders]
        self.annotators_dir = annotators_dir  # models/ControlNetAnnotators: weights of the annotators
        # The annotator networks (HED, PiDiNet, line art...), loaded on first use, a few kept; preprocess.run
        # takes this store as its ``annotators_dir``.
        self.annotators = AnnotatorStore(annotators_dir, device)
        self.builtin_dir = builtin_dir
        self.cache = cache
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._entries: list[ControlNetEntry] = []
        self._in_use: dict[int, int] = {}  # pins by the running job: id of the `use` -> bytes
        self.refresh()

    def refresh(self) -> list[ControlNetEntry]:
        found = files.scan(self.folders, self.builtin_dir)
        with self._lock:
            self._entries = found
        return list(found)

    def entries(self) -> list[ControlNetEntry]:
        with self._lock:
            return list(self._entries)

    def titles(self) -> list[str]:
        """``GET /controlnet/model_list``'s list: "name [hash]" of every model, user models first by name."""
        return [entry.title for entry in self.entries()]

    def find(self, query: str) -> ControlNetEntry | None:
        entry = files.find(self.entries(), query)
        if entry is None and query.strip() not in ("", files.NONE):
            entry = files.find(self.refresh(), query)  # a file added since the last listing
        return entry

    def resolve(self, query: str, field: str = "model") -> ControlNetEntry:
        """The entry ``query`` names, or UnitError naming ``field`` and the models there are."""
        entry = self.find(query)
        if entry is not None:
            return entry
        titles = self.titles()
        known = ", ".join(titles[:12]) + (", ..." if len(titles) > 12 else "") if titles else "none installed"
        folders = " or ".join(str(f) for f in self.folders[:2])
        raise UnitError(field, f"ControlNet model {query!r} not found (available: {known}; put models in {folders})")

    def _key(self, entry: ControlNetEntry, unet_config: dict[str, Any], dtype: torch.dtype) -> str:
        return f"{KEY_PREFIX}{entry.name}|{entry.mtime_ns}|{str(dtype).replace('torch.', '')}|" \
               f"{unet_fingerprint(unet_config)}"

    def loaded(self) -> list[str]:
        """Cache keys of the ControlNets in RAM, least recently used first."""
        return [key for key in self.cache.keys() if key.startswith(KEY_PREFIX)]

    @contextmanager
    def use(self, entry: ControlNetEntry, unet_config: dict[str, Any], dtype: torch.dtype,
            checkpoint: str = "the checkpoint") -> Iterator[LoadedControlNet]:
        """The loaded model for ``entry`` (loaded into the cache if needed), pinned while the block runs.
        Raises ControlNetFileError naming the file when it cannot be used with this checkpoint."""
        key = self._key(entry, unet_config, dtype)
        with self._load_lock:
            model = self.cache.get(key)
            if model is None:
                source = ControlNetSource(entry.label, entry.weights, entry.config)
                early = inspect(source)  # a wrong or damaged file fails before the cache evicts anything
                if early is not None:
                    check_fits(source, early[1], unet_config, checkpoint)
                expected = estimate_nbytes(entry, dtype)
                if expected:
                    self.cache.make_room(expected)
                model = load_controlnet(source, unet_config, dtype, checkpoint)
                self.cache.put(key, model, model.nbytes)
        with self.cache.use(key) as pinned:
            with self._lock:
                self._in_use[id(pinned)] = pinned.nbytes
            try:
                yield pinned
            finally:
                with self._lock:
                    self._in_use.pop(id(pinned), None)

    def in_use_nbytes(self) -> int:
        """Bytes of the ControlNets the running job uses (the offload plan counts them with the checkpoint)."""
        with self._lock:
            return sum(self._in_use.values())
