"""Running one user's job from the page: the job waits in Atelier's queue (``webui.queue``) while the event
handler streams its place in line, then its progress (step i/n, time left) and live previews, to the page.

A job belongs to its owner, not to the page: when the page goes away (a reload, a lost connection) the job
goes on, and the reloaded page finds it (``reconnect``) and shows its progress and its pictures.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..errors import AtelierError
from ..jobs import JobControl, Progress, progress_text  # noqa: F401 (the tabs import it from here)
from ..pipelines.generate import GenerationResult
from ..pipelines.request import GenerationRequest
from ..queue.service import Job, Owner, status_text

if TYPE_CHECKING:
    from ..context import AppContext

POLL_SECONDS = 0.25
BROWSER_COOKIE = "atelier-browser"  # set by browser_id.BrowserIdMiddleware: one random id per browser


@dataclass
class JobUpdate:
    """What the page shows while a job waits or runs (preview set when a new one arrived) or when it ends."""

    progress: Progress
    preview: Any = None
    result: GenerationResult | None = None
    error: BaseException | None = None
    text: str = ""


def run_job(ctx: AppContext, owner: Owner, request: GenerationRequest,
            work: Callable[[JobControl], GenerationResult] | None = None) -> Iterator[JobUpdate]:
    """Queue ``request`` (or ``work``, a script's job) for ``owner`` and yield updates until it ends; the last
    update carries the result or the error. Interrupt/Skip reach the job through ``ctx.jobs`` by owner."""
    job = ctx.submit(request, owner, JobControl(preview_every=ctx.settings.preview_every_n_steps), work)
    yield from follow(ctx, job)


def follow(ctx: AppContext, job: Job) -> Iterator[JobUpdate]:
    """Updates of a queued or running job until it ends. Stopping early (the page went away) leaves the job
    running: it belongs to its owner, who may come back for it."""
    changed = threading.Event()
    stop = job.watch(changed.set)
    shown_preview = None
    try:
        while not job.done:
            changed.wait(POLL_SECONDS)
            changed.clear()
            preview = job.progress.preview
            fresh = preview is not None and preview is not shown_preview
            shown_preview = preview if fresh else shown_preview
            yield JobUpdate(job.progress, preview if fresh else None, text=status_text(ctx.jobs, job))
    finally:
        stop()
    job.delivered = True
    yield JobUpdate(job.progress, result=job.result() if job.error() is None else None, error=job.error())


def reconnect(ctx: AppContext, owner: Owner, mode: str) -> Job | None:
    """The job a reloaded page of ``mode`` shows: the owner's running or waiting one from that tab, else the
    last one that ended after its page went away."""
    jobs = [j for j in ctx.jobs.jobs_of(owner.key, finished=True) if j.spec.mode == mode and j.spec.kind == "generate"]
    live = [j for j in jobs if not j.done]
    if live:
        return live[0]
    unseen = [j for j in jobs if not j.delivered and j.state == "done" and not j.released]
    return unseen[-1] if unseen else None


def progress_bar(progress: Progress | None, text: str = "") -> str:
    if progress is None:
        return ""
    percent = round(progress.fraction * 100)
    return (f"<div class='atelier-progress' data-percent='{percent}'><div class='atelier-progress-fill' "
            f"style='width:{percent}%'></div><span>{html.escape(text)}</span></div>")


def show_updates(updates: Iterator[JobUpdate], log: Any) -> Iterator[tuple[Any, ...]]:
    """A generation tab's outputs (gallery, info, preview, progress, results) for each update of one job."""
    last = None
    for update in updates:
        last = update
        if update.result is None and update.error is None:
            preview = gr.update(value=update.preview, visible=True) if update.preview is not None else gr.skip()
            yield gr.skip(), gr.skip(), preview, progress_bar(update.progress, update.text), gr.skip()
    assert last is not None
    if last.error is not None:
        if isinstance(last.error, AtelierError):
            raise gr.Error(str(last.error))
        log.error("Generation failed", exc_info=last.error)
        raise gr.Error(f"Generation failed: {last.error}")
    result = last.result
    if result is None:
        raise gr.Error("Generation ended without a result")
    shown = [str(p) for p in result.paths] if result.paths else list(result.images)
    first = result.infotexts[0] if result.infotexts else ""
    state = {"paths": [str(p) for p in result.paths], "infotexts": list(result.infotexts), "selected": 0}
    yield shown, info_html(first, result.warnings, result.interrupted), gr.update(visible=False, value=None), "", \
        state


def info_html(infotext: str, warnings: list[str], interrupted: bool) -> str:
    """The generation info under the gallery; everything from the prompt is escaped."""
    notes = "".join(f"<p class='atelier-warning'>{html.escape(w)}</p>" for w in warnings)
    if interrupted:
        notes += "<p class='atelier-warning'>Interrupted.</p>"
    return f"<pre class='atelier-infotext' style='white-space:pre-wrap'>{html.escape(infotext)}</pre>{notes}"


def _browser_id(request: Any) -> str | None:
    headers = getattr(request, "headers", None) or {}
    try:
        cookie = SimpleCookie(headers.get("cookie", "") or "")
    except CookieError:
        return None
    morsel = cookie.get(BROWSER_COOKIE)
    value = morsel.value if morsel is not None else ""
    return value if value.isalnum() and 16 <= len(value) <= 64 else None


def owner_of(request: Any) -> Owner:
    """Whose job this is. Turns (fairness) go by the signed-in user, else the client's address; the job is
    seen and stopped by that user on any of their pages, or (no sign-in) by the browser that asked, which
    keeps it across reloads (a cookie), else by the address."""
    user = getattr(request, "username", None)
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) or "unknown"
    if user:
        return Owner(f"user:{user}", (f"user:{user}",))
    browser = _browser_id(request)
    return Owner(f"host:{host}", (f"browser:{browser}",) if browser else (f"host:{host}",))
