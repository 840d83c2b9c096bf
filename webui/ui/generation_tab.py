"""The three generation tabs (txt2img, img2img, inpaint): one builder, the mode decides the extra controls.

No generation logic here: values go through ``forms.form_fields`` and ``AppContext.new_request``, jobs through
``runner.run_job`` into Atelier's job queue.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..context import EXAMPLE_PROMPT
from ..errors import AtelierError
from ..extensions.scripts import run_script
from ..pipelines.conditioning import count_part_tokens
from ..pipelines.request import EMPHASIS_MODES, RNG_SOURCES, InpaintArea, MaskedContent, ResizeMode
from ..samplers import SAMPLERS, SCHEDULE_TYPES
from ..users import user_of
from . import forms
from .controlnet_controls import ControlNetSection, build_controlnet_section
from .controlnet_form import PREFIX as CONTROLNET_PREFIX
from .controlnet_form import is_picture_field, restore_units
from .extension_controls import ExtensionControls, build_extension_controls
from .networks_panel import build_networks_panel
from .runner import info_html, owner_of, run_job, show_updates
from .second_pass_controls import build_hires_section, build_refiner_section, build_variation_row

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

TITLES = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "Inpaint"}


def schedule_types(sampler: str) -> list[str]:
    """Only the schedule types this sampler accepts (DDIM has no Karras sigmas, for instance)."""
    spec = SAMPLERS.get(sampler)
    return list(spec.schedule_types) if spec else list(SCHEDULE_TYPES)


@dataclass
class TopBar:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    clip_skip: gr.Slider
    vae: gr.Dropdown
    status: gr.Markdown


@dataclass
class ModeTab:
    mode: str
    fields: dict[str, Any]  # forms field name -> component (clip_skip is the top bar's)
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    gallery: gr.Gallery
    info: gr.HTML
    preview: gr.Image
    progress: gr.HTML
    results: gr.State  # {"paths": [...], "infotexts": [...], "selected": int}
    read_params: gr.Button
    send: dict[str, gr.Button] = field(default_factory=dict)
    extensions: ExtensionControls = field(default_factory=ExtensionControls)
    controlnet: ControlNetSection = field(default_factory=ControlNetSection)
    overrides: Any = None  # the accordion of the per-job overrides (emphasis, RNG, ENSD)

    def inputs(self, top: TopBar) -> list[Any]:
        """[checkpoint, *fields in ``names`` order, *extensions' controls, *``picture_names``]: the event's
        inputs, in the positional order of its API endpoint."""
        return ([top.checkpoint] + [self.fields[name] for name in self.names] + self.extensions.inputs()
                + [self.fields[name] for name in self.picture_names])

    @property
    def names(self) -> tuple[str, ...]:
        """forms.MODE_FIELDS, then the ControlNet units' fields (how many units there are is a setting)."""
        return forms.MODE_FIELDS[self.mode] + tuple(n for n in self.fields if n.startswith(CONTROLNET_PREFIX)
                                                    and not is_picture_field(n))

    @property
    def picture_names(self) -> tuple[str, ...]:
        """The units' control images and masks (``controlnet_<i>_image``, ``controlnet_<i>_mask``): last, so the
        positions older gradio clients send stay as they were."""
        return tuple(n for n in self.fields if is_picture_field(n))


def build_mode_tab(ctx: AppContext, mode: str, top: TopBar, size: int, styles: Any, tokenizer: Any) -> ModeTab:
    settings = ctx.settings
    prefix = mode
    fields: dict[str, Any] = {"clip_skip": top.clip_skip, "vae": top.vae}
    # Classes and ids for the phone layout (webui/ui/phone_layout.py); the desktop ignores them.
    with gr.Row(elem_classes=["atelier-gen"]):
        with gr.Column(scale=3, elem_classes=["atelier-gen-options"]):
            with gr.Row(elem_id=f"{prefix}-prompt-row"):
                fields["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}-prompt", scale=8,
                                              placeholder=EXAMPLE_PROMPT)
                with gr.Column(scale=1, min_width=90):
                    token_count = gr.HTML("0/75", elem_id=f"{prefix}-token-count")
                    read_params = gr.Button("↙️ Read", elem_id=f"{prefix}-read-params", size="sm")
            fields["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}-negative")
            networks = build_networks_panel(ctx, mode, fields["prompt"])
            with gr.Row(elem_id=f"{prefix}-styles-row"):
                fields["styles"] = gr.Dropdown(label="Styles", choices=styles.names(), multiselect=True,
                                               elem_id=f"{prefix}-styles", scale=4)
                apply_styles = gr.Button("📋 Apply", elem_id=f"{prefix}-apply-styles", size="sm", scale=1)
                style_name = gr.Textbox(label="New style name", elem_id=f"{prefix}-style-name", scale=2)
                save_style = gr.Button("💾 Save style", elem_id=f"{prefix}-save-style", size="sm", scale=1)
            if mode == "img2img":
                fields["init_image"] = gr.Image(label="Image for img2img", type="pil", sources=["upload", "clipboard"],
                                                image_mode="RGB", elem_id="img2img-init-image", height=320)
            if mode == "inpaint":
                fields["mask_editor"] = gr.ImageMask(
                    label="Paint over what should change", type="pil", sources=["upload", "clipboard"],
                    brush=gr.Brush(default_size=20, colors=[("#ffffff", 0.75)], color_mode="fixed"),
                    eraser=gr.Eraser(default_size=20), layers=False, transforms=(), elem_id="inpaint-editor",
                    height=400)
                with gr.Accordion("Upload a mask instead (white = repaint)", open=False):
                    fields["mask_upload"] = gr.Image(label="Mask", type="pil", sources=["upload", "clipboard"],
                                                     elem_id="inpaint-mask-upload", height=200)
                with gr.Row(elem_id="inpaint-mask-row"):
                    fields["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur")
                    fields["masked_content"] = gr.Radio([m.value for m in MaskedContent],
                                                        value=MaskedContent.ORIGINAL.value, label="Masked content")
                with gr.Row(elem_id="inpaint-area-row"):
                    fields["inpaint_area"] = gr.Radio([a.value for a in InpaintArea],
                                                      value=InpaintArea.WHOLE_PICTURE.value, label="Inpaint area")
                    fields["inpaint_padding"] = gr.Slider(0, 256, value=32, step=4,
                                                          label="Only masked padding, pixels")
                    fields["mask_invert"] = gr.Checkbox(label="Invert mask (repaint what is not painted)")
                with gr.Accordion("Outpainting: extend the picture", open=False, elem_id="inpaint-outpaint"):
                    with gr.Row():
                        for side in ("left", "right", "top", "bottom"):
                            fields[f"outpaint_{side}"] = gr.Slider(0, 512, value=0, step=8,
                                                                   label=f"{side.title()}, pixels",
                                                                   elem_id=f"inpaint-outpaint-{side}")
            with gr.Row(elem_id=f"{prefix}-sampling-row"):
                fields["sampler"] = gr.Dropdown(label="Sampling method", choices=list(SAMPLERS),
                                                value=settings.default_sampler, elem_id=f"{prefix}-sampler")
                fields["schedule_type"] = gr.Dropdown(label="Schedule type",
                                                      choices=schedule_types(settings.default_sampler),
                                                      value="Automatic", elem_id=f"{prefix}-schedule")
                fields["steps"] = gr.Slider(1, 150, value=settings.default_steps, step=1, label="Sampling steps",
                                            elem_id=f"{prefix}-steps")
            if mode != "txt2img":
                with gr.Row(elem_id=f"{prefix}-strength-row"):
                    fields["resize_mode"] = gr.Radio([m.value for m in ResizeMode], value=ResizeMode.JUST_RESIZE.value,
                                                     label="Resize mode", elem_id=f"{prefix}-resize-mode")
                    fields["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.75, step=0.01,
                                                             label="Denoising strength", elem_id=f"{prefix}-strength")
            with gr.Row(elem_id=f"{prefix}-size-row"):
                fields["width"] = gr.Slider(64, 2048, value=size, step=8, label="Width", elem_id=f"{prefix}-width")
                swap = gr.Button("⇅ Swap", elem_id=f"{prefix}-swap-size", size="sm", scale=0, min_width=40)
                fields["height"] = gr.Slider(64, 2048, value=size, step=8, label="Height", elem_id=f"{prefix}-height")
            with gr.Row(elem_id=f"{prefix}-batch-row"):
                fields["batch_count"] = gr.Slider(1, 100, value=1, step=1, label="Batch count",
                                                  elem_id=f"{prefix}-batch-count")
                fields["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size",
                                                 elem_id=f"{prefix}-batch-size")
            with gr.Row(elem_id=f"{prefix}-seed-row"):
                fields["cfg_scale"] = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale",
                                                elem_id=f"{prefix}-cfg")
                fields["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id=f"{prefix}-seed")
                random_seed = gr.Button("🎲 Random", elem_id=f"{prefix}-random-seed", size="sm", scale=0, min_width=40)
                reuse_seed = gr.Button("♻️ Reuse", elem_id=f"{prefix}-reuse-seed", size="sm", scale=0, min_width=40)
            seed_buttons = {"seed": (random_seed, reuse_seed)}
            seed_buttons["subseed"] = build_variation_row(fields, prefix)
            overrides = build_override_row(fields, prefix)
            if mode == "txt2img":
                build_hires_section(ctx, fields, prefix)
            build_refiner_section(ctx, fields, prefix)
            controlnet = build_controlnet_section(ctx, fields, mode)
            extension_controls = build_extension_controls(ctx, mode)
        with gr.Column(scale=2, elem_classes=["atelier-gen-output"]):
            with gr.Row(elem_id=f"{prefix}-actions"):
                generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}-generate", scale=3)
                interrupt = gr.Button("Interrupt", elem_id=f"{prefix}-interrupt", scale=1)
                skip = gr.Button("Skip", elem_id=f"{prefix}-skip", scale=1)
            progress = gr.HTML("", elem_id=f"{prefix}-progress")
            preview = gr.Image(label="Preview", visible=False, interactive=False, elem_id=f"{prefix}-preview",
                               height=256)
            gallery = gr.Gallery(label="Output", columns=2, format="png", elem_id=f"{prefix}-gallery",
                                 interactive=False, height=420)
            with gr.Row():
                send = {
                    "img2img": gr.Button("📐 Send to img2img", elem_id=f"{prefix}-send-img2img", size="sm"),
                    "inpaint": gr.Button("🎨 Send to inpaint", elem_id=f"{prefix}-send-inpaint", size="sm"),
                }
                if mode != "txt2img":
                    send["txt2img"] = gr.Button("✨ Send parameters to txt2img", elem_id=f"{prefix}-send-txt2img",
                                                size="sm")
            info = gr.HTML(elem_id=f"{prefix}-info")
    results = gr.State({"paths": [], "infotexts": [], "selected": 0})
    networks.connect(results, top.checkpoint)

    tab = ModeTab(mode, fields, generate, interrupt, skip, gallery, info, preview, progress, results, read_params,
                  send, extension_controls, controlnet, overrides)
    _wire_generation(ctx, tab, top, styles)
    _wire_helpers(ctx, tab, styles, tokenizer, token_count, apply_styles, style_name, save_style, swap, seed_buttons)
    return tab


def build_override_row(fields: dict[str, Any], prefix: str) -> gr.Accordion:
    """A1111's settings that change the picture, for this job only (pasted parameters fill them); left at "Use
    setting" / -1, the Settings' values apply."""
    with gr.Accordion("Emphasis, RNG source, ENSD (this job only)", open=False,
                      elem_id=f"{prefix}-overrides") as accordion:
        with gr.Row():
            fields["emphasis"] = gr.Dropdown([forms.USE_SETTING, *EMPHASIS_MODES], value=forms.USE_SETTING,
                                             label="Emphasis", elem_id=f"{prefix}-emphasis")
            fields["rng"] = gr.Dropdown([forms.USE_SETTING, *RNG_SOURCES], value=forms.USE_SETTING,
                                        label="Random number generator source", elem_id=f"{prefix}-rng")
            # -1, not empty: a Number without a value would be a required argument of the API endpoints.
            fields["eta_noise_seed_delta"] = gr.Number(value=-1, precision=0, minimum=-1,
                                                       label="Eta noise seed delta (ENSD; -1 = setting)",
                                                       elem_id=f"{prefix}-ensd")
    return accordion


def _wire_generation(ctx: AppContext, tab: ModeTab, top: TopBar, styles: Any) -> None:
    names = tab.names

    pictures = tab.picture_names
    extension_count = len(tab.extensions.inputs())

    def on_generate(request: gr.Request, checkpoint: str | None, *values: Any):
        form = dict(zip(names, values[:len(names)], strict=True))
        tail = values[len(names) + extension_count:]
        form.update(zip(pictures, tail, strict=True))  # None where a client sent no picture
        script, extra = tab.extensions.split(list(values[len(names):len(names) + extension_count]))
        owner = owner_of(request)
        try:
            prompt, negative = styles.apply(list(form.get("styles") or []), str(form.get("prompt") or ""),
                                            str(form.get("negative_prompt") or ""))
            req = ctx.new_request(forms.form_fields(tab.mode, checkpoint, form, prompt=prompt,
                                                    negative_prompt=negative))
        except AtelierError as exc:
            raise gr.Error(str(exc)) from exc
        req.extra.update(extra)
        req.user = user_of(request)  # recorded in the saved pictures: their History owner
        work = None
        if script is not None:
            script_owner, chosen, script_values = script

            def work(control: Any) -> Any:
                return run_script(ctx, script_owner, chosen, control, req, script_values)

        yield from show_updates(run_job(ctx, owner, req, work), log)

    on_generate.__signature__ = endpoint_signature(names, extension_count, pictures)  # type: ignore[attr-defined]
    tab.generate.click(
        on_generate,
        tab.inputs(top),
        [tab.gallery, tab.info, tab.preview, tab.progress, tab.results],
        api_name=tab.mode,
        # Jobs wait in Atelier's queue, which streams the place in line; Gradio only carries the event.
        concurrency_limit=None,
        # Gradio's tracker (elapsed time) sits on the progress line only, so the gallery and preview stay
        # visible while the job streams.
        show_progress="full",
        show_progress_on=[tab.progress],
    )

    def on_interrupt(request: gr.Request) -> None:
        ctx.jobs.interrupt(owner_of(request))

    def on_skip(request: gr.Request) -> None:
        ctx.jobs.skip(owner_of(request))

    # One named interrupt / skip endpoint (the txt2img tab's); the other tabs' buttons are not API endpoints.
    visibility = "public" if tab.mode == "txt2img" else "private"
    tab.interrupt.click(on_interrupt, None, None, queue=False, api_name="interrupt", api_visibility=visibility)
    tab.skip.click(on_skip, None, None, queue=False, api_name="skip", api_visibility=visibility)

    def on_select(results: dict, event: gr.SelectData):
        index = int(event.index) if isinstance(event.index, int) else 0
        texts = results.get("infotexts") or []
        results = {**results, "selected": index}
        text = texts[index] if 0 <= index < len(texts) else ""
        return results, info_html(text, [], False)

    tab.gallery.select(on_select, [tab.results], [tab.results, tab.info], api_visibility="private", queue=False)


def endpoint_signature(names: tuple[str, ...], extension_count: int, pictures: tuple[str, ...]) -> inspect.Signature:
    """The Generate handler's parameters as gradio reads them for its API endpoint: one named parameter per
    input (so clients may pass fields by name), the pictures last with None as their default, which makes them
    optional arguments: a client that sends only the older fields keeps working."""
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("request", positional, annotation=gr.Request),
                  inspect.Parameter("checkpoint", positional)]
    parameters += [inspect.Parameter(name, positional) for name in names]
    parameters += [inspect.Parameter(f"extension_input_{i}", positional) for i in range(extension_count)]
    parameters += [inspect.Parameter(name, positional, default=None) for name in pictures]
    return inspect.Signature(parameters)


def _wire_helpers(ctx: AppContext, tab: ModeTab, styles: Any, tokenizer: Any, token_count: gr.HTML,
                  apply_styles: gr.Button, style_name: gr.Textbox, save_style: gr.Button, swap: gr.Button,
                  seed_buttons: dict[str, tuple[gr.Button, gr.Button]]) -> None:
    f = tab.fields

    def on_prompt(text: str) -> str:
        # Emphasis and editing syntax cost no tokens; BREAK and the chunking follow the encoder's rules; each AND
        # part is encoded on its own, so each has its own count.
        return forms.part_token_count_label(count_part_tokens(tokenizer.get(), text or ""))

    f["prompt"].change(on_prompt, [f["prompt"]], [token_count], queue=False, api_visibility="private",
                       show_progress="hidden")

    def on_apply(selected: list[str], prompt: str, negative: str):
        prompt, negative = styles.apply(list(selected or []), prompt or "", negative or "")
        return prompt, negative, gr.update(value=[])

    apply_styles.click(on_apply, [f["styles"], f["prompt"], f["negative_prompt"]],
                       [f["prompt"], f["negative_prompt"], f["styles"]], queue=False, api_visibility="private")

    def on_save_style(name: str, prompt: str, negative: str):
        from ..styles import Style

        if not (name or "").strip():
            raise gr.Error("Type a name for the style first.")
        styles.save(Style(name.strip(), prompt or "", negative or ""))
        gr.Info(f"Saved style {name.strip()!r}")
        return gr.update(choices=styles.names()), ""

    save_style.click(on_save_style, [style_name, f["prompt"], f["negative_prompt"]], [f["styles"], style_name],
                     queue=False, api_visibility="private")
    swap.click(lambda w, h: (h, w), [f["width"], f["height"]], [f["width"], f["height"]], queue=False,
               api_visibility="private")
    for name, (random_button, reuse_button) in seed_buttons.items():
        random_button.click(lambda: -1, None, [f[name]], queue=False, api_visibility="private")
        reuse_button.click(_reuse(name), [tab.results, f[name]], [f[name]], queue=False, api_visibility="private")
    f["sampler"].change(
        lambda name, current: gr.update(choices=schedule_types(name),
                                        value=current if current in schedule_types(name) else "Automatic"),
        [f["sampler"], f["schedule_type"]], [f["schedule_type"]], queue=False, api_visibility="private")


def _reuse(name: str) -> Any:
    """♻️: the selected picture's seed (or variation seed) into the box."""

    def reuse(results: dict, current: Any) -> Any:
        texts = results.get("infotexts") or []
        if not texts:
            return current
        value = forms.values_from_infotext(texts[min(results.get("selected", 0), len(texts) - 1)]).get(name)
        return current if value is None else value

    return reuse


def fill_targets(tab: ModeTab, top: TopBar) -> list[Any]:
    """The components that infotext values land in: ``FILL_ORDER``, the overrides' accordion, then the
    ControlNet units' controls and notes (``ControlNetSection.restore_targets``)."""
    targets = {**tab.fields, "checkpoint": top.checkpoint}
    return ([targets.get(name) for name in FILL_ORDER if name in targets]
            + ([tab.overrides] if tab.overrides is not None else []) + tab.controlnet.restore_targets(tab.fields))


FILL_ORDER = ("prompt", "negative_prompt", "sampler", "schedule_type", "steps", "cfg_scale", "seed", "width", "height",
              "denoising_strength", "clip_skip", "vae", "checkpoint", *forms.VARIATION_FIELDS,
              *(name for name in forms.HIRES_FIELDS if name != "denoising_strength"), *forms.REFINER_FIELDS,
              *forms.OVERRIDE_FIELDS)


def fill_updates(tab: ModeTab, top: TopBar, values: dict[str, Any], resolvers: dict[str, Any],
                 held: tuple[Any, ...] = ()) -> list[Any]:
    """gr.update per ``fill_targets`` entry: the infotext's value, or no change where it has none.

    ``resolvers`` turn names from the infotext (checkpoint, VAE, ``controlnet_model``) into the dropdowns'
    choices, or None; ``settings`` gives a setting's value (the overrides' accordion opens where the text's
    differs). ``held``: the units' control images now (kept; a unit without one says it is missing)."""
    updates = _form_updates(tab, top, values, resolvers)
    if tab.overrides is not None:
        setting = resolvers.get("settings", lambda name: None)
        differs = any(name in values and values[name] != setting(name) for name in forms.OVERRIDE_FIELDS)
        updates.append(gr.update(open=True) if differs else gr.skip())
    if "controlnet_units" in values and tab.controlnet.notes:
        restored = restore_units(values["controlnet_units"], len(tab.controlnet.notes),
                                 resolvers.get("controlnet_model", lambda name: None),
                                 [picture is not None for picture in held], init_image_mode=tab.mode != "txt2img")
        updates += tab.controlnet.restore_updates(tab.fields, restored)
    else:
        updates += [gr.skip()] * len(tab.controlnet.restore_targets(tab.fields))
    return updates


def _form_updates(tab: ModeTab, top: TopBar, values: dict[str, Any], resolvers: dict[str, Any]) -> list[Any]:
    targets = {**tab.fields, "checkpoint": top.checkpoint}
    updates = []
    for name in FILL_ORDER:
        if name not in targets:
            continue
        value = values.get(name)
        if name in resolvers and value is not None:
            value = resolvers[name](value)
        if name == "schedule_type" and value is not None:
            updates.append(gr.update(choices=schedule_types(str(values.get("sampler", ""))), value=value))
            continue
        updates.append(gr.skip() if value is None else gr.update(value=value))
    return updates
