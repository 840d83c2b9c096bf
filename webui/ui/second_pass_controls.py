"""Second-pass controls: the variation-seed row under the seed, the Hires. fix section (txt2img) and the
Refiner section.

They fill ``fields`` (forms field names = GenerationRequest field names, see ``forms.HIRES_FIELDS`` and
``forms.VARIATION_FIELDS``); the generation tab wires them like every other field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ..pipelines.hires import LATENT_UPSCALERS
from ..pipelines.request import MAX_HR_SCALE
from ..samplers import SAMPLERS, SCHEDULE_TYPES
from .common import checkpoint_choices
from .forms import NO_REFINER, SAME, SAME_CHECKPOINT

if TYPE_CHECKING:
    from ..context import AppContext



def hires_upscalers(ctx: AppContext) -> list[str]:
    """A1111's order: the latent upscalers, then None, Lanczos, Nearest and every upscaler model."""
    return list(LATENT_UPSCALERS) + [n for n in ctx.manager.upscalers.names() if n not in LATENT_UPSCALERS]


def build_variation_row(fields: dict[str, Any], prefix: str) -> tuple[gr.Button, gr.Button]:
    """Variation seed (A1111's "Extra" seed options); returns its 🎲 and ♻️ buttons."""
    with gr.Accordion("Variation seed", open=False, elem_id=f"{prefix}-variation"):
        with gr.Row():
            fields["subseed"] = gr.Number(value=-1, precision=0, label="Variation seed (-1 = random)",
                                          elem_id=f"{prefix}-subseed")
            random_subseed = gr.Button("🎲 Random", elem_id=f"{prefix}-random-subseed", size="sm", scale=0,
                                       min_width=90)
            reuse_subseed = gr.Button("♻️ Reuse", elem_id=f"{prefix}-reuse-subseed", size="sm", scale=0,
                                      min_width=90)
            fields["subseed_strength"] = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                                   elem_id=f"{prefix}-subseed-strength")
        with gr.Row():
            fields["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width (0 = off)",
                                                     elem_id=f"{prefix}-seed-resize-w")
            fields["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8,
                                                     label="Resize seed from height (0 = off)",
                                                     elem_id=f"{prefix}-seed-resize-h")
    return random_subseed, reuse_subseed


def build_hires_section(ctx: AppContext, fields: dict[str, Any], prefix: str) -> None:
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{prefix}-hires"):
        fields["enable_hr"] = gr.Checkbox(label="Hires. fix: upscale and denoise again at the larger size",
                                          elem_id=f"{prefix}-enable-hr")
        with gr.Row():
            fields["hr_upscaler"] = gr.Dropdown(hires_upscalers(ctx), value="Latent", label="Upscaler",
                                                elem_id=f"{prefix}-hr-upscaler")
            fields["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps (0 = same)",
                                                       elem_id=f"{prefix}-hr-steps")
            fields["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                                     elem_id=f"{prefix}-hr-strength")
        with gr.Row():
            fields["hr_scale"] = gr.Slider(1.0, MAX_HR_SCALE, value=2.0, step=0.05, label="Upscale by",
                                           elem_id=f"{prefix}-hr-scale")
            fields["hr_resize_x"] = gr.Slider(0, 4096, value=0, step=8, label="Resize width to (0 = by scale)",
                                              elem_id=f"{prefix}-hr-resize-x")
            fields["hr_resize_y"] = gr.Slider(0, 4096, value=0, step=8, label="Resize height to (0 = by scale)",
                                              elem_id=f"{prefix}-hr-resize-y")
        with gr.Accordion("Hires pass: sampler, prompts, CFG", open=False):
            with gr.Row():
                fields["hr_sampler"] = gr.Dropdown([SAME, *SAMPLERS], value=SAME, label="Hires sampling method",
                                                   elem_id=f"{prefix}-hr-sampler")
                fields["hr_schedule_type"] = gr.Dropdown([SAME, *SCHEDULE_TYPES], value=SAME,
                                                         label="Hires schedule type", elem_id=f"{prefix}-hr-schedule")
                fields["hr_cfg_scale"] = gr.Slider(0.0, 30.0, value=0.0, step=0.5, label="Hires CFG Scale (0 = same)",
                                                   elem_id=f"{prefix}-hr-cfg")
            fields["hr_checkpoint"] = gr.Dropdown([SAME_CHECKPOINT, *checkpoint_choices(ctx)], value=SAME_CHECKPOINT,
                                                  label="Hires checkpoint", elem_id=f"{prefix}-hr-checkpoint")
            fields["hr_prompt"] = gr.Textbox("", label="Hires prompt (empty = same)", lines=2,
                                             elem_id=f"{prefix}-hr-prompt")
            fields["hr_negative_prompt"] = gr.Textbox("", label="Hires negative prompt (empty = same)", lines=2,
                                                      elem_id=f"{prefix}-hr-negative")


def build_refiner_section(ctx: AppContext, fields: dict[str, Any], prefix: str) -> None:
    """A1111 1.6's Refiner: the last steps of the last pass run on another checkpoint of the same family."""
    with gr.Accordion("Refiner", open=False, elem_id=f"{prefix}-refiner"):
        with gr.Row():
            fields["refiner_checkpoint"] = gr.Dropdown([NO_REFINER, *checkpoint_choices(ctx)], value=NO_REFINER,
                                                       label="Refiner checkpoint",
                                                       elem_id=f"{prefix}-refiner-checkpoint")
            fields["refiner_switch_at"] = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at",
                                                    elem_id=f"{prefix}-refiner-switch-at")
