"""Helpers the benchmarks share: scratch folder, a context over a models folder, RSS sampling, medians."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

WORK = Path(__file__).resolve().parent / "_work"


def work_dir(name: str) -> Path:
    path = WORK / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_context(models_dir: Path, outputs_dir: Path, **overrides):
    from webui.config import load_settings
    from webui.context import AppContext

    settings = load_settings(
        {"settings_file": models_dir / "bench-settings.json", "models_dir": models_dir, "outputs_dir": outputs_dir,
         "device": "cpu", **overrides},
        env={},
    )
    return AppContext.create(settings)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_bytes() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


class PeakRss:
    """Samples this process's RSS every few milliseconds in a thread and keeps the peak."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process(os.getpid())
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
