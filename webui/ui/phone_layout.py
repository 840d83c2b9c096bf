"""The phone layout: CSS that, below 600 CSS pixels, puts the prompt first, then the picture (img2img / the inpaint
editor), Generate / Interrupt and the result, and the options after them, folded into groups (the page script
adds the fold buttons, see page_script.FOLDS), with touch targets of at least 44 pixels. Above 600 pixels none of
it applies: the desktop layout is the one the tabs build.

It relies on the classes and ids generation_tab gives its rows and columns (``atelier-gen``,
``atelier-gen-options``, ``atelier-gen-output``, ``<mode>-prompt-row``...), not on Gradio's own class names,
except for its gallery grid and tab buttons, which have no ids."""

from __future__ import annotations

PHONE_WIDTH = 600  # CSS pixels; a phone held upright is 360-430

CSS = f"""
.atelier-fold-toggle {{ display: none; }}
/* The inpaint brush: a finger drawing on the canvas paints instead of scrolling the page. */
#inpaint-editor canvas, [id$="-mask-painter"] canvas {{ touch-action: none; }}

@media (max-width: {PHONE_WIDTH}px) {{
  /* One column: the two halves of a generation tab give their parts to the tab's row, which orders them. */
  .atelier-gen {{ flex-direction: column !important; flex-wrap: nowrap !important; }}
  .atelier-gen > .atelier-gen-options, .atelier-gen > .atelier-gen-output {{ display: contents; }}
  .atelier-gen-options > * {{ order: 5; }}
  .atelier-gen [id$="-prompt-row"] {{ order: 1; }}
  .atelier-gen-options > #img2img-init-image, .atelier-gen-options > #inpaint-editor,
  .atelier-gen-options > :has(> #img2img-init-image), .atelier-gen-options > :has(> #inpaint-editor) {{ order: 2; }}
  .atelier-gen-output > * {{ order: 3; }}
  .atelier-gen-options > :has(> [id$="-negative"]) {{ order: 4; }}

  /* Folded option groups: a full-width button per group, its rows hidden until it is pressed. */
  .atelier-fold-toggle {{
    display: flex; align-items: center; justify-content: space-between; width: 100%; min-height: 48px;
    padding: 0 14px; border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg);
    background: var(--block-background-fill); color: var(--body-text-color); font-size: 14px;
  }}
  .atelier-fold-toggle::after {{ content: "▸"; }}
  .atelier-fold-toggle[aria-expanded="true"]::after {{ content: "▾"; }}
  .atelier-folded {{ display: none !important; }}

  /* Touch targets of at least 44 px. */
  button, [role="tab"], .gr-accordion > .label-wrap {{ min-height: 44px; min-width: 44px; }}
  .tab-container button {{ min-width: max-content; padding: 0 9px !important; }}  /* names are never cut */
  /* The top bar stays short: clip skip keeps its number box (its slider is a desktop nicety). */
  #clip-skip .slider_input_container {{ display: none; }}
  input[type="number"], .wrap-inner {{ min-height: 44px; }}
  .tab-like-container {{ height: 44px !important; }}  /* a slider's number box and reset button */
  .tab-like-container > * {{ height: 100% !important; }}
  input[type="checkbox"], input[type="radio"] {{ width: 22px; height: 22px; }}
  label:has(> input[type="checkbox"]), label:has(> input[type="radio"]) {{ min-height: 44px; align-items: center; }}
  input[type="range"] {{ height: 44px; }}
  /* Generate wide, Interrupt and Skip beside it, all in one row. */
  [id$="-actions"] {{ flex-wrap: nowrap !important; }}
  [id$="-actions"] button {{ min-height: 52px; min-width: 0 !important; font-size: 16px; padding: 0 8px; }}
  [id$="-actions"] [id$="-generate"] {{ flex: 2 1 0 !important; }}
  [id$="-actions"] [id$="-interrupt"], [id$="-actions"] [id$="-skip"] {{ flex: 1 1 0 !important; }}

  /* Galleries: three pictures a row (cards, History). */
  .atelier-cards .grid-container, .atelier-history-gallery .grid-container {{
    grid-template-columns: repeat(3, minmax(0, 1fr)) !important;
  }}
  #history-filters > * {{ min-width: 45% !important; }}
}}
"""
