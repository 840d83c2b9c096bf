"""Prompt styles in A1111's ``styles.csv`` (columns name, prompt, negative_prompt): read, apply, save.

A style's text replaces ``{prompt}`` with the user's prompt, or is appended after a comma when it has
no placeholder. Pure: no torch, no gradio.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from .fileio import write_text_atomic

FIELDS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge(style_text: str, prompt: str) -> str:
    if not style_text:
        return prompt
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return f"{prompt}, {style_text}" if prompt.strip() else style_text


class StyleStore:
    """The styles of one ``styles.csv``. Re-read on every call so an edit by hand shows up at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Style]:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            return {}
        styles: dict[str, Style] = {}
        for row in csv.DictReader(io.StringIO(text)):
            name = (row.get("name") or "").strip()
            if name:
                styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
        return styles

    def names(self) -> list[str]:
        return list(self.load())

    def apply(self, names: list[str], prompt: str, negative_prompt: str) -> tuple[str, str]:
        styles = self.load()
        for name in names:
            style = styles.get(name)
            if style is not None:
                prompt = merge(style.prompt, prompt)
                negative_prompt = merge(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def save(self, style: Style) -> None:
        """Add or replace one style; the file is rewritten atomically so a crash never truncates it."""
        if not style.name.strip():
            raise ValueError("a style needs a name")
        styles = self.load()
        styles[style.name.strip()] = Style(style.name.strip(), style.prompt, style.negative_prompt)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(FIELDS)
        for item in styles.values():
            writer.writerow((item.name, item.prompt, item.negative_prompt))
        write_text_atomic(self.path, buffer.getvalue())
