"""Settings: what a user may change from the browser, saved atomically and applied without a restart."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..config import (
    OFFLOAD_MODES,
    UNI_PC_MAX_ORDER,
    UNI_PC_SKIP_TYPES,
    UNI_PC_VARIANTS,
    VAE_DECODE_METHODS,
    save_settings,
)
from ..samplers import SAMPLERS

if TYPE_CHECKING:
    from ..context import AppContext

GIB = 2**30


def corrupt_notice(settings: Any) -> str:
    """A warning when the settings file was unreadable at start-up and was moved aside."""
    aside = settings.settings_file.with_name(settings.settings_file.name + ".corrupt")
    if not aside.exists():
        return ""
    return (f"<p class='atelier-warning'>The settings file was unreadable, so defaults are in use. "
            f"The old file was kept as {html.escape(str(aside))}.</p>")


def build(ctx: AppContext, allow_folder_changes: bool = True) -> None:
    """``allow_folder_changes``: whether this page may change where files go (the output folder and the file
    name pattern). Off when other machines can reach the server, unless the operator allowed it."""
    s = ctx.settings
    notice = gr.HTML(corrupt_notice(s), elem_id="settings-notice")
    with gr.Group():
        outputs_dir = gr.Textbox(str(s.outputs_dir), label="Output folder", elem_id="settings-outputs-dir",
                                 interactive=allow_folder_changes)
        pattern = gr.Textbox(s.filename_pattern, label="File name pattern ([number] [seed] [prompt_words] "
                             "[model_name] [date])", elem_id="settings-filename-pattern",
                             interactive=allow_folder_changes)
        per_user = gr.Checkbox(s.save_per_user_folders, label="Save each signed-in user's pictures under "
                               "outputs/<user>/", elem_id="settings-per-user-folders", interactive=allow_folder_changes)
        if not allow_folder_changes:
            gr.Markdown("Where files go can only be changed from this machine while others can reach the "
                        "server (or after starting with `--enable-insecure-extension-access`).",
                        elem_id="settings-folders-locked")
        save_format = gr.Dropdown(["png", "jpg", "webp"], value=s.save_format, label="Image format",
                                  elem_id="settings-save-format")
        save_first_pass = gr.Checkbox(s.save_images_before_highres_fix, label="Hires fix: also save the picture "
                                      "before its second pass", elem_id="settings-save-first-pass")
    with gr.Group():
        ram_cache = gr.Number(round(s.ram_cache_bytes / GIB, 2), label="RAM for cached checkpoints, GiB",
                              elem_id="settings-ram-cache")
        offload = gr.Dropdown(list(OFFLOAD_MODES), value=s.offload, label="Offload to CPU (to fit in VRAM)",
                              elem_id="settings-offload")
        preview_every = gr.Slider(0, 50, value=s.preview_every_n_steps, step=1,
                                  label="Live preview every N steps (0 = off)", elem_id="settings-preview-every")
        decode_method = gr.Dropdown(list(VAE_DECODE_METHODS), value=s.vae_decode_method,
                                    label="Decode final pictures with (TAESD: taesd_decoder.safetensors / "
                                    "taesdxl_decoder.safetensors in models/VAE-approx; much faster, a little less "
                                    "detail)", elem_id="settings-vae-decode-method")
        tile_size = gr.Number(s.upscaler_tile_size, precision=0, label="Upscaler tile size, pixels (0 = whole "
                              "picture at once; smaller uses less memory)", elem_id="settings-upscaler-tile-size")
    with gr.Group():
        sampler = gr.Dropdown(list(SAMPLERS), value=s.default_sampler, label="Default sampler",
                              elem_id="settings-default-sampler")
        steps = gr.Slider(1, 150, value=s.default_steps, step=1, label="Default steps",
                          elem_id="settings-default-steps")
        size = gr.Number(s.default_size or 0, precision=0, label="Default width and height (0 = the model's own)",
                         elem_id="settings-default-size")
        cn_units = gr.Number(s.controlnet_unit_count, precision=0, minimum=1, maximum=10,
                             label="ControlNet units per tab (1-10; from the next start)",
                             elem_id="settings-controlnet-unit-count")
        fix_steps = gr.Checkbox(s.img2img_fix_steps, label="With img2img, do exactly the amount of steps the slider "
                                "specifies (on a schedule stretched to steps / denoising strength)",
                                elem_id="settings-img2img-fix-steps")
    with gr.Group():  # A1111's UniPC options, under A1111's labels; they change only UniPC's pictures
        unipc_variant = gr.Radio(list(UNI_PC_VARIANTS), value=s.uni_pc_variant, label="UniPC variant",
                                 elem_id="settings-uni-pc-variant")
        unipc_skip = gr.Radio(list(UNI_PC_SKIP_TYPES), value=s.uni_pc_skip_type, label="UniPC skip type",
                              elem_id="settings-uni-pc-skip-type")
        unipc_order = gr.Slider(1, UNI_PC_MAX_ORDER, value=s.uni_pc_order, step=1, label="UniPC order",
                                info="must be < sampling steps (a larger one runs as the step count)",
                                elem_id="settings-uni-pc-order")
        unipc_final = gr.Checkbox(s.uni_pc_lower_order_final, label="UniPC lower order final",
                                  elem_id="settings-uni-pc-lower-order-final")
    save = gr.Button("Apply settings", variant="primary", elem_id="settings-apply")
    status = gr.HTML(elem_id="settings-status")

    def on_save(out_dir, name_pattern, fmt, ram_gib, offload_mode, every, default_sampler, default_steps, side,
                tile=None, first_pass=None, user_folders=None, decoder=None, controlnet_units=None, exact_steps=None,
                variant=None, skip_type=None, order=None, lower_order_final=None):
        current = ctx.settings
        if not allow_folder_changes and (str(out_dir) != str(current.outputs_dir)
                                         or name_pattern != current.filename_pattern):
            return ("<p class='atelier-error'>Refused: the output folder and file name pattern cannot be changed "
                    "from another machine. Nothing was saved.</p>", gr.skip())
        changes = {
            "filename_pattern": name_pattern,
            "save_format": fmt,
            "offload": offload_mode,
            "preview_every_n_steps": every,
            "default_sampler": default_sampler,
            "default_steps": default_steps,
            "default_size": side,
        }
        # Controls added later are optional here, so a save made by an older page keeps working.
        if tile is not None:
            changes["upscaler_tile_size"] = tile
        if first_pass is not None:
            changes["save_images_before_highres_fix"] = bool(first_pass)
        if decoder is not None:
            changes["vae_decode_method"] = decoder
        if controlnet_units is not None:
            changes["controlnet_unit_count"] = controlnet_units
        if exact_steps is not None:
            changes["img2img_fix_steps"] = bool(exact_steps)
        unipc = {"uni_pc_variant": variant, "uni_pc_skip_type": skip_type, "uni_pc_order": order,
                 "uni_pc_lower_order_final": None if lower_order_final is None else bool(lower_order_final)}
        changes.update({name: value for name, value in unipc.items() if value is not None})
        if allow_folder_changes:
            changes["outputs_dir"] = out_dir
            if user_folders is not None:
                changes["save_per_user_folders"] = bool(user_folders)
        try:
            changes["ram_cache_bytes"] = int(float(ram_gib) * GIB)
            updated = save_settings(ctx.settings, changes)
        except (TypeError, ValueError) as exc:
            return f"<p class='atelier-error'>Not saved: {html.escape(str(exc))}</p>", gr.skip()
        restart = updated.outputs_dir != ctx.settings.outputs_dir
        units_changed = updated.controlnet_unit_count != ctx.settings.controlnet_unit_count
        ctx.apply_settings(updated)
        note = " The new output folder is used from the next start." if restart else ""
        if units_changed:
            note += " The new number of ControlNet units shows from the next start."
        return (f"<p class='atelier-ok'>Saved to {html.escape(str(updated.settings_file))} and applied. "
                f"New defaults show in the tabs after a page reload.{html.escape(note)}</p>", "")

    save.click(on_save, [outputs_dir, pattern, save_format, ram_cache, offload, preview_every, sampler, steps, size,
                         tile_size, save_first_pass, per_user, decode_method, cn_units, fix_steps, unipc_variant,
                         unipc_skip, unipc_order, unipc_final], [status, notice],
               api_visibility="private", queue=False)
