"""GET/POST /options: A1111's option names over Atelier's settings.

``sd_model_checkpoint`` is the current model (POST loads it, in the job queue's turn). The other options
are settings, validated and saved to the settings file the way the Settings tab saves them
(``config.save_settings``), then applied at once. Atelier's own editable settings are listed under their
own names too. Unknown names in a POST are ignored, as A1111 clients send options of other versions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import EDITABLE, check_changes, save_settings
from .convert import check_vae, find_checkpoint
from .errors import invalid

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

# A1111 option -> Atelier setting
A1111_SETTINGS = {
    "CLIP_stop_at_last_layers": "default_clip_skip",
    "sd_vae": "default_vae",
    "samples_format": "save_format",
    "samples_save": "save_images",
    "show_progress_every_n_steps": "preview_every_n_steps",
    "sd_vae_decode_method": "vae_decode_method",
    "control_net_unit_count": "controlnet_unit_count",  # sd-webui-controlnet's option
}
# Editable settings shown under their own names; the output folder stays with the Settings tab and flags.
NATIVE_SETTINGS = tuple(n for n in EDITABLE if n not in A1111_SETTINGS.values() and n != "outputs_dir")
_OPTION_FOR = {setting: option for option, setting in A1111_SETTINGS.items()}


def current_checkpoint(ctx: AppContext) -> Any:
    """The registry entry of the model jobs without a checkpoint of their own use (None: no checkpoints)."""
    return ctx.registry.default(ctx.manager.current_name or ctx.settings.default_checkpoint)


def get_options(ctx: AppContext) -> dict[str, Any]:
    settings = ctx.settings
    entry = current_checkpoint(ctx)
    options: dict[str, Any] = {
        "sd_model_checkpoint": entry.title if entry else None,
        "sd_checkpoint_hash": entry.sha256 if entry else None,
    }
    options.update({option: getattr(settings, name) for option, name in A1111_SETTINGS.items()})
    options.update({name: getattr(settings, name) for name in NATIVE_SETTINGS})
    return options


@dataclass
class OptionChanges:
    settings: dict[str, Any]
    checkpoint: str | None  # registry name to load, or None


def plan_changes(ctx: AppContext, body: dict[str, Any]) -> OptionChanges:
    """Check a POST body before anything changes; ApiError 422 naming the first bad option."""
    changes: dict[str, Any] = {}
    checkpoint = None
    for key, value in body.items():
        if key == "sd_model_checkpoint":
            checkpoint = find_checkpoint(ctx, value)
        elif key in A1111_SETTINGS:
            if key == "sd_vae":
                check_vae(ctx, value)
            if key == "show_progress_every_n_steps" and isinstance(value, int) and value < 0:
                value = 0  # A1111's -1: no live previews
            changes[A1111_SETTINGS[key]] = value
        elif key in NATIVE_SETTINGS:
            changes[key] = value
        else:
            log.info("options: ignoring unknown option %r", key)
    if changes:
        try:
            check_changes(ctx.settings, changes)
        except ValueError as exc:
            raise _setting_error(exc, changes) from exc
    return OptionChanges(changes, checkpoint)


def save_changes(ctx: AppContext, changes: OptionChanges) -> None:
    if not changes.settings:
        return
    try:
        updated = save_settings(ctx.settings, changes.settings)
    except ValueError as exc:
        raise _setting_error(exc, changes.settings) from exc
    ctx.apply_settings(updated)


def _setting_error(exc: ValueError, changes: dict[str, Any]) -> Exception:
    text = str(exc)
    name = next((n for n in changes if text.startswith(n)), None)
    option = _OPTION_FOR.get(name, name) if name else None
    if name and option and option != name:
        text = option + text[len(name):]
    return invalid(option, text)
