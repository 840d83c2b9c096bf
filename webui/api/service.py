"""Running API jobs and reporting on them: the job queue's turn, per-caller progress, interrupt and skip.

Jobs are registered in the app's JobRegistry under the caller's owner key (and under the task id the
client gave, if any) before they wait in the queue, so Interrupt and Progress reach a queued job too,
and only the caller's own jobs: another user's job, or a browser's, is never reported or stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..jobs import JobControl, progress_text
from .auth import Caller
from .convert import ApiJob
from .images import encode_png

if TYPE_CHECKING:
    from ..context import AppContext

T = TypeVar("T")
# Runs work in the job queue's turn (the UI's Gradio queue) and returns its result.
QueueRunner = Callable[[Callable[[], Any], Request], Awaitable[Any]]

_ACTIVE = ("loading", "running")


class LockQueue:
    """A stand-in queue when no UI queue is given: one job at a time on a worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    async def __call__(self, work: Callable[[], T], request: Request) -> T:
        def locked() -> T:
            with self._lock:
                return work()

        return await run_in_threadpool(locked)


class ApiService:
    def __init__(self, ctx: AppContext, queue: QueueRunner | None = None) -> None:
        self.ctx = ctx
        self.queue = queue or LockQueue()
        self._preview_lock = threading.Lock()
        self._previews: dict[str, tuple[int, str]] = {}  # job id -> (id of the preview image, its base64 PNG)

    # ------------------------------------------------------------------ jobs
    def _owners(self, caller: Caller, task_id: str | None) -> list[str]:
        return [caller.owner] + ([caller.task_owner(task_id)] if task_id else [])

    async def generate(self, job: ApiJob, caller: Caller, request: Request) -> Any:
        """Wait for the queue's turn, run the job, and return its GenerationResult (or raise its error)."""
        ctx = self.ctx
        control = JobControl(preview_every=ctx.settings.preview_every_n_steps)
        owners = self._owners(caller, job.task_id)
        for owner in owners:
            ctx.jobs.start(owner, control)

        def work() -> Any:
            manager = ctx.manager
            previous = manager.current_name
            try:
                return ctx.run_job(job.request, control)
            finally:
                if job.restore_checkpoint and manager.current_name != previous:
                    manager.select(previous)
                if job.keep_options:
                    self._keep(job.keep_options)

        try:
            return await self.queue(work, request)
        finally:
            for owner in owners:
                ctx.jobs.finish(owner, control)
            with self._preview_lock:
                self._previews.pop(control.job_id, None)

    def _keep(self, options: dict[str, Any]) -> None:
        """override_settings without restore: the job's clip skip / VAE stay the API's defaults (not saved,
        as in A1111)."""
        names = {"CLIP_stop_at_last_layers": "default_clip_skip", "sd_vae": "default_vae"}
        ctx = self.ctx
        ctx.settings = ctx.settings.replace(**{names[k]: v for k, v in options.items() if k in names})

    async def load_checkpoint(self, name: str, request: Request) -> None:
        """Make ``name`` the current model, in the queue's turn so a running job keeps its model."""
        await self.queue(lambda: self.ctx.manager.load(name), request)

    def interrupt(self, caller: Caller, task_id: str | None = None) -> bool:
        return self.ctx.jobs.interrupt(caller.task_owner(task_id) if task_id else caller.owner)

    def skip(self, caller: Caller, task_id: str | None = None) -> bool:
        return self.ctx.jobs.skip(caller.task_owner(task_id) if task_id else caller.owner)

    # ------------------------------------------------------------------ progress
    def progress(self, caller: Caller, skip_current_image: bool = False, task_id: str | None = None) -> dict[str, Any]:
        """A1111's /progress for the caller's job: the running one, else the first one waiting."""
        jobs = self.ctx.jobs.get(caller.task_owner(task_id) if task_id else caller.owner)
        running = [c for c in jobs if c.progress.state in _ACTIVE]
        waiting = [c for c in jobs if c.progress.state == "queued"]
        control = (running or waiting)[0] if running or waiting else None
        if control is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None, 0), "current_image": None,
                    "textinfo": None, "current_task": None}
        p = control.progress
        image = None if skip_current_image else self._preview(control)
        return {
            "progress": round(p.fraction, 4),
            "eta_relative": round(p.eta_seconds or 0.0, 3),
            "state": _state(control, len(jobs)),
            "current_image": image,
            "textinfo": progress_text(p),
            "current_task": control.job_id,
        }

    def _preview(self, control: JobControl) -> str | None:
        preview = control.progress.preview
        if preview is None:
            return None
        with self._preview_lock:
            cached = self._previews.get(control.job_id)
            if cached is not None and cached[0] == id(preview):
                return cached[1]
        encoded = encode_png(preview)  # each preview is encoded once, however often it is polled
        with self._preview_lock:
            self._previews[control.job_id] = (id(preview), encoded)
        return encoded


def _state(control: JobControl | None, jobs: int) -> dict[str, Any]:
    """A1111's shared.state.dict() for one job."""
    if control is None:
        return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0, "queued_jobs": 0}
    p = control.progress
    started = time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() - (time.monotonic() - p.started))) \
        if p.started is not None else "0"
    return {
        "skipped": control.skipped,
        "interrupted": control.interrupted,
        "stopping_generation": False,
        "job": f"task({control.job_id})" if p.state in _ACTIVE else "",
        "job_count": p.batches,
        "job_timestamp": started,
        "job_no": p.batch,
        "sampling_step": p.step,
        "sampling_steps": p.steps,
        "queued_jobs": jobs,  # the caller's jobs, running and waiting (not A1111's)
    }
