"""Running one user's job from the UI: the engine works in a thread while the event handler reports
progress (step i/n, ETA) and live previews to that user's page.

Jobs reach this code one at a time: every Generate button shares one Gradio queue with a
concurrency limit of 1, so jobs run FIFO and each waiting user sees their own queue position.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..jobs import JobControl, Progress, progress_text  # noqa: F401 (the tabs import it from here)
from ..pipelines.generate import GenerationResult
from ..pipelines.request import GenerationRequest

if TYPE_CHECKING:
    from ..context import AppContext

POLL_SECONDS = 0.25


@dataclass
class JobUpdate:
    """What the page shows while a job runs (preview set when a new one arrived) or when it ends."""

    progress: Progress
    preview: Any = None
    result: GenerationResult | None = None
    error: BaseException | None = None


@dataclass
class _Outcome:
    result: GenerationResult | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def run_job(ctx: AppContext, owner: str, request: GenerationRequest,
            work: Callable[[JobControl], GenerationResult] | None = None) -> Iterator[JobUpdate]:
    """Start ``request`` (or ``work``, a script's job) for ``owner`` and yield updates until it ends; the last
    update carries the result or the error. Interrupt/Skip reach the job through ``ctx.jobs`` by owner."""
    control = ctx.jobs.start(owner, JobControl(preview_every=ctx.settings.preview_every_n_steps))
    outcome = _Outcome()
    changed = threading.Event()

    def on_progress(_: Progress) -> None:
        changed.set()

    control.listener = on_progress

    def run() -> None:
        try:
            if work is not None:
                outcome.result = work(control)
            else:
                outcome.result = ctx.run_job(request, control)
        except BaseException as exc:  # handed to the page; the server goes on
            outcome.error = exc
        finally:
            outcome.done.set()
            changed.set()

    thread = threading.Thread(target=run, name=f"job-{control.job_id[:8]}", daemon=True)
    thread.start()
    shown_preview = None
    try:
        while not outcome.done.is_set():
            changed.wait(POLL_SECONDS)
            changed.clear()
            preview = control.progress.preview
            fresh = preview is not None and preview is not shown_preview
            shown_preview = preview if fresh else shown_preview
            yield JobUpdate(control.progress, preview if fresh else None)
        thread.join()
    finally:
        if not outcome.done.is_set():  # the page went away: stop the work it no longer waits for
            control.interrupt()
        ctx.jobs.finish(owner, control)
    yield JobUpdate(control.progress, result=outcome.result, error=outcome.error)


def info_html(infotext: str, warnings: list[str], interrupted: bool) -> str:
    """The generation info under the gallery; everything from the prompt is escaped."""
    notes = "".join(f"<p class='atelier-warning'>{html.escape(w)}</p>" for w in warnings)
    if interrupted:
        notes += "<p class='atelier-warning'>Interrupted.</p>"
    return f"<pre class='atelier-infotext' style='white-space:pre-wrap'>{html.escape(infotext)}</pre>{notes}"


def owner_of(request: Any) -> str:
    """Whose job this is: the browser tab's session (Gradio's session hash), or the API caller's."""
    return getattr(request, "session_hash", None) or "anonymous"


