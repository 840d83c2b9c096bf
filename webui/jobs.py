"""Per-job control and progress: interrupt and skip belong to one job, never to the whole app.

Which jobs belong to whom, and the queue they wait in, is the job service's (``webui.queue.service``)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    job_id: str
    state: str = "queued"  # queued | loading | running | done | interrupted | failed | cancelled
    step: int = 0  # steps finished in the current batch
    steps: int = 0  # steps per batch (after denoising strength)
    batch: int = 0  # index of the current batch (0-based)
    batches: int = 1
    started: float | None = None
    preview: Any = None  # PIL image, every N steps
    text: str = ""

    @property
    def fraction(self) -> float:
        if self.steps <= 0 or self.batches <= 0:
            return 0.0
        done = self.batch * self.steps + self.step
        return min(1.0, done / (self.batches * self.steps))

    @property
    def eta_seconds(self) -> float | None:
        frac = self.fraction
        if self.started is None or frac <= 0.0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed * (1.0 - frac) / frac


ProgressListener = Callable[[Progress], None]


@dataclass
class JobControl:
    """Handed to exactly one job. `interrupt()` stops it within one denoising step; `skip()` ends the
    current batch and moves on to the next one."""

    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    preview_every: int = 0  # 0 = no previews
    listener: ProgressListener | None = None
    _interrupted: threading.Event = field(default_factory=threading.Event)
    _skipped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.progress = Progress(self.job_id)

    def interrupt(self) -> None:
        self._interrupted.set()

    def skip(self) -> None:
        self._skipped.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    @property
    def skipped(self) -> bool:
        return self._skipped.is_set()

    def clear_skip(self) -> None:
        self._skipped.clear()

    def update(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.progress, name, value)
        if self.listener is not None:
            self.listener(self.progress)


def progress_text(progress: Progress) -> str:
    """One line for people: the page's progress line and the API's ``textinfo``."""
    if progress.state == "queued":
        return "Waiting…"
    if progress.state == "cancelled":
        return "Cancelled before it started"
    if progress.state == "loading":
        return "Loading the model…"
    text = f"Step {progress.step}/{progress.steps}"
    if progress.batches > 1:
        text = f"Batch {progress.batch + 1}/{progress.batches}, {text.lower()}"
    eta = progress.eta_seconds
    if eta is not None:
        text += f", about {eta:.0f} s left"
    return text
