"""The page's own script (handed to Gradio's ``head``): accessible names and tooltips for the small buttons,
the phone layout's folded option groups, the job's progress in the tab title ("[42%] Atelier"), and a browser
notification (plus ``notification.mp3``, A1111's convention, when it exists) when pictures arrive while the tab
is in the background."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

from .phone_layout import PHONE_WIDTH

log = logging.getLogger(__name__)

SOUND_NAME = "notification.mp3"
SOUND_LIMIT = 2 * 2**20  # bytes; the sound is inlined in the page
GALLERIES = ("txt2img", "img2img", "inpaint")

# CSS selector -> (accessible name, tooltip). Names start with the button's visible word, so what a speech user
# says ("click Refresh") matches. Gradio's Button has no aria-label parameter, hence the script.
BUTTON_NAMES: dict[str, tuple[str, str]] = {
    "#refresh-checkpoints": ("Refresh checkpoints", "Rescan the checkpoint and VAE folders"),
    "#extras-refresh": ("Refresh upscalers", "Rescan the upscaler folders"),
    "[id$='-refresh-cn-models']": ("Refresh ControlNet models",
                                   "Rescan models/ControlNet: new ControlNet files appear in the model lists"),
    "[id$='-refresh-networks']": ("Refresh cards", "Rescan the LoRA, embedding and checkpoint folders"),
    "[id$='-swap-size']": ("Swap width and height", "Swap width and height"),
    "[id$='-random-seed']": ("Random seed", "Set the seed to -1: a new random seed for every picture"),
    "[id$='-reuse-seed']": ("Reuse seed", "Use the seed of the picture selected in the gallery"),
    "[id$='-random-subseed']": ("Random variation seed", "Set the variation seed to -1 (random)"),
    "[id$='-reuse-subseed']": ("Reuse variation seed", "Use the variation seed of the selected picture"),
    "[id$='-read-params']": ("Read parameters", "Fill the form from parameters pasted into the prompt box, or from "
                                                "the last picture when the box is empty"),
    "[id$='-apply-styles']": ("Apply styles", "Add the chosen styles to the prompts"),
    "[id$='-save-style']": ("Save style", "Save the current prompts as a style with the name beside it"),
    "[id$='-card-save-notes']": ("Save notes", "Save these notes beside the chosen model's file"),
    "[id$='-card-use-picture']": ("Use current picture as preview",
                                  "Make the picture selected in the gallery the chosen card's preview"),
}

# Option rows (id suffix -> group name) folded behind a button on phones (see phone_layout).
FOLDS: dict[str, str] = {
    "-styles-row": "Styles", "-sampling-row": "Sampling", "-strength-row": "Resize and denoising strength",
    "inpaint-mask-row": "Mask blur and masked content", "inpaint-area-row": "Inpaint area",
    "-size-row": "Size", "-batch-row": "Batch", "-seed-row": "Seed and CFG scale",
}

_SCRIPT = """
(() => {
  const NAMES = @NAMES@, GALLERIES = @GALLERIES@, SOUND = @SOUND@, FOLDS = @FOLDS@, PHONE = @PHONE@;
  const phone = window.matchMedia(`(max-width: ${PHONE}px)`);
  const audio = SOUND ? new Audio(SOUND) : null;
  let base = null, seen = null, timer = null;
  function name() {
    for (const [selector, [label, tip]] of Object.entries(NAMES)) {
      for (const el of document.querySelectorAll(selector)) {
        const button = el.matches('button') ? el : el.querySelector('button');
        if (!button) continue;
        if (button.getAttribute('aria-label') !== label) button.setAttribute('aria-label', label);
        if (button.title !== tip) button.title = tip;
      }
    }
  }
  function title() {
    if (base === null) base = document.title || 'Atelier';
    let percent = null;
    for (const bar of document.querySelectorAll('.atelier-progress[data-percent]')) {
      percent = bar.dataset.percent;
    }
    const wanted = percent === null ? base : `[${percent}%] ${base}`;
    if (document.title !== wanted) document.title = wanted;
  }
  function pictures() {
    const now = {};
    for (const mode of GALLERIES) {
      const sources = Array.from(document.querySelectorAll(`#${mode}-gallery img`)).map(img => img.src);
      now[mode] = {first: sources[0] || '', count: new Set(sources).size};
    }
    if (seen !== null) {
      for (const mode of GALLERIES) {
        if (now[mode].first && now[mode].first !== seen[mode].first) arrived(now[mode]);
      }
    }
    seen = now;
  }
  function arrived(shown) {
    if (audio) { audio.currentTime = 0; audio.play().catch(() => {}); }
    if (document.hasFocus() || !('Notification' in window) || Notification.permission !== 'granted') return;
    const body = shown.count > 1 ? `${shown.count} pictures are ready` : 'Your picture is ready';
    const note = new Notification(base || 'Atelier', {body, icon: shown.first});
    note.onclick = () => { window.focus(); note.close(); };
  }
  function fold() {
    // On a phone each option group gets a button that shows or hides it; folded at first. The buttons stay
    // when the window widens, but the desktop's CSS hides them and ignores the folding.
    if (!phone.matches) return;
    for (const [suffix, label] of Object.entries(FOLDS)) {
      for (const group of document.querySelectorAll(`[id$="${suffix}"]`)) {
        if (group.dataset.atelierFold) continue;
        group.dataset.atelierFold = '1';
        group.classList.add('atelier-folded');
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'atelier-fold-toggle';
        button.textContent = label;
        button.setAttribute('aria-expanded', 'false');
        button.setAttribute('aria-controls', group.id);
        button.addEventListener('click', () => {
          const open = !group.classList.toggle('atelier-folded');
          button.setAttribute('aria-expanded', String(open));
        });
        group.before(button);
      }
    }
  }
  function update() { timer = null; name(); fold(); title(); pictures(); }
  // Timers, not animation frames: a background tab must still update its title.
  const observer = new MutationObserver(() => { if (timer === null) timer = setTimeout(update, 150); });
  function start() {
    observer.observe(document.documentElement, {subtree: true, childList: true, attributes: true,
                                                attributeFilter: ['src', 'data-percent']});
    update();
  }
  // Permission is asked for on the first Generate press (browsers want a click for it).
  document.addEventListener('click', (event) => {
    if (event.target.closest && event.target.closest('[id$="-generate"]') && 'Notification' in window
        && Notification.permission === 'default') Notification.requestPermission();
  }, true);
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
"""


def sound_file(folders: list[Path]) -> Path | None:
    """``notification.mp3`` in the first of ``folders`` that has one (A1111 keeps it at its root)."""
    for folder in folders:
        path = folder / SOUND_NAME
        if path.is_file():
            return path
    return None


def sound_url(path: Path | None) -> str | None:
    """The sound as a data: URL (the page may only load files from the outputs folder); None when too big."""
    if path is None:
        return None
    size = path.stat().st_size
    if size > SOUND_LIMIT:
        log.warning("%s is %d bytes; the page plays no sound over %d", path, size, SOUND_LIMIT)
        return None
    return "data:audio/mpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def head_html(sound: Path | None = None) -> str:
    """The ``<script>`` for Gradio's ``head``. Everything in it is JSON, so no file or name can break out."""
    values = {"@NAMES@": json.dumps(BUTTON_NAMES), "@GALLERIES@": json.dumps(GALLERIES), "@FOLDS@": json.dumps(FOLDS),
              "@PHONE@": str(PHONE_WIDTH), "@SOUND@": json.dumps(sound_url(sound))}
    script = _SCRIPT
    for marker, value in values.items():  # the sound last: no marker can appear inside its data
        script = script.replace(marker, value)
    return "<script>" + script.replace("</", "<\\/") + "</script>"
