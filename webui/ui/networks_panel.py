"""Cards under the prompt for LoRAs, embeddings and checkpoints, with their preview pictures
(``name.preview.png``): click a LoRA or embedding to add it to the prompt, a checkpoint to pick it. The chosen
card's notes can be edited and saved beside its file, and the picture selected in the gallery can become its
preview (the host only, on a shared server)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image, ImageDraw

from .. import model_cards
from ..extra_networks import lora_tag
from ..users import is_admin, user_of
from . import forms

if TYPE_CHECKING:
    from ..context import AppContext

KINDS = ("lora", "embedding", "checkpoint")
LABELS = {"lora": "LoRA", "embedding": "Embeddings", "checkpoint": "Checkpoints"}


def model_files(ctx: AppContext, kind: str) -> dict[str, Path]:
    """name -> file for one kind of card (checkpoints by their title, as the checkpoint list shows them)."""
    if kind == "lora":
        return ctx.manager.loras.files()
    if kind == "embedding":
        return ctx.manager.embeddings.files()
    return {entry.title: entry.path for entry in ctx.registry.entries()}


def _builtin(ctx: AppContext, kind: str, name: str) -> bool:
    if kind != "checkpoint":
        return False
    entry = ctx.registry.find(name)
    return entry is not None and entry.builtin


def placeholder(name: str, side: int = model_cards.THUMB_SIDE) -> Image.Image:
    """A plain card for a model without a preview: its initials on grey."""
    image = Image.new("RGB", (side, side), (88, 92, 104))
    initials = "".join(word[:1] for word in name.replace("_", " ").replace("-", " ").split()[:2]).upper() or "?"
    draw = ImageDraw.Draw(image)
    draw.text((side / 2, side / 2), initials, fill=(235, 235, 240), anchor="mm", font_size=side // 3)
    return image


def cards(ctx: AppContext, kind: str) -> tuple[list[tuple[Image.Image, str]], list[str]]:
    """(gallery items, names in the same order) for one kind."""
    files = model_files(ctx, kind)
    items = [(model_cards.thumbnail(path) or placeholder(name), name) for name, path in files.items()]
    return items, list(files)


def _hint(ctx: AppContext) -> str:
    loras = ctx.manager.loras.folder
    embeddings = ", ".join(f"`{folder}`" for folder in ctx.manager.embeddings.folders)
    return (f"LoRA files (`.safetensors`) go in `{loras}`, textual-inversion embeddings in {embeddings}. "
            "Click a card to add it to the prompt (a checkpoint card picks that checkpoint); edit the number in "
            "`<lora:name:1>` to change its weight. A card shows `name.preview.png` from beside its file.")


@dataclass
class NetworksPanel:
    ctx: AppContext
    mode: str
    prompt: gr.Textbox
    galleries: dict[str, gr.Gallery]
    names: dict[str, gr.State]
    chosen: gr.State  # {"kind": ..., "name": ...} of the last card clicked
    chosen_label: gr.Markdown
    notes: gr.Textbox
    save_notes: gr.Button
    use_picture: gr.Button
    status: gr.Markdown
    refresh: gr.Button
    extra: dict[str, Any] = field(default_factory=dict)

    def connect(self, results: gr.State, checkpoint: gr.Dropdown) -> None:
        """Wire the cards to the tab's results (for "use current picture") and the top bar's checkpoint list."""
        ctx = self.ctx
        for kind in KINDS:
            outputs = [self.prompt, checkpoint, self.chosen, self.chosen_label, self.notes]

            def on_pick(names: list[str], text: str, event: gr.SelectData, _kind: str = kind):
                index = event.index if isinstance(event.index, int) else -1
                if not 0 <= index < len(names):
                    return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                name = names[index]
                prompt, picked = gr.skip(), gr.skip()
                if _kind == "lora":
                    prompt = forms.insert_into_prompt(text or "", lora_tag(name))
                elif _kind == "embedding":
                    prompt = forms.insert_into_prompt(text or "", name)
                else:
                    picked = gr.update(value=name)
                path = model_files(ctx, _kind).get(name)
                notes = model_cards.read_notes(path) if path is not None else ""
                label = f"**{html.escape(LABELS[_kind])}: {html.escape(name)}**"
                return prompt, picked, {"kind": _kind, "name": name}, label, notes

            self.galleries[kind].select(on_pick, [self.names[kind], self.prompt], outputs, queue=False,
                                        api_visibility="private")

        def chosen_file(chosen: dict, request: gr.Request) -> tuple[str, str, Path]:
            kind, name = (chosen or {}).get("kind"), (chosen or {}).get("name")
            if kind not in KINDS or not name:
                raise gr.Error("Click a card first.")
            if not is_admin(user_of(request), ctx.settings.admin_users):
                raise gr.Error("Only the host can change the cards' notes and pictures on a shared studio.")
            if _builtin(ctx, kind, name):
                raise gr.Error("The built-in model's card is part of Atelier and cannot be changed.")
            path = model_files(ctx, kind).get(name)
            if path is None:
                raise gr.Error(f"{name} is no longer there; press Refresh.")
            return kind, name, path

        def on_save_notes(chosen: dict, text: str, request: gr.Request) -> str:
            _, name, path = chosen_file(chosen, request)
            try:
                saved = model_cards.save_notes(path, text or "")
            except model_cards.CardError as exc:
                raise gr.Error(str(exc)) from exc
            return f"Saved the notes for {html.escape(name)} in `{html.escape(saved.name)}`."

        self.save_notes.click(on_save_notes, [self.chosen, self.notes], [self.status], queue=False,
                              api_visibility="private")

        shelves = [c for kind in KINDS for c in (self.galleries[kind], self.names[kind])]

        def on_use_picture(chosen: dict, tab_results: dict, request: gr.Request) -> list[Any]:
            kind, name, path = chosen_file(chosen, request)
            paths = (tab_results or {}).get("paths") or []
            if not paths:
                raise gr.Error("Generate a picture first (with saving on); the selected one becomes the preview.")
            index = min(int((tab_results or {}).get("selected", 0)), len(paths) - 1)
            picture_path = Path(paths[index])
            if not picture_path.resolve().is_relative_to(Path(ctx.settings.outputs_dir).resolve()):
                raise gr.Error("Only pictures in the outputs folder can become previews.")
            try:
                with Image.open(picture_path) as picture:
                    saved = model_cards.save_preview(path, picture)
            except OSError as exc:
                raise gr.Error(f"Cannot read the picture: {exc}") from exc
            except model_cards.CardError as exc:
                raise gr.Error(str(exc)) from exc
            out: list[Any] = [f"`{html.escape(saved.name)}` is now the picture on {html.escape(name)}'s card."]
            for shelf in KINDS:  # the chosen kind's cards are redrawn with the new picture
                if shelf == kind:
                    items, names = cards(ctx, kind)
                    out += [gr.update(value=items), names]
                else:
                    out += [gr.skip(), gr.skip()]
            return out

        self.use_picture.click(on_use_picture, [self.chosen, results], [self.status, *shelves], queue=False,
                               api_visibility="private")

        def on_refresh():
            out: list[Any] = []
            for kind in KINDS:
                items, names = cards(ctx, kind)
                out += [gr.update(value=items), names]
            return out

        self.refresh.click(on_refresh, None, shelves, queue=False, api_visibility="private")


def build_networks_panel(ctx: AppContext, mode: str, prompt: gr.Textbox) -> NetworksPanel:
    galleries: dict[str, gr.Gallery] = {}
    names: dict[str, gr.State] = {}
    with gr.Accordion("🎴 LoRA, embeddings and checkpoints", open=False, elem_id=f"{mode}-networks"):
        with gr.Tabs(elem_id=f"{mode}-card-tabs"):
            for kind in KINDS:
                with gr.Tab(LABELS[kind], elem_id=f"{mode}-{kind}-cards-tab"):
                    items, listed = cards(ctx, kind)
                    galleries[kind] = gr.Gallery(items, label=LABELS[kind], show_label=False, columns=6,
                                                 height="auto", allow_preview=False, object_fit="cover",
                                                 buttons=[], elem_id=f"{mode}-{kind}-cards", format="png",
                                                 elem_classes=["atelier-cards"])
                    names[kind] = gr.State(listed)
        with gr.Row(equal_height=True):
            chosen_label = gr.Markdown("Click a card to use it; its notes show here.", elem_id=f"{mode}-card-name")
            refresh = gr.Button("🔄 Refresh", elem_id=f"{mode}-refresh-networks", size="sm", scale=0)
        notes = gr.Textbox(label="Notes (saved beside the file)", lines=2, elem_id=f"{mode}-card-notes")
        with gr.Row():
            save_notes = gr.Button("💾 Save notes", elem_id=f"{mode}-card-save-notes", size="sm")
            use_picture = gr.Button("🖼️ Use current picture as preview", elem_id=f"{mode}-card-use-picture",
                                    size="sm")
        status = gr.Markdown("", elem_id=f"{mode}-card-status")
        gr.Markdown(_hint(ctx), elem_id=f"{mode}-networks-hint")
    chosen = gr.State({})
    return NetworksPanel(ctx, mode, prompt, galleries, names, chosen, chosen_label, notes, save_notes, use_picture,
                         status, refresh)
