"""The History tab: the signed-in user's pictures (everyone's for the host), newest first, a page at a time, with
filters, the picture's parameters, favourites, delete to a trash with restore, and Send to txt2img / img2img /
Inpaint / Extras. The rules are in ``webui.history.library``; this module only draws and wires them."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from ..history.index import Filters, check_date
from ..history.library import History, HistoryError
from ..infotext import parse_infotext
from ..users import user_of

if TYPE_CHECKING:
    from ..context import AppContext

PER_PAGE = 24
TRASH_SHOWN = 60


@dataclass
class HistoryTab:
    history: History
    gallery: gr.Gallery
    image: gr.State  # the selected picture's path (what the Send buttons carry)
    text: gr.State  # its infotext
    send: dict[str, gr.Button] = field(default_factory=dict)
    extras: gr.Button | None = None

    def connect_extras(self, tabs: gr.Tabs, extras_image: gr.Image) -> None:
        """Send to Extras: the picture into the Extras tab's single-image input."""
        assert self.extras is not None

        def to_extras(path: str | None):
            if not path:
                raise gr.Error("Pick a picture first.")
            return gr.Tabs(selected="extras"), path

        self.extras.click(to_extras, [self.image], [tabs, extras_image], queue=False, api_visibility="private")


def filters_from(text: str, checkpoint: str | None, date_from: str, date_to: str, seed: str,
                 favourites: bool) -> Filters:
    """The form's filters; gr.Error naming the field that is wrong."""
    try:
        start, end = check_date(date_from, "From"), check_date(date_to, "To")
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc
    seed = (seed or "").strip()
    if seed and not seed.lstrip("-").isdigit():
        raise gr.Error("Seed: a whole number, e.g. 1234")
    return Filters(text or "", checkpoint or "", start, end, int(seed) if seed else None, bool(favourites))


def picture_html(entry: Any, show_owner: bool) -> str:
    """The picture's parameters; everything from the file is escaped."""
    fields = parse_infotext(entry.infotext) if entry.infotext.strip() else {}
    shown = {k: v for k, v in fields.items() if k not in ("Prompt", "Negative prompt") and not k.endswith(("-1", "-2"))}
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in shown.items())
    owner = f" · made by {html.escape(entry.owner or 'the host')}" if show_owner else ""
    where = html.escape(entry.path)
    if not fields:
        return (f"<p class='atelier-history-meta'>{html.escape(entry.when)}{owner} · {where}</p>"
                "<p class='atelier-warning'>This picture holds no generation parameters.</p>")
    return (f"<p class='atelier-history-meta'>{html.escape(entry.when)}{owner} · {where}</p>"
            f"<h4>Prompt</h4><p class='atelier-prompt'>{html.escape(str(fields.get('Prompt', '')))}</p>"
            f"<h4>Negative prompt</h4><p>{html.escape(str(fields.get('Negative prompt', '')))}</p>"
            f"<table class='atelier-params'>{rows}</table>")


def _favourite_label(on: bool) -> str:
    return "⭐ Favourite (click to remove)" if on else "☆ Add to favourites"


def build(ctx: AppContext, tab_item: gr.Tab) -> HistoryTab:
    history = History(ctx.settings.outputs_dir, lambda: ctx.settings.admin_users)
    with gr.Row(elem_id="history-filters", equal_height=True):
        text = gr.Textbox(label="Prompt contains", elem_id="history-text", scale=3)
        checkpoint = gr.Dropdown(label="Checkpoint", choices=[], allow_custom_value=True, elem_id="history-checkpoint",
                                 scale=2)
        date_from = gr.Textbox(label="From (YYYY-MM-DD)", elem_id="history-from", scale=1)
        date_to = gr.Textbox(label="To (YYYY-MM-DD)", elem_id="history-to", scale=1)
        seed = gr.Textbox(label="Seed", elem_id="history-seed", scale=1)
        favourites = gr.Checkbox(label="⭐ Favourites only", elem_id="history-favourites", scale=1)
    with gr.Row(elem_id="history-actions"):
        search = gr.Button("🔎 Search", variant="primary", elem_id="history-search", size="sm")
        refresh = gr.Button("🔄 Refresh", elem_id="history-refresh", size="sm")
    gallery = gr.Gallery(label="Your pictures, newest first", columns=6, height="auto", allow_preview=False,
                         object_fit="cover", buttons=[], format="webp", elem_id="history-gallery",
                         elem_classes=["atelier-history-gallery"])
    with gr.Row(elem_id="history-pager", equal_height=True):
        newer = gr.Button("◀ Newer", elem_id="history-newer", size="sm")
        page_label = gr.Markdown("", elem_id="history-page")
        older = gr.Button("Older ▶", elem_id="history-older", size="sm")
    with gr.Row(elem_id="history-selected"):
        with gr.Column(scale=1):
            picture = gr.Image(label="Picture", interactive=False, elem_id="history-picture", height=400,
                               type="filepath")
        with gr.Column(scale=1):
            info = gr.HTML("<p>Pick a picture to see its parameters.</p>", elem_id="history-info")
            favourite = gr.Button(_favourite_label(False), elem_id="history-favourite", size="sm")
            with gr.Row():
                send = {
                    "txt2img": gr.Button("✨ Send to txt2img", elem_id="history-send-txt2img", size="sm"),
                    "img2img": gr.Button("📐 Send to img2img", elem_id="history-send-img2img", size="sm"),
                    "inpaint": gr.Button("🎨 Send to inpaint", elem_id="history-send-inpaint", size="sm"),
                }
                extras = gr.Button("🔍 Send to Extras", elem_id="history-send-extras", size="sm")
            delete = gr.Button("🗑️ Delete (to the trash)", variant="stop", elem_id="history-delete", size="sm")
            status = gr.Markdown("", elem_id="history-status")
    with gr.Accordion("🗑️ Trash", open=False, elem_id="history-trash-panel") as trash_panel:
        trash_gallery = gr.Gallery(label="Deleted pictures", columns=6, height="auto", allow_preview=False,
                                   object_fit="cover", buttons=[], format="webp", elem_id="history-trash")
        restore = gr.Button("♻️ Restore the chosen picture", elem_id="history-restore", size="sm")
        trash_status = gr.Markdown("", elem_id="history-trash-status")

    shown = gr.State({"number": 1, "paths": []})
    chosen = gr.State("")  # relative path of the picture picked
    image = gr.State(None)
    infotext = gr.State("")
    trash_tokens = gr.State([])
    trash_chosen = gr.State("")
    filter_inputs = [text, checkpoint, date_from, date_to, seed, favourites]
    page_outputs = [gallery, page_label, shown, checkpoint]

    def render(request: gr.Request, number: int, *values: Any) -> list[Any]:
        user = user_of(request)
        found = history.show(user, filters_from(*values), number, PER_PAGE)
        page = found.page
        items = [(str(path), "⭐" if entry.favourite else None) for entry, path in zip(page.entries, found.images,
                                                                                     strict=True)]
        whose = "everyone's" if history.is_host(user) else "your"
        label = (f"Page **{page.number}** of {page.pages} · {page.total} of {whose} pictures" if page.total else
                 "No pictures yet: the ones you generate appear here.")
        state = {"number": page.number, "paths": [entry.path for entry in page.entries]}
        choices = history.index.checkpoints(history.scope(user))
        return [items, label, state, gr.update(choices=choices)]

    def first_page(request: gr.Request, *values: Any) -> list[Any]:
        return render(request, 1, *values)

    def step(delta: int):
        def go(request: gr.Request, current: dict, *values: Any) -> list[Any]:
            return render(request, int((current or {}).get("number", 1)) + delta, *values)
        return go

    def refresh_all(request: gr.Request, current: dict, *values: Any) -> list[Any]:
        history.index.refresh(full=True)
        return render(request, int((current or {}).get("number", 1)), *values)

    common: dict[str, Any] = {"queue": False, "api_visibility": "private"}
    search.click(first_page, filter_inputs, page_outputs, **common)
    text.submit(first_page, filter_inputs, page_outputs, **common)
    seed.submit(first_page, filter_inputs, page_outputs, **common)
    favourites.input(first_page, filter_inputs, page_outputs, **common)
    refresh.click(refresh_all, [shown, *filter_inputs], page_outputs, **common)
    newer.click(step(-1), [shown, *filter_inputs], page_outputs, **common)
    older.click(step(+1), [shown, *filter_inputs], page_outputs, **common)

    selected_outputs = [chosen, picture, info, favourite, image, infotext, status]

    def on_pick(request: gr.Request, current: dict, event: gr.SelectData) -> list[Any]:
        paths = (current or {}).get("paths") or []
        index = event.index if isinstance(event.index, int) else -1
        if not 0 <= index < len(paths):
            return [gr.skip()] * len(selected_outputs)
        user = user_of(request)
        try:
            entry = history.picture(user, paths[index])
        except HistoryError as exc:
            raise gr.Error(str(exc)) from exc
        path = str(history.path_of(entry.path))
        return [entry.path, path, picture_html(entry, history.is_host(user)), _favourite_label(entry.favourite), path,
                entry.infotext, ""]

    gallery.select(on_pick, [shown], selected_outputs, **common)

    def on_favourite(request: gr.Request, rel: str, current: dict, *values: Any) -> list[Any]:
        if not rel:
            raise gr.Error("Pick a picture first.")
        user = user_of(request)
        try:
            entry = history.picture(user, rel)
            entry = history.favourite(user, rel, not entry.favourite)
        except HistoryError as exc:
            raise gr.Error(str(exc)) from exc
        return [_favourite_label(entry.favourite),
                *render(request, int((current or {}).get("number", 1)), *values)]

    favourite.click(on_favourite, [chosen, shown, *filter_inputs], [favourite, *page_outputs], **common)

    def trash_view(user: str | None) -> tuple[list[Any], list[str]]:
        items, tokens = [], []
        for item, thumb in history.trashed(user)[:TRASH_SHOWN]:
            if thumb is not None:
                shown_image: Any = str(thumb)
            else:  # the trash is never served: a small copy goes through Gradio's cache instead
                try:
                    with Image.open(item.file) as full:
                        shown_image = full.convert("RGB")
                        shown_image.thumbnail((256, 256))
                except OSError:
                    continue
            items.append((shown_image, item.path.rsplit("/", 1)[-1]))
            tokens.append(item.token)
        return items, tokens

    def on_delete(request: gr.Request, rel: str, current: dict, *values: Any) -> list[Any]:
        if not rel:
            raise gr.Error("Pick a picture first.")
        user = user_of(request)
        try:
            history.delete(user, rel)
        except HistoryError as exc:
            raise gr.Error(str(exc)) from exc
        items, tokens = trash_view(user)
        cleared = ["", None, f"<p>Moved {html.escape(rel)} to the trash.</p>", _favourite_label(False), None, "", ""]
        return [*cleared, *render(request, int((current or {}).get("number", 1)), *values), items, tokens]

    delete.click(on_delete, [chosen, shown, *filter_inputs],
                 [*selected_outputs, *page_outputs, trash_gallery, trash_tokens], **common)

    def on_trash_open(request: gr.Request) -> list[Any]:
        items, tokens = trash_view(user_of(request))
        return [items, tokens]

    def on_trash_pick(tokens: list[str], event: gr.SelectData) -> str:
        index = event.index if isinstance(event.index, int) else -1
        return tokens[index] if 0 <= index < len(tokens) else ""

    def on_restore(request: gr.Request, token: str, current: dict, *values: Any) -> list[Any]:
        if not token:
            raise gr.Error("Pick a picture in the trash first.")
        user = user_of(request)
        try:
            restored = history.restore(user, token)
        except HistoryError as exc:
            raise gr.Error(str(exc)) from exc
        items, tokens = trash_view(user)
        return [f"Restored {html.escape(restored)}.", items, tokens, "",
                *render(request, int((current or {}).get("number", 1)), *values)]

    trash_panel.expand(on_trash_open, None, [trash_gallery, trash_tokens], **common)
    trash_gallery.select(on_trash_pick, [trash_tokens], [trash_chosen], **common)
    restore.click(on_restore, [trash_chosen, shown, *filter_inputs],
                  [trash_status, trash_gallery, trash_tokens, trash_chosen, *page_outputs], **common)

    # The tab shows the newest page whenever it is opened (pictures made since then included).
    tab_item.select(first_page, filter_inputs, page_outputs, **common)
    return HistoryTab(history, gallery, image, infotext, send, extras)
