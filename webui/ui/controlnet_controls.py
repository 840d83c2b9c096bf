"""The "ControlNet" accordion of txt2img / img2img / Inpaint: N units, each as sd-webui-controlnet lays it out.

Each unit's components go into the tab's ``fields`` as ``controlnet_<i>_<field>`` (``controlnet_form``), so the
Generate button sends them like every other field and ``forms.form_fields`` makes the request's unit dicts.
The preview button runs the preprocessor (``preprocess.detect_map``) and can send the map back as the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from ..controlnet import catalog, preprocess
from ..controlnet.units import ControlMode, ControlResizeMode, HiresOption, UnitError, resize_mode_from_value
from ..errors import AtelierError
from .controlnet_form import (
    NO_MODEL,
    RESTORED_FIELDS,
    RestoredUnits,
    painted_mask,
    scribble_picture,
    unit_count,
    unit_field,
)

if TYPE_CHECKING:
    from ..context import AppContext


def model_choices(ctx: AppContext) -> list[str]:
    """"None" first, then the ControlNets as the extension titles them ("name [hash]"), the demo one among them."""
    try:
        return [NO_MODEL, *ctx.manager.controlnets.titles()]
    except OSError:  # an unreadable models folder must not take the page down
        return [NO_MODEL]


def slider_updates(module: str) -> tuple[Any, Any, Any]:
    """The preprocessor's resolution and threshold sliders: its labels, ranges and defaults; hidden where unused."""
    pre = catalog.find(module) or catalog.find("none")
    assert pre is not None
    out = []
    for slider, fallback in ((pre.resolution, "Preprocessor Resolution"), (pre.slider_1, "Threshold A"),
                             (pre.slider_2, "Threshold B")):
        label = fallback if slider is pre.resolution else (slider.label or fallback)
        out.append(gr.update(label=label, minimum=slider.minimum, maximum=slider.maximum, value=slider.value,
                             step=slider.step, visible=slider.visible))
    return out[0], out[1], out[2]


def preview_map(ctx: AppContext, module: str, image: Image.Image | None, processor_res: float, threshold_a: float,
                threshold_b: float, pixel_perfect: bool, resize_mode: str, width: float, height: float,
                index: int) -> Image.Image:
    """What the unit's preprocessor makes of its image; the pixel-perfect resolution when that is ticked."""
    field = f"controlnet_units[{index}]"
    if not isinstance(image, Image.Image):
        raise UnitError(f"{field}.image", f"drop a control image into ControlNet Unit {index} first")
    if pixel_perfect:
        processor_res = preprocess.pixel_perfect_resolution(
            image.size, int(width), int(height), resize_mode_from_value(resize_mode, f"{field}.resize_mode"))
    return preprocess.detect_map(module, image.convert("RGB"), processor_res, threshold_a, threshold_b,
                                 annotators_dir=ctx.manager.controlnets.annotators, field=f"{field}.module")


@dataclass
class ControlNetSection:
    """The parts of a tab's units that are not request fields: each unit's note (what pasted parameters could
    not restore), the State holding its control image, its model list with the 🔄 beside it, and the section's
    note about pasted units the page has no room for."""

    overflow: gr.Markdown | None = None
    notes: list[gr.Markdown] = field(default_factory=list)
    held: list[gr.State] = field(default_factory=list)
    models: list[gr.Dropdown] = field(default_factory=list)
    refresh: list[gr.Button] = field(default_factory=list)

    def restore_targets(self, fields: dict[str, Any]) -> list[Any]:
        """The components ``restore_updates`` fills, unit by unit."""
        out: list[Any] = []
        for index, note in enumerate(self.notes):
            out += [fields[unit_field(index, name)] for name in RESTORED_FIELDS if unit_field(index, name) in fields]
            out.append(note)
        return out + ([self.overflow] if self.overflow is not None else [])

    def restore_updates(self, fields: dict[str, Any], restored: RestoredUnits) -> list[Any]:
        """gr.update per ``restore_targets`` entry. The sliders take the restored preprocessor's labels and
        ranges with the restored values (the module's change event, which resets them, fires on user input only)."""
        out: list[Any] = []
        for index, note in enumerate(restored.notes[:len(self.notes)]):
            values = {name: restored.values[unit_field(index, name)] for name in RESTORED_FIELDS
                      if unit_field(index, name) in restored.values}
            sliders = dict(zip(("processor_res", "threshold_a", "threshold_b"), slider_updates(values["module"]),
                               strict=True)) if "module" in values else {}
            for name in RESTORED_FIELDS:
                if unit_field(index, name) not in fields:
                    continue
                if name not in values:
                    out.append(gr.skip())
                elif name in sliders:
                    out.append({**sliders[name], "value": values[name]})
                else:
                    out.append(gr.update(value=values[name]))
            out.append(gr.update(value=note, visible=bool(note)))
        if self.overflow is not None:
            out.append(gr.update(value=restored.overflow, visible=bool(restored.overflow)))
        return out


def refresh_model_lists(ctx: AppContext, current: Sequence[str | None]) -> list[Any]:
    """Rescan the ControlNet folders: every unit's list gets the models there now, keeping its choice while
    that model is still there."""
    ctx.manager.controlnets.refresh()
    choices = model_choices(ctx)
    return [gr.update(choices=choices, value=value if value in choices else NO_MODEL) for value in current]


def build_controlnet_section(ctx: AppContext, fields: dict[str, Any], mode: str) -> ControlNetSection:
    """Build inside the tab's left column, after ``width`` / ``height`` exist (pixel perfect reads them)."""
    count = unit_count(ctx.settings.controlnet_unit_count)
    models = model_choices(ctx)
    # Outside the (folded) accordion, so that it shows where the user looks after pasting.
    section = ControlNetSection(overflow=gr.Markdown("", visible=False, elem_id=f"{mode}-cn-overflow-note",
                                                     elem_classes=["atelier-warning"]))
    with gr.Accordion("ControlNet", open=False, elem_id=f"{mode}-controlnet"), gr.Tabs():
        for index in range(count):
            with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{mode}-cn{index}-tab"):
                _build_unit(ctx, fields, mode, index, models, section)

    def on_refresh(*current: str | None) -> list[Any]:
        return refresh_model_lists(ctx, current)

    for button in section.refresh:
        button.click(on_refresh, section.models, section.models, queue=False, api_visibility="private")
    return section


def _build_unit(ctx: AppContext, fields: dict[str, Any], mode: str, index: int, models: list[str],
                section: ControlNetSection) -> None:
    prefix = f"{mode}-cn{index}"

    def put(name: str, component: Any) -> Any:
        fields[unit_field(index, name)] = component
        return component

    with gr.Row():
        image = gr.Image(label="Control image", type="pil", sources=["upload", "clipboard"], image_mode="RGB",
                         elem_id=f"{prefix}-image", height=240)
        detected = gr.Image(label="Preprocessor preview", type="pil", interactive=False, elem_id=f"{prefix}-detected",
                            height=240)
    put("image", image)
    # Folded: most units need no mask, and the phone layout stays short.
    with gr.Accordion("Mask (optional: the part to inpaint, or a scribble)", open=False, elem_id=f"{prefix}-mask-box"):
        # image_mode None keeps an uploaded mask's transparency (transparent counts as unmasked, as the API's).
        put("mask", gr.Image(label=f"Unit {index} mask (white = masked)", type="pil", image_mode=None,
                             sources=["upload", "clipboard"], elem_id=f"{prefix}-mask", height=200))
        gr.Markdown("With `inpaint` / `inpaint_only` the white part is what gets drawn; with any other "
                    "preprocessor the white strokes are its input instead of the control image (the extension's "
                    "scribble mode). The same as the API's `mask`.", elem_classes=["atelier-hint"])
        painter = gr.ImageMask(label=f"Paint unit {index}'s mask over its control image", type="pil",
                               sources=["upload", "clipboard"], layers=False, transforms=(),
                               brush=gr.Brush(default_size=20, colors=[("#ffffff", 0.75)], color_mode="fixed"),
                               eraser=gr.Eraser(default_size=20), elem_id=f"{prefix}-mask-painter", height=300)
        use_painted = gr.Button("⬆️ Use the painted mask", size="sm", elem_id=f"{prefix}-use-painted-mask")
    with gr.Accordion("Draw a scribble on a blank canvas", open=False, elem_id=f"{prefix}-scribble"):
        canvas = gr.Sketchpad(type="pil", image_mode="RGB", canvas_size=(512, 512), layers=False, transforms=(),
                              brush=gr.Brush(default_size=6, colors=["#000000"], color_mode="fixed"),
                              elem_id=f"{prefix}-canvas", label="Scribble (black on white: pick \"invert\")")
        use_drawing = gr.Button("⬆️ Use the drawing as control image", size="sm", elem_id=f"{prefix}-use-drawing")
    with gr.Row():
        put("enabled", gr.Checkbox(label="Enable", elem_id=f"{prefix}-enable"))
        pixel_perfect = put("pixel_perfect", gr.Checkbox(label="Pixel Perfect", elem_id=f"{prefix}-pixel-perfect"))
        preview = gr.Button("💥 Preview", size="sm", elem_id=f"{prefix}-preview")
        use = gr.Button("⬅️ Use as control image", size="sm", elem_id=f"{prefix}-use")
    with gr.Row():
        module = put("module", gr.Dropdown(catalog.module_list(), value="none", label="Preprocessor",
                                           elem_id=f"{prefix}-module"))
        section.models.append(put("model", gr.Dropdown(models, value=NO_MODEL, label="Model",
                                                       elem_id=f"{prefix}-model", scale=4)))
        section.refresh.append(gr.Button("🔄", elem_id=f"{prefix}-refresh-cn-models", size="sm", scale=0,
                                         min_width=40))
    # What pasted parameters could not restore (the control image, a model not installed here).
    note = gr.Markdown("", visible=False, elem_id=f"{prefix}-note", elem_classes=["atelier-warning"])
    section.notes.append(note)
    with gr.Row():
        put("weight", gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight", elem_id=f"{prefix}-weight"))
        put("guidance_start", gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step",
                                        elem_id=f"{prefix}-start"))
        put("guidance_end", gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step",
                                      elem_id=f"{prefix}-end"))
    with gr.Row():
        resolution = put("processor_res", gr.Slider(64, 2048, value=512, step=8, label="Preprocessor Resolution",
                                                    elem_id=f"{prefix}-res"))
        threshold_a = put("threshold_a", gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Threshold A", visible=False,
                                                   elem_id=f"{prefix}-threshold-a"))
        threshold_b = put("threshold_b", gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Threshold B", visible=False,
                                                   elem_id=f"{prefix}-threshold-b"))
    put("control_mode", gr.Radio([m.value for m in ControlMode], value=ControlMode.BALANCED.value,
                                                label="Control Mode", elem_id=f"{prefix}-control-mode"))
    resize_mode = put("resize_mode", gr.Radio([m.value for m in ControlResizeMode],
                                              value=ControlResizeMode.CROP_AND_RESIZE.value, label="Resize Mode",
                                              elem_id=f"{prefix}-resize-mode"))
    if mode == "txt2img":
        put("hr_option", gr.Radio([o.value for o in HiresOption], value=HiresOption.BOTH.value,
                                  label="Hires fix passes it guides", elem_id=f"{prefix}-hr-option"))

    # The image and mask are the Generate event's last inputs, optional for gradio clients (generation_tab);
    # the State mirrors the image for the send-to / Read events, which say when a restored unit lacks one.
    held = gr.State(None)
    section.held.append(held)

    def on_image(picture: Image.Image | None) -> tuple[Any, Any, Any]:
        # A control image is there now: the note about the missing one has done its job, and the mask painter
        # shows the picture to paint on.
        if picture is None:
            return picture, gr.skip(), gr.skip()
        return picture, gr.update(value="", visible=False), picture

    image.change(on_image, [image], [held, note, painter], queue=False, api_visibility="private",
                 show_progress="hidden")

    def on_use_painted(drawing: Any) -> Image.Image:
        mask = painted_mask(drawing)
        if mask is None:
            raise gr.Error(f"Paint over the part of unit {index}'s picture to mask first.")
        return mask

    use_painted.click(on_use_painted, [painter], [fields[unit_field(index, "mask")]], queue=False,
                      api_visibility="private")
    # On input only: pasted parameters set the module and the slider values together (restore_updates).
    module.input(slider_updates, [module], [resolution, threshold_a, threshold_b], queue=False,
                  api_visibility="private", show_progress="hidden")

    def on_preview(module_name: str, picture: Image.Image | None, res: float, a: float, b: float, perfect: bool,
                   fit: str, width: float, height: float) -> Image.Image:
        try:
            return preview_map(ctx, module_name, picture, res, a, b, perfect, fit, width, height, index)
        except AtelierError as exc:
            raise gr.Error(str(exc)) from exc

    preview.click(on_preview, [module, image, resolution, threshold_a, threshold_b, pixel_perfect, resize_mode,
                               fields["width"], fields["height"]], [detected], api_visibility="private")
    def on_use_drawing(drawing: Any) -> Image.Image:
        picture = scribble_picture(drawing)
        if picture is None:
            raise gr.Error("Draw on the canvas first.")
        return picture

    use_drawing.click(on_use_drawing, [canvas], [image], queue=False, api_visibility="private")
    use.click(lambda picture: gr.skip() if picture is None else picture, [detected], [image], queue=False,
              api_visibility="private")
