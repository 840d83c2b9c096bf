"""Running API jobs and reporting on them: Atelier's job queue, per-caller progress, interrupt and skip.

Jobs go into the app's job queue (``webui.queue``) under the caller's keys (and under the task id the client
gave, if any) and wait there without holding a thread, so Interrupt and Progress reach a queued job too, and
only the caller's own jobs: another user's job, or a browser's, is never reported or stopped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from ..jobs import JobControl, progress_text
from ..queue.service import Job, Owner, status_text
from .auth import Caller
from .convert import ApiJob
from .images import encode_png

if TYPE_CHECKING:
    from ..context import AppContext

_ACTIVE = ("loading", "running")


class ApiService:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._preview_lock = threading.Lock()
        self._previews: dict[str, tuple[int, str]] = {}  # job id -> (id of the preview image, its base64 PNG)

    # ------------------------------------------------------------------ jobs
    @staticmethod
    def owner(caller: Caller, task_id: str | None = None) -> Owner:
        return Owner(caller.user_key, (caller.owner,) + ((caller.task_owner(task_id),) if task_id else ()))

    async def generate(self, job: ApiJob, caller: Caller) -> Any:
        """Queue the job, wait for it without holding a thread, and return its GenerationResult (or raise)."""
        ctx = self.ctx
        control = JobControl(preview_every=ctx.settings.preview_every_n_steps)
        previous = ctx.manager.current_name
        queued = await run_in_threadpool(ctx.submit, job.request, self.owner(caller, job.task_id), control)
        try:
            result = await asyncio.wrap_future(queued.future)
            if not job.restore_checkpoint and job.request.checkpoint is not None:
                ctx.manager.select(queued.spec.needs.checkpoint)  # the override stays the current model
            return result
        finally:
            if job.restore_checkpoint and ctx.manager.current_name != previous:
                ctx.manager.select(previous)
            if job.keep_options:
                self._keep(job.keep_options)
            with self._preview_lock:
                self._previews.pop(control.job_id, None)

    async def in_queue(self, work: Callable[[], Any], caller: Caller, label: str) -> Any:
        """``work`` in the queue's turn on the head's engine (Extras)."""
        queued = await run_in_threadpool(self.ctx.submit_on_head, work, self.owner(caller), label)
        return await asyncio.wrap_future(queued.future)

    def _keep(self, options: dict[str, Any]) -> None:
        """override_settings without restore: the job's clip skip / VAE stay the API's defaults (not saved,
        as in A1111)."""
        names = {"CLIP_stop_at_last_layers": "default_clip_skip", "sd_vae": "default_vae"}
        ctx = self.ctx
        ctx.settings = ctx.settings.replace(**{names[k]: v for k, v in options.items() if k in names})

    async def load_checkpoint(self, name: str, caller: Caller) -> None:
        """Make ``name`` the current model, in the queue's turn so a running job keeps its model."""
        queued = await run_in_threadpool(self.ctx.submit_load, name, self.owner(caller))
        await asyncio.wrap_future(queued.future)

    def interrupt(self, caller: Caller, task_id: str | None = None) -> bool:
        """Stops the caller's running jobs and cancels their waiting ones (which then never run)."""
        return self.ctx.jobs.interrupt(caller.task_owner(task_id) if task_id else caller.owner)

    def skip(self, caller: Caller, task_id: str | None = None) -> bool:
        return self.ctx.jobs.skip(caller.task_owner(task_id) if task_id else caller.owner)

    # ------------------------------------------------------------------ progress
    def progress(self, caller: Caller, skip_current_image: bool = False, task_id: str | None = None) -> dict[str, Any]:
        """A1111's /progress for the caller's job: the running one, else the first one waiting."""
        queue = self.ctx.jobs
        jobs = queue.jobs_of(caller.task_owner(task_id) if task_id else caller.owner)
        job: Job | None = jobs[0] if jobs else None  # the running one, else the first waiting
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None, 0), "current_image": None,
                    "textinfo": None, "current_task": None}
        control = job.control
        p = control.progress
        image = None if skip_current_image else self._preview(control)
        waiting = queue.wait_estimate(job) if job.state == "queued" else None
        return {
            "progress": round(p.fraction, 4),
            "eta_relative": round(waiting if waiting is not None else p.eta_seconds or 0.0, 3),
            "state": _state(control, len(jobs)),
            "current_image": image,
            "textinfo": status_text(queue, job) if job.state == "queued" else progress_text(p),
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
