"""The txt2img tab: prompt, sampler settings, Generate / Interrupt, gallery and generation info.

No generation logic here: the tab builds a GenerationRequest and hands it to pipelines.generate.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import gradio as gr

from ..context import EXAMPLE_PROMPT
from ..jobs import JobControl
from ..models.loader import CheckpointLoadError
from ..pipelines.generate import generate
from ..pipelines.manager import NoCheckpointError
from ..pipelines.request import GenerationRequest, RequestError
from ..samplers import SAMPLERS, SCHEDULE_TYPES, UnknownSamplerError
from .common import checkpoint_choices, default_checkpoint_title, native_size_of, no_checkpoint_message

log = logging.getLogger(__name__)

USER_ERRORS = (RequestError, UnknownSamplerError, CheckpointLoadError, NoCheckpointError)


def _schedule_types(sampler: str) -> list[str]:
    """Only the schedule types this sampler accepts (DDIM has no Karras sigmas, for instance)."""
    spec = SAMPLERS.get(sampler)
    return list(spec.schedule_types) if spec else list(SCHEDULE_TYPES)


def build(ctx: Any) -> None:
    settings = ctx.settings
    size = native_size_of(ctx, default_checkpoint_title(ctx))
    empty_notice = gr.Markdown(no_checkpoint_message(ctx), visible=not ctx.registry.entries(), elem_id="no-checkpoint")
    with gr.Row():
        checkpoint = gr.Dropdown(
            label="Stable Diffusion checkpoint",
            choices=checkpoint_choices(ctx),
            value=default_checkpoint_title(ctx),
            elem_id="checkpoint",
            scale=4,
        )
        refresh = gr.Button("🔄", elem_id="refresh-checkpoints", scale=0, min_width=48)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img-prompt", placeholder=EXAMPLE_PROMPT)
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img-negative")
            with gr.Row():
                sampler = gr.Dropdown(label="Sampling method", choices=list(SAMPLERS), value=settings.default_sampler)
                schedule = gr.Dropdown(label="Schedule type", choices=_schedule_types(settings.default_sampler),
                                       value="Automatic")
                steps = gr.Slider(1, 150, value=settings.default_steps, step=1, label="Sampling steps")
            with gr.Row():
                width = gr.Slider(64, 2048, value=size, step=8, label="Width", elem_id="txt2img-width")
                height = gr.Slider(64, 2048, value=size, step=8, label="Height", elem_id="txt2img-height")
            with gr.Row():
                batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size")
            with gr.Row():
                cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="txt2img-generate")
                stop = gr.Button("Interrupt", elem_id="txt2img-interrupt")
            gallery = gr.Gallery(label="Output", columns=2, format="png", elem_id="txt2img-gallery")
            info = gr.HTML(elem_id="txt2img-info")

    def on_generate(ckpt, prompt_text, negative_text, sampler_name, schedule_type, n_steps, w, h, count, size_,
                    cfg_scale, seed_value, request: gr.Request, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
        owner = request.session_hash or "anonymous"
        control = ctx.jobs.start(owner, JobControl(preview_every=0))

        def report(p):
            if p.steps:
                progress(p.fraction, desc=f"Batch {p.batch + 1}/{p.batches}, step {p.step}/{p.steps}")

        control.listener = report
        req = GenerationRequest(
            prompt=prompt_text or "",
            negative_prompt=negative_text or "",
            checkpoint=ckpt or None,
            sampler=sampler_name,
            schedule_type=schedule_type,
            steps=int(n_steps),
            cfg_scale=float(cfg_scale),
            width=int(w),
            height=int(h),
            seed=int(seed_value) if seed_value is not None else -1,
            batch_count=int(count),
            batch_size=int(size_),
        )
        try:
            result = generate(ctx.manager, req, ctx.outputs, control, save_format=settings.save_format)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            ctx.jobs.finish(owner, control)
        shown = [str(p) for p in result.paths] if result.paths else result.images
        text = result.infotexts[0] if result.infotexts else ""
        notes = "".join(f"<p class='warning'>{html.escape(w)}</p>" for w in result.warnings)
        if result.interrupted:
            notes += "<p class='warning'>Interrupted.</p>"
        info_html = f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>{notes}"
        return shown, info_html

    def on_interrupt(request: gr.Request):
        ctx.jobs.interrupt(request.session_hash or "anonymous")

    def on_refresh(current):
        ctx.registry.refresh()
        choices = checkpoint_choices(ctx)
        value = current if current in choices else default_checkpoint_title(ctx)
        return gr.update(choices=choices, value=value), gr.update(visible=not choices)

    def on_checkpoint(title):
        native = native_size_of(ctx, title)
        return gr.update(value=native), gr.update(value=native)

    run.click(
        on_generate,
        [checkpoint, prompt, negative, sampler, schedule, steps, width, height, batch_count, batch_size, cfg, seed],
        [gallery, info],
        api_name="txt2img",
    )
    stop.click(on_interrupt, None, None, api_name="interrupt", queue=False)
    refresh.click(on_refresh, [checkpoint], [checkpoint, empty_notice], api_name="refresh_checkpoints")
    checkpoint.change(on_checkpoint, [checkpoint], [width, height], api_name=False)
    sampler.change(lambda name, current: gr.update(choices=_schedule_types(name),
                                                   value=current if current in _schedule_types(name) else "Automatic"),
                   [sampler, schedule], [schedule], api_name=False)
