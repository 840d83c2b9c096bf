"""Extensions' controls inside txt2img / img2img: their collapsible sections (values reach their hooks as
``request.extra[<extension id>]``) and the Script dropdown with each script's own controls."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

NO_SCRIPT = "None"


@dataclass
class ExtensionControls:
    script: gr.Dropdown | None = None
    scripts: list[tuple[str, Any, list[Any]]] = field(default_factory=list)  # (owner, script, its controls)
    sections: list[tuple[str, list[str], list[Any]]] = field(default_factory=list)  # (owner, names, components)

    def inputs(self) -> list[Any]:
        out: list[Any] = [self.script] if self.script is not None else []
        for _, _, controls in self.scripts:
            out.extend(controls)
        for _, _, components in self.sections:
            out.extend(components)
        return out

    def split(self, values: list[Any]) -> tuple[tuple[str, Any, list[Any]] | None, dict[str, dict[str, Any]]]:
        """(the chosen script with its values, or None; {extension id: {name: value}} of the sections)."""
        values = list(values)
        chosen = values.pop(0) if self.script is not None else NO_SCRIPT
        picked = None
        for owner, script, controls in self.scripts:
            mine, values = values[:len(controls)], values[len(controls):]
            if script.title == chosen:
                picked = (owner, script, mine)
        extra: dict[str, dict[str, Any]] = {}
        for owner, names, components in self.sections:
            mine, values = values[:len(components)], values[len(components):]
            extra.setdefault(owner, {}).update(zip(names, mine, strict=True))
        return picked, extra


def build_extension_controls(ctx: AppContext, mode: str) -> ExtensionControls:
    """Build inside the tab's left column; an extension whose UI code raises is switched off."""
    registry = ctx.hooks
    controls = ExtensionControls()
    for section in list(registry.sections):
        if not registry.active(section.owner):
            continue
        try:
            with gr.Accordion(section.title, open=False, elem_id=f"{mode}-ext-{section.owner}"):
                section_controls = section.build(mode) or {}
            if not isinstance(section_controls, dict):
                raise TypeError("a section's build must return {name: component}")
        except Exception as exc:
            registry.switch_off(section.owner, f"its section {section.title!r} failed to build: {exc}")
            continue
        controls.sections.append((section.owner, list(section_controls), list(section_controls.values())))
    scripts = registry.active_scripts(mode)
    if not scripts:
        return controls
    controls.script = gr.Dropdown([NO_SCRIPT] + [s.title for _, s in scripts], value=NO_SCRIPT, label="Script",
                                  elem_id=f"{mode}-script")
    groups = []
    for owner, script in scripts:
        try:
            with gr.Column(visible=False, elem_id=f"{mode}-script-{owner}") as group:
                built = list(script.ui(mode) or [])
        except Exception as exc:
            registry.switch_off(owner, f"its script {script.title!r} failed to build its controls: {exc}")
            continue
        controls.scripts.append((owner, script, built))
        groups.append((script.title, group))

    controls.script.choices = [(title, title) for title in [NO_SCRIPT] + [name for name, _ in groups]]

    def show(title: str) -> Any:
        updates = [gr.update(visible=name == title) for name, _ in groups]
        return updates[0] if len(updates) == 1 else updates  # one output takes a bare update, not a list

    controls.script.change(show, [controls.script], [group for _, group in groups], queue=False,
                           api_visibility="private")
    return controls
