"""Small helpers the tabs share: checkpoint choices, native sizes, user-facing messages."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from ..models.loader import describe_checkpoint, detect_entry

if TYPE_CHECKING:
    from ..context import AppContext


def checkpoint_choices(ctx: AppContext) -> list[str]:
    return [entry.title for entry in ctx.registry.entries()]


def default_checkpoint_title(ctx: AppContext) -> str | None:
    entry = ctx.registry.default(ctx.manager.current_name or ctx.settings.default_checkpoint)
    return entry.title if entry else None


def native_size_of(ctx: AppContext, title: str | None, fallback: int = 512) -> int:
    """The checkpoint's native size from its header alone (no load)."""
    entry = ctx.registry.find(title) if title else None
    if entry is None or entry.kind != "safetensors":
        return fallback
    try:
        detection = detect_entry(entry)  # an SD 2 file's parameterisation decided at an earlier load counts
    except Exception:  # an unreadable file shows its error when it is used, not while drawing the page
        return fallback
    return detection.native_size if detection else fallback


def checkpoint_description(ctx: AppContext, title: str | None) -> str:
    """What a checkpoint is (family; for SD 2.x the parameterisation and what decided it), from its header."""
    entry = ctx.registry.find(title) if title else None
    return describe_checkpoint(entry) if entry is not None else ""


def no_checkpoint_message(ctx: AppContext) -> str:
    folder = html.escape(str(ctx.registry.checkpoints_dir))
    return (
        "### No checkpoint yet\n"
        f"Put a Stable Diffusion checkpoint (`.safetensors`, SD 1.x, 2.x or SDXL) into `{folder}` "
        "and press 🔄 next to the checkpoint list."
    )
