"""Extras: enlarge pictures with an upscaler (and blend a second one over it), as A1111's Extras tab does.

One picture, several uploads, or a folder inside the outputs folder (never one outside it: the page may be
used from other machines; and of a folder a friend reads only their own pictures). Results go to
outputs/extras-images/ (outputs/<user>/extras-images/ with per-user folders) with the original's parameters and
what was done ("Postprocess upscale by: 2, Postprocess upscaler: ...") and the signed-in user who made them.
Jobs wait in Atelier's job queue, in the user's turn, and run on the head's own engine.
The work is ``webui.upscalers.extras``; this module only gathers the pictures and shows the results.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from ..errors import AtelierError
from ..history.access import may_read
from ..upscalers.extras import (
    BY,
    MAX_SIDE,
    TO,
    ExtrasOptions,
    ExtrasPicture,
    check_batch,
    check_options,
    html_info,
    run_pictures,
)
from ..users import user_of
from .runner import owner_of

if TYPE_CHECKING:
    from ..context import AppContext

SINGLE, BATCH, FOLDER = "single", "batch", "folder"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_FOLDER_PICTURES = 200


@dataclass
class ExtrasTab:
    image: gr.Image
    files: gr.File
    folder: gr.Textbox
    gallery: gr.Gallery
    info: gr.HTML
    run: gr.Button


def open_picture(path: Path, label: str) -> Image.Image:
    """A picture from disk, refused (gr.Error naming ``label``) when it is not one or is too large."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            if image.width * image.height > MAX_SIDE * MAX_SIDE:
                raise gr.Error(f"{label}: {path.name} is {image.width}x{image.height}; the largest picture Extras "
                               f"takes is {MAX_SIDE}x{MAX_SIDE}")
            image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise gr.Error(f"{label}: {path.name} is not a picture Atelier can read (PNG, JPEG or WebP)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise gr.Error(f"{label}: {path.name} is damaged ({exc})") from exc
    return image


def folder_inside(outputs_dir: Path, text: str) -> Path:
    """The folder ``text`` names (relative to the outputs folder, or absolute), if it lies inside the outputs
    folder once links are followed; gr.Error otherwise."""
    root = Path(outputs_dir).resolve()
    if not text or not text.strip():
        raise gr.Error("Input folder: name a folder inside the outputs folder, e.g. txt2img-images/2024-05-31")
    folder = (root / text.strip()).resolve()
    if not folder.is_relative_to(root):
        raise gr.Error(f"Input folder: only folders inside the outputs folder ({root}) can be read")
    if not folder.is_dir() or any(part.startswith(".") for part in folder.relative_to(root).parts):
        # Hidden folders (History's thumbnails and trash) hold no pictures to enlarge.
        raise gr.Error(f"Input folder: {text.strip()} is not a folder inside {root}")
    return folder


def folder_pictures(outputs_dir: Path, text: str,
                    readable: Callable[[Path], bool] = lambda path: True) -> list[ExtrasPicture]:
    """The pictures of a folder inside the outputs folder that ``readable`` lets the user see."""
    folder = folder_inside(outputs_dir, text)
    root = Path(outputs_dir).resolve()
    paths = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file()
             and not p.name.startswith(".") and p.resolve().is_relative_to(root)  # no link out of the folder
             and readable(p)]
    if not paths:
        raise gr.Error(f"Input folder: no PNG, JPEG or WebP pictures in {text.strip()}")
    if len(paths) > MAX_FOLDER_PICTURES:
        raise gr.Error(f"Input folder: {len(paths)} pictures; Extras takes at most {MAX_FOLDER_PICTURES} at once")
    return [ExtrasPicture(open_picture(p, "Input folder"), p.name) for p in paths]


def gather(source: str, image: Any, files: Any, folder: str, outputs_dir: Path,
           readable: Callable[[Path], bool] = lambda path: True) -> list[ExtrasPicture]:
    if source == BATCH:
        paths = [Path(getattr(f, "name", f)) for f in (files or [])]
        if not paths:
            raise gr.Error("Batch process: upload one or more pictures first")
        return [ExtrasPicture(open_picture(p, "Batch process"), p.name) for p in paths]
    if source == FOLDER:
        return folder_pictures(outputs_dir, folder, readable)
    if image is None:
        raise gr.Error("Drop a picture into Source first")
    if image.width * image.height > MAX_SIDE * MAX_SIDE:
        raise gr.Error(f"Source: the picture is {image.width}x{image.height}; the largest Extras takes is "
                       f"{MAX_SIDE}x{MAX_SIDE}")
    return [ExtrasPicture(image)]


def build(ctx: AppContext) -> ExtrasTab:
    library = ctx.manager.upscalers
    names = library.names()
    source = gr.State(SINGLE)
    mode = gr.State(BY)
    with gr.Row():
        with gr.Column():
            with gr.Tabs(elem_id="extras-source"):
                with gr.Tab("Single image", elem_id="extras-single-tab") as single_tab:
                    image = gr.Image(label="Source", type="pil", sources=["upload", "clipboard"],
                                     elem_id="extras-image", height=360)
                with gr.Tab("Batch process", elem_id="extras-batch-tab") as batch_tab:
                    files = gr.File(label="Pictures", file_count="multiple", file_types=["image"],
                                    elem_id="extras-batch")
                with gr.Tab("Batch from directory", elem_id="extras-folder-tab") as folder_tab:
                    folder = gr.Textbox(label="Input folder, inside the outputs folder "
                                        f"({ctx.settings.outputs_dir})", placeholder="txt2img-images/2024-05-31",
                                        elem_id="extras-folder")
            with gr.Tabs(elem_id="extras-resize-mode"):
                with gr.Tab("Scale by", elem_id="extras-scale-by-tab") as by_tab:
                    resize = gr.Slider(1, 8, value=2, step=0.05, label="Resize", elem_id="extras-upscaling-resize")
                with gr.Tab("Scale to", elem_id="extras-scale-to-tab") as to_tab:
                    with gr.Row():
                        width = gr.Slider(64, MAX_SIDE, value=512, step=8, label="Width", elem_id="extras-resize-w")
                        height = gr.Slider(64, MAX_SIDE, value=512, step=8, label="Height", elem_id="extras-resize-h")
                    crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras-crop")
            with gr.Row(equal_height=True):
                upscaler_1 = gr.Dropdown(names, value=names[0], label="Upscaler 1", elem_id="extras-upscaler-1",
                                         scale=4)
                refresh = gr.Button("🔄 Refresh", elem_id="extras-refresh", scale=0, min_width=48)
            with gr.Row():
                upscaler_2 = gr.Dropdown(names, value=names[0], label="Upscaler 2", elem_id="extras-upscaler-2")
                visibility = gr.Slider(0, 1, value=0, step=0.001, label="Upscaler 2 visibility",
                                       elem_id="extras-upscaler-2-visibility")
            run = gr.Button("Generate", variant="primary", elem_id="extras-generate")
        with gr.Column():
            gallery = gr.Gallery(label="Result", elem_id="extras-gallery", columns=2, height=480)
            info = gr.HTML(elem_id="extras-info")

    single_tab.select(lambda: SINGLE, None, source, queue=False, api_visibility="private")
    batch_tab.select(lambda: BATCH, None, source, queue=False, api_visibility="private")
    folder_tab.select(lambda: FOLDER, None, source, queue=False, api_visibility="private")
    by_tab.select(lambda: BY, None, mode, queue=False, api_visibility="private")
    to_tab.select(lambda: TO, None, mode, queue=False, api_visibility="private")

    def on_refresh(first: str | None, second: str | None):
        library.refresh()
        choices = library.names()
        return (gr.update(choices=choices, value=first if first in choices else choices[0]),
                gr.update(choices=choices, value=second if second in choices else choices[0]))

    refresh.click(on_refresh, [upscaler_1, upscaler_2], [upscaler_1, upscaler_2], queue=False,
                  api_visibility="private")

    def on_run(source_kind: str, picture: Any, uploads: Any, folder_text: str, resize_mode: int, by: float,
               to_w: Any, to_h: Any, crop_to_fit: bool, first: str, second: str, amount: float,
               request: gr.Request | None = None):
        # Values as the page (or a Gradio API client) sent them; check_options turns them into whole numbers.
        user = user_of(request)
        root = ctx.settings.outputs_dir
        pictures = gather(source_kind, picture, uploads, folder_text, root,
                          lambda path: may_read(root, path, user, ctx.settings.admin_users))
        given = ExtrasOptions(int(resize_mode), by, to_w, to_h, bool(crop_to_fit), first or "None",
                              second or "None", amount)
        try:
            options = check_options(given, library.find, library.names)
            check_batch([p.image.size for p in pictures], options, "image")
            outputs = ctx.outputs if ctx.settings.save_images else None
            done = ctx.run_on_head(lambda: run_pictures(library, pictures, options, outputs,
                                                        ctx.settings.save_format, user), owner_of(request), "extras")
        except AtelierError as exc:
            raise gr.Error(str(exc)) from exc
        shown = [str(out.path) if out.path is not None else out.image for out in done]
        return shown, html_info(done[-1].info, [])

    run.click(on_run, [source, image, files, folder, mode, resize, width, height, crop, upscaler_1, upscaler_2,
                       visibility], [gallery, info], api_name="extras", concurrency_limit=None)
    return ExtrasTab(image, files, folder, gallery, info, run)
