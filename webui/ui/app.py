"""The Gradio app: one Blocks with a tab per mode, served on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from . import txt2img

log = logging.getLogger(__name__)

TITLE = "Atelier"


def build(ctx: Any) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Tabs():
            with gr.Tab("txt2img", id="txt2img"):
                txt2img.build(ctx)
    return demo


def launch(ctx: Any, demo: gr.Blocks | None = None, **overrides: Any) -> gr.Blocks:
    """Start serving; returns the running Blocks (tests pass prevent_thread_lock=True)."""
    demo = demo or build(ctx)
    settings = ctx.settings
    options: dict[str, Any] = {
        "server_name": settings.host,
        "server_port": settings.port,
        "inbrowser": settings.autolaunch,
        # Only generated images may be served from disk: the outputs folder, nothing else.
        "allowed_paths": [str(settings.outputs_dir)],
        "show_error": True,
    }
    options.update(overrides)
    demo.queue(default_concurrency_limit=4)
    demo.launch(**options)
    return demo


def serve(ctx: Any) -> None:
    launch(ctx)
