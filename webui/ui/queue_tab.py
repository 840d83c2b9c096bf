"""The Queue tab: your jobs (waiting with their place in line and time to wait, running with their progress,
finished lately), cancelling a waiting one, and the workers that run them. It refreshes itself every second
while it is open, and shows the same after a reload: jobs belong to you, not to the page.

Thin over ``ctx.jobs`` (webui/queue/service.py); everything from a prompt is escaped.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..queue.service import Job, status_text
from .runner import owner_of

if TYPE_CHECKING:
    from ..context import AppContext

REFRESH_SECONDS = 1.0
FINISHED_SHOWN = 10
STATES = {"queued": "waiting", "running": "running", "done": "done", "failed": "failed", "cancelled": "cancelled"}


@dataclass
class QueueTab:
    jobs: gr.HTML
    workers: gr.HTML
    waiting: gr.Dropdown
    cancel: gr.Button
    timer: gr.Timer


def _row(ctx: AppContext, job: Job, now: float) -> str:
    state = STATES.get(job.state, job.state)
    if job.state in ("queued", "running"):
        detail = status_text(ctx.jobs, job)
    elif job.state == "failed":
        error = job.error()
        detail = str(error) if error is not None else "failed"
    else:
        ago = now - (job.finished or now)
        detail = f"{ago:.0f} s ago" + (" (interrupted)" if job.progress.state == "interrupted" else "")
    where = job.worker or ""
    notes = "".join(f"<br><small>{html.escape(n)}</small>" for n in job.notes)
    return (f"<tr data-job='{html.escape(job.id)}' data-state='{html.escape(job.state)}'><td>{html.escape(state)}</td>"
            f"<td>{html.escape(job.spec.label)}{notes}</td><td>{html.escape(detail)}</td>"
            f"<td>{html.escape(where)}</td></tr>")


def jobs_html(ctx: AppContext, jobs: list[Job]) -> str:
    if not jobs:
        return "<p id='queue-empty'>You have no jobs waiting or running.</p>"
    now = time.monotonic()
    rows = "".join(_row(ctx, job, now) for job in jobs)
    counts = ctx.jobs.counts()
    summary = (f"<p>{counts['running']} running and {counts['waiting']} waiting in all, from "
               f"{counts['users']} user{'s' if counts['users'] != 1 else ''}.</p>")
    return (f"{summary}<table class='atelier-queue'><thead><tr><th>State</th><th>Job</th><th>Progress</th>"
            f"<th>Worker</th></tr></thead><tbody>{rows}</tbody></table>")


def workers_html(ctx: AppContext) -> str:
    rows = []
    for view in ctx.jobs.workers():
        role = "extras only" if view.head_only else (html.escape(view.busy) if view.busy else "idle")
        loaded = html.escape(", ".join(view.loaded[:3])) if view.loaded else "—"
        rows.append(f"<tr><td>{html.escape(view.name)}</td><td>{html.escape(view.device)}</td><td>{role}</td>"
                    f"<td>{loaded}</td><td>{view.jobs_run}</td></tr>")
    return ("<table class='atelier-workers'><thead><tr><th>Worker</th><th>Device</th><th>Now</th>"
            f"<th>Loaded</th><th>Jobs run</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _mine(ctx: AppContext, key: str) -> list[Job]:
    jobs = ctx.jobs.jobs_of(key, finished=True)
    live = [j for j in jobs if not j.done]
    finished = [j for j in jobs if j.done][-FINISHED_SHOWN:][::-1]  # newest first
    return live + finished


def build(ctx: AppContext) -> QueueTab:
    gr.Markdown("Your jobs, in the order they will run. Everyone takes turns: one person's long batch does "
                "not hold up the others. A job keeps running when you close or reload the page.")
    jobs = gr.HTML("", elem_id="queue-jobs")
    with gr.Row():
        waiting = gr.Dropdown(label="Waiting job", choices=[], value=None, elem_id="queue-waiting", scale=4)
        cancel = gr.Button("✖ Cancel it", elem_id="queue-cancel", scale=1)
    status = gr.Markdown("", elem_id="queue-status")
    gr.Markdown("### Workers")
    workers = gr.HTML("", elem_id="queue-workers")
    timer = gr.Timer(REFRESH_SECONDS)

    def refresh(request: gr.Request, chosen: str | None):
        key = owner_of(request).key
        mine = _mine(ctx, key)
        choices = [(f"{j.spec.label} ({status_text(ctx.jobs, j)})", j.id) for j in mine if j.state == "queued"]
        ids = [value for _, value in choices]
        return (jobs_html(ctx, mine), workers_html(ctx),
                gr.update(choices=choices, value=chosen if chosen in ids else (ids[0] if ids else None)))

    def on_cancel(request: gr.Request, chosen: str | None):
        if not chosen:
            return "Choose a waiting job first."
        if ctx.jobs.cancel(chosen, owner_of(request).key):
            return "Cancelled: that job will not run."
        return "That job is no longer waiting (it started or ended)."

    outputs = [jobs, workers, waiting]
    timer.tick(refresh, [waiting], outputs, queue=False, api_visibility="private", show_progress="hidden")
    cancel.click(on_cancel, [waiting], [status], queue=False, api_visibility="private") \
        .then(refresh, [waiting], outputs, queue=False, api_visibility="private", show_progress="hidden")
    return QueueTab(jobs, workers, waiting, cancel, timer)


def wire_load(demo: gr.Blocks, ctx: AppContext, tab: QueueTab) -> None:
    """Filled in as soon as the page loads, not only at the first tick."""

    def first(request: gr.Request) -> tuple[Any, ...]:
        mine = _mine(ctx, owner_of(request).key)
        return jobs_html(ctx, mine), workers_html(ctx)

    demo.load(first, None, [tab.jobs, tab.workers], queue=False, api_visibility="private", show_progress="hidden")
