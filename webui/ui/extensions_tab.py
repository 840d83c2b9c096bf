"""The Extensions tab (installed extensions, enable/disable, install/update/uninstall), extensions' own
tabs, and their settings in the Settings tab."""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..extensions import admin

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)


def records_html(ctx: AppContext) -> str:
    """The table of extensions as they are now: switched off during the session, or with a memory note."""
    rows = []
    notes = ctx.hooks.memory_notes
    for record in ctx.extensions.records.values():
        note = " ".join(filter(None, [record.error, f"⚠️ Memory: {notes[record.id]}" if record.id in notes else ""]))
        cells = [record.name, record.id, record.version, record.status, f"{record.seconds * 1000:.0f} ms", note]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    if not rows:
        return f"<p>No extensions in {html.escape(str(ctx.extensions.folder))}.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("Name", "Id", "Version", "Status", "Load time", "Note"))
    return f"<table class='atelier-extensions'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def admin_refusal(ctx: AppContext) -> str | None:
    settings = ctx.settings
    return admin.refusal(settings.host, getattr(ctx, "shared", False), settings.enable_insecure_extension_access)


class AdminActions:
    """The tab's admin buttons; each returns the message the page shows. Refused (and nothing done) when
    other machines can reach the server, unless the operator allowed it at start-up."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.manager = ctx.extensions

    def _guarded(self, action: Any, *args: Any) -> str:
        why = admin_refusal(self.ctx)
        if why:
            return f"❌ Refused: {why}. Start Atelier with `--enable-insecure-extension-access` to allow it."
        try:
            return action(*args)
        except admin.AdminError as exc:
            return f"❌ {html.escape(str(exc))}"

    def _record(self, ext_id: str | None) -> Any:
        record = self.manager.records.get(ext_id or "")
        if record is None or record.path is None:
            raise admin.AdminError("choose an extension installed in the extensions folder")
        return record

    def install(self, url: str) -> str:
        def run() -> str:
            path = admin.install_from_git(url or "", self.manager.folder)
            return f"✅ Installed into `extensions/{html.escape(path.name)}`. Restart Atelier to load it."
        return self._guarded(run)

    def update(self, ext_id: str | None) -> str:
        def run() -> str:
            record = self._record(ext_id)
            return f"✅ {html.escape(admin.update(record.path, self.manager.folder))}. Restart Atelier to apply."
        return self._guarded(run)

    def install_requirements(self, ext_id: str | None) -> str:
        def run() -> str:
            record = self._record(ext_id)
            done = admin.install_requirements(record.missing)
            return f"✅ {html.escape(done)}. Restart Atelier to load the extension."
        return self._guarded(run)

    def uninstall(self, ext_id: str | None) -> str:
        def run() -> str:
            record = self._record(ext_id)
            admin.uninstall(record.path, self.manager.folder)
            return f"✅ Removed `extensions/{html.escape(record.path.name)}`. Restart Atelier to finish."
        return self._guarded(run)


def build(ctx: AppContext) -> None:
    manager = ctx.extensions
    ids = [i for i, r in manager.records.items() if r.manifest is not None or r.source == "package"]
    refused = admin_refusal(ctx)
    if refused:
        gr.Markdown(f"⚠️ Installing, updating and uninstalling extensions is switched off because {refused}. "
                    "Start Atelier with `--enable-insecure-extension-access` to allow it.",
                    elem_id="extensions-refused")
    gr.HTML(lambda: records_html(ctx), elem_id="extensions-table")  # read again at each page load
    with gr.Row():
        enabled = gr.CheckboxGroup(ids, value=[i for i in ids if i not in manager.store.disabled],
                                   label="Enabled extensions", elem_id="extensions-enabled", scale=4)
        apply = gr.Button("Apply (takes effect at restart)", elem_id="extensions-apply", scale=1)
    with gr.Row():
        url = gr.Textbox(label="Install from git URL", placeholder="https://github.com/someone/atelier-extension.git",
                         elem_id="extensions-url", scale=4)
        install = gr.Button("Install", elem_id="extensions-install", scale=1)
    with gr.Row():
        chosen = gr.Dropdown(ids, label="Extension", elem_id="extensions-chosen", scale=3)
        update = gr.Button("Update (git pull)", elem_id="extensions-update", scale=1)
        requirements = gr.Button("Install missing requirements", elem_id="extensions-requirements", scale=1)
        remove = gr.Button("Uninstall", elem_id="extensions-uninstall", variant="stop", scale=1)
    message = gr.Markdown("", elem_id="extensions-message")

    actions = AdminActions(ctx)

    def on_apply(selected: list[str]) -> str:
        for ext_id in ids:
            manager.store.set_enabled(ext_id, ext_id in (selected or []))
        return "✅ Saved. Restart Atelier to apply."

    apply.click(on_apply, [enabled], [message], queue=False, api_visibility="private")
    install.click(actions.install, [url], [message], api_visibility="private")
    update.click(actions.update, [chosen], [message], api_visibility="private")
    requirements.click(actions.install_requirements, [chosen], [message], api_visibility="private")
    remove.click(actions.uninstall, [chosen], [message], api_visibility="private")


def build_extension_tabs(ctx: AppContext) -> None:
    """Each extension tab inside its own gr.Tab; one whose build raises is switched off and hidden."""
    registry = ctx.hooks
    for tab in list(registry.tabs):
        if not registry.active(tab.owner):
            continue
        with gr.Tab(tab.title, elem_id=f"tab-ext-{tab.owner}") as shown:
            try:
                tab.build()
            except Exception as exc:
                registry.switch_off(tab.owner, f"its tab {tab.title!r} failed to build: {exc}")
                shown.visible = False


def build_extension_settings(ctx: AppContext) -> None:
    registry = ctx.hooks
    for owner, settings in registry.settings.items():
        if not registry.active(owner) or not settings:
            continue
        with gr.Accordion(f"Extension: {owner}", open=False, elem_id=f"settings-ext-{owner}"):
            components = []
            for setting in settings:
                value = registry.setting_value(owner, setting.key)
                component: gr.components.Component
                if setting.choices:
                    component = gr.Dropdown(list(setting.choices), value=value, label=setting.label)
                elif isinstance(setting.default, bool):
                    component = gr.Checkbox(value=bool(value), label=setting.label)
                elif isinstance(setting.default, (int, float)):
                    component = gr.Number(value=value, label=setting.label)
                else:
                    component = gr.Textbox(value="" if value is None else str(value), label=setting.label)
                components.append(component)
            save = gr.Button("Save", elem_id=f"settings-ext-{owner}-save", size="sm")
            saved = gr.Markdown("")

            def on_save(*values: Any, owner: str = owner, settings: list = settings) -> str:
                coerced = {}
                for setting, value in zip(settings, values, strict=True):
                    if isinstance(setting.default, int) and not isinstance(setting.default, bool) and value is not None:
                        value = int(value)
                    coerced[setting.key] = value
                ctx.extensions.store.set_values(owner, coerced)
                return "✅ Saved"

            save.click(on_save, components, [saved], queue=False, api_visibility="private")
