"""A RAM cache of loaded checkpoints, limited in bytes, least recently used evicted first.

One lock guards the cache's state. A model in use by a job is pinned and never evicted
under it. Room is made *before* a load, from the size the file header announces, so peak
memory stays near the budget plus the one model being loaded.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

V = TypeVar("V")


@dataclass
class _Slot(Generic[V]):
    value: V
    nbytes: int
    pins: int = 0


class ModelCache(Generic[V]):
    def __init__(self, budget_bytes: int, on_evict: Callable[[str, V], None] | None = None) -> None:
        self._budget = int(budget_bytes)
        self._on_evict = on_evict
        self._slots: OrderedDict[str, _Slot[V]] = OrderedDict()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ inspection
    @property
    def budget_bytes(self) -> int:
        return self._budget

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(slot.nbytes for slot in self._slots.values())

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._slots)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._slots

    # ------------------------------------------------------------------ changes
    def set_budget(self, budget_bytes: int) -> None:
        with self._lock:
            self._budget = int(budget_bytes)
            self._evict_until(lambda: self._total_locked() <= self._budget)

    def get(self, key: str) -> V | None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return None
            self._slots.move_to_end(key)
            return slot.value

    def peek(self, key: str) -> V | None:
        """The cached value without marking it recently used."""
        with self._lock:
            slot = self._slots.get(key)
            return slot.value if slot is not None else None

    def put(self, key: str, value: V, nbytes: int) -> None:
        with self._lock:
            if key in self._slots:
                self._slots.pop(key)
            self._slots[key] = _Slot(value, int(nbytes))
            # The newest entry stays even when it alone exceeds the budget: a job is about to use it.
            self._evict_until(lambda: self._total_locked() <= self._budget, keep=key)

    def make_room(self, nbytes: int) -> None:
        """Evict unpinned entries until `nbytes` more would fit in the budget."""
        with self._lock:
            self._evict_until(lambda: self._total_locked() + nbytes <= self._budget)

    def evict(self, key: str) -> bool:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.pins:
                return False
            self._drop_locked(key)
        gc.collect()
        return True

    def clear(self) -> None:
        with self._lock:
            for key in [k for k, s in self._slots.items() if not s.pins]:
                self._drop_locked(key)
        gc.collect()

    @contextmanager
    def use(self, key: str) -> Iterator[V]:
        """Pin `key` for the duration of a job so eviction never pulls it out from under the job."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                raise KeyError(key)
            slot.pins += 1
            self._slots.move_to_end(key)
        try:
            yield slot.value
        finally:
            with self._lock:
                slot.pins -= 1

    # ------------------------------------------------------------------ internals
    def _total_locked(self) -> int:
        return sum(slot.nbytes for slot in self._slots.values())

    def _evict_until(self, satisfied: Callable[[], bool], keep: str | None = None) -> None:
        dropped = False
        while not satisfied():
            victim = next((k for k, s in self._slots.items() if not s.pins and k != keep), None)
            if victim is None:
                break
            self._drop_locked(victim)
            dropped = True
        if dropped:
            gc.collect()

    def _drop_locked(self, key: str) -> None:
        slot = self._slots.pop(key)
        log.info("Evicting %s from the RAM cache (%.2f GiB)", key, slot.nbytes / 2**30)
        if self._on_evict is not None:
            self._on_evict(key, slot.value)
